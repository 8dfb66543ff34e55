"""Scale-out on existing engines: search trials on a Dask cluster, data-parallel SGD over MPI.

fastconv writes no scheduler and no transport of its own. Both engines are
optional extras, imported only when asked for (``import fastconv`` imports
neither):

    pip install "fastconv[dask]"    # dask[distributed]: fastconv search --workers N / --scheduler ADDR
    pip install "fastconv[mpi]"     # mpi4py (needs an MPI, e.g. Open MPI): mpirun -n P fastconv train

Search on Dask (:func:`map_trials`, used by ``random_search(scheduler=...,
workers=...)``): each trial is one Dask task that sets its own kernel thread
count, seeds itself and trains; the datasets are sent to every worker once.
A worker that dies mid-trial (killed, out of memory, a crash in native code)
costs that trial only: it runs again on another worker (the nanny restarts the
dead one), and when it has killed ``retries + 1`` workers it is reported as
failed and the search goes on.

Data-parallel training over MPI (:class:`MPIDataParallel`, used by
``Trainer(..., distributed="mpi")``): synchronous SGD. Every rank draws the
same shuffled global batches and trains on its contiguous shard of each one.
After the backward pass one ``Allreduce`` over one flat float32 buffer sums,
weighted by shard size, every parameter gradient, every floating-point buffer
(batch-norm running statistics) and the batch's loss and correct count; so
each rank then holds the gradient of the global batch's mean loss and takes
the same optimizer step, and all ranks keep identical weights. Rank 0's
weights and buffers are broadcast when ``fit`` starts.

Batch norm: in training mode each rank normalizes with the statistics of its
own shard (PyTorch's DistributedDataParallel without SyncBatchNorm does the
same), so with batch norm the result differs from one process's. The running
statistics are averaged over the ranks at every step, weighted by shard size:
``running_mean`` then equals the one-process value for the same step (the mean
of shard means is the batch mean), while ``running_var`` is the average of
the shards' unbiased variances, which leaves out the spread between shard
means. Without batch norm (or dropout, whose masks each rank draws from its own
stream), the run equals one process's on the same global batches up to float32
rounding (the sum order of the gradients differs).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable

import numpy as np

__all__ = ["MPIDataParallel", "abort_mpi_job", "data_parallel", "launched_by_mpi", "map_trials"]

DASK_HINT = 'pip install "fastconv[dask]" (dask[distributed])'
MPI_HINT = ('install an MPI and mpi4py: apt-get install openmpi-bin libopenmpi-dev, then pip install "fastconv[mpi]" '
            "(mpi4py)")


# -- search on Dask ------------------------------------------------------------------------------


def _import_dask_distributed():
    try:
        import distributed
    except ImportError as e:
        raise ImportError(f"a search on a Dask cluster needs dask.distributed, which is not installed ({e}); "
                          f"{DASK_HINT}") from None
    return distributed


def _with_shared(run, plugin_name, *task, **kwargs):
    """``run(*task, *shared, **kwargs)`` in a worker, with ``shared`` from the worker's copy (see map_trials)."""
    from distributed import get_worker

    return run(*task, *get_worker().plugins[plugin_name].items, **kwargs)


def map_trials(run: Callable, tasks: list[tuple], shared: tuple, scheduler=None, workers: int | None = None,
               retries: int = 1, **kwargs) -> Iterable[tuple[int, object]]:
    """Run ``run(*task, *shared, **kwargs)`` for every task on a Dask cluster; yield ``(index, result)`` as they finish.

    ``scheduler`` is a scheduler address ("tcp://host:8786") or a
    ``distributed.Client``; without it a local cluster of ``workers`` worker
    processes (one task at a time each) is started and closed at the end.
    ``shared`` (e.g. the datasets) is sent to each worker once. A task whose
    worker died ``retries + 1`` times yields the ``KilledWorker`` error as its
    result. Other errors raised by ``run`` are raised here, as in a serial loop.

    Why fastconv, not Dask, reruns the tasks: Dask counts a worker's death
    against every task the worker holds, running or queued, and after deaths
    it may queue several tasks on one worker; so a trial could be given up for
    another's crash. Here no more tasks are in flight than the cluster has
    worker threads, and the local cluster gives a task up at its first worker
    death (``allowed-failures`` 0), so the task that was running is the one
    charged. (On a cluster you did not start, the scheduler's own
    ``distributed.scheduler.allowed-failures`` applies first.)
    """
    distributed = _import_dask_distributed()
    import dask

    if scheduler is None and workers is None:
        raise ValueError("map_trials: give a `scheduler` address or Client, or a number of local `workers`")
    owned = []
    try:
        if isinstance(scheduler, distributed.Client):
            client = scheduler
        elif scheduler is not None:
            if not isinstance(scheduler, str):
                raise TypeError(f"`scheduler` must be an address such as 'tcp://host:8786' or a distributed.Client; "
                                f"got {type(scheduler).__name__}")
            client = distributed.Client(scheduler)
            owned.append(client)
        else:
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                cluster = distributed.LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                                   dashboard_address=":0", silence_logs=logging.ERROR)
            owned.append(cluster)
            client = distributed.Client(cluster)
            owned.insert(0, client)
        # The shared data travel as a worker plugin: the scheduler keeps it and gives it to every worker that
        # joins, a restarted one too. Scattered data die with their last worker (and every trial with them);
        # data as a task are recomputed on another worker, where a second death could make Dask give them up.
        plugin = _shared_data_plugin(distributed, shared)
        client.register_plugin(plugin)
        waiting, running, done = list(enumerate(tasks))[::-1], {}, distributed.as_completed()

        def submit_while_threads_are_free():
            free = max(1, sum(client.nthreads().values())) - len(running)
            for _ in range(min(free, len(waiting))):
                i, task = waiting.pop()
                future = client.submit(_with_shared, run, plugin.name, *task, pure=False, **kwargs)
                running[future] = i
                done.add(future)

        submit_while_threads_are_free()
        deaths = [0] * len(tasks)
        for future in done:
            i = running.pop(future)
            try:
                result = future.result()
            except distributed.KilledWorker as e:
                deaths[i] += 1
                if deaths[i] <= retries:
                    waiting.append((i, tasks[i]))  # next in line
                    submit_while_threads_are_free()
                    continue
                result = e
            submit_while_threads_are_free()
            yield i, result
        if scheduler is not None:  # a cluster that outlives the search need not keep the data
            client.unregister_worker_plugin(plugin.name)
    finally:
        for thing in owned:
            thing.close()


def _shared_data_plugin(distributed, items):
    import uuid

    class SharedData(distributed.WorkerPlugin):
        """Data every trial reads, held once per worker."""

        def __init__(self):
            self.name = f"fastconv-shared-{uuid.uuid4().hex}"
            self.items = tuple(items)

    return SharedData()


# -- data-parallel training over MPI ----------------------------------------------------------------


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f'Trainer(distributed="mpi") needs mpi4py, which is not importable ({e}); {MPI_HINT}') \
            from None
    return MPI


def launched_by_mpi() -> bool:
    """True when this process is one of several started by mpirun/mpiexec (Open MPI, MPICH, Intel MPI, Slurm PMI)."""
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        if os.environ.get(name, "").isdigit() and int(os.environ[name]) > 1:
            return True
    return False


def abort_mpi_job(code: int) -> None:
    """If this process is one of several MPI ranks, end the whole job: the others may wait in a collective."""
    if "mpi4py.MPI" in sys.modules:
        MPI = sys.modules["mpi4py.MPI"]
        if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(code)


def _split(n: int, parts: int, index: int) -> slice:
    """The ``index``-th of ``parts`` contiguous, nearly equal pieces of range(n) (the first n % parts one longer)."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


class MPIDataParallel:
    """Synchronous data-parallel SGD over an MPI communicator (see the module docstring for the semantics).

    >>> dp = MPIDataParallel()               # MPI.COMM_WORLD
    >>> dp.rank, dp.size
    """

    def __init__(self, comm=None):
        MPI = _import_mpi()
        self._MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._buffer = None

    def default_threads(self) -> int:
        """Kernel threads per rank: OMP_NUM_THREADS when set (mpirun -x OMP_NUM_THREADS=T), else
        so that the ranks on one node share its CPUs without oversubscribing them."""
        from fastconv import _kernels

        local = self.comm.Split_type(self._MPI.COMM_TYPE_SHARED)
        try:
            on_node = local.Get_size()
        finally:
            local.Free()
        return _kernels._resolve_num_threads(cpus=max(1, _kernels._cpus_available() // on_node))

    def _tensors(self, model) -> list[np.ndarray]:
        """Parameters and floating-point buffers, in a fixed order (the same on every rank)."""
        arrays = [p.data for p in model.parameters()]
        arrays += [b for _, b in model.named_buffers() if isinstance(b, np.ndarray) and b.dtype.kind == "f"]
        return arrays

    def setup(self, model, n_train: int, batch_size: int) -> None:
        """Give every rank rank 0's weights and buffers, and each rank its own dropout stream.

        Every global batch must give each rank at least one example: raises
        ValueError naming the batch size otherwise.
        """
        last = n_train % batch_size or batch_size
        if min(batch_size, n_train, last) < self.size:
            raise ValueError(f"Trainer: with {self.size} MPI ranks every global batch needs at least {self.size} "
                             f"examples; `batch_size` {batch_size} on {n_train} training examples leaves a last "
                             f"batch of {min(last, n_train)}")
        counters = [b for _, b in model.named_buffers() if isinstance(b, np.ndarray) and b.dtype.kind != "f"]
        for a in self._tensors(model) + counters:  # a handful of arrays, once per fit: no need for one buffer
            self.comm.Bcast(a, root=0)
        n_grads = sum(p.data.size for p in model.parameters())
        n_buffers = sum(a.size for a in self._tensors(model)) - n_grads
        self._buffer = np.empty(n_grads + n_buffers + 3, np.float32)
        if self.rank > 0:  # rank 0 keeps the one-process stream; the others jump to independent ones
            from fastconv.nn import init

            bits = init.generator().bit_generator
            bits.state = bits.jumped(self.rank).state

    def shard(self, xb: np.ndarray, yb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This rank's contiguous part of a global batch."""
        part = _split(len(yb), self.size, self.rank)
        return xb[part], yb[part]

    def shard_dataset(self, data):
        return data[_split(len(data), self.size, self.rank)]

    def allreduce(self, model, loss: float, correct: int, n: int) -> tuple[float, int, int]:
        """Average gradients and float buffers over the global batch, in one Allreduce; its (loss, correct, size).

        ``loss`` is this rank's mean loss over its ``n`` examples, so ``n * grad``
        summed over ranks and divided by the global size is the gradient of
        the global mean loss.
        """
        buf = self._buffer
        offset = 0
        grads = [p.grad for p in model.parameters()]
        buffers = self._tensors(model)[len(grads):]
        for a in grads + buffers:
            np.multiply(a.reshape(-1), n, out=buf[offset:offset + a.size])
            offset += a.size
        buf[offset:] = (loss * n, correct, n)
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        total = float(buf[-1])
        offset = 0
        for a in grads + buffers:
            np.multiply(buf[offset:offset + a.size].reshape(a.shape), 1.0 / total, out=a)
            offset += a.size
        return float(buf[-3]) / total, round(float(buf[-2])), round(total)

    def broadcast_text(self, text: str) -> str:
        """Rank 0's ``text`` on every rank (as UTF-8 bytes: nothing is pickled)."""
        data = np.frombuffer(text.encode(), np.uint8).copy() if self.rank == 0 else None
        size = np.array([0 if data is None else data.size], np.int64)
        self.comm.Bcast(size, root=0)
        if data is None:
            data = np.empty(int(size[0]), np.uint8)
        self.comm.Bcast(data, root=0)
        return data.tobytes().decode()

    def sum(self, *values: float) -> list[float]:
        """Element-wise sums over the ranks (float64), e.g. of an evaluation's loss total and correct count."""
        buf = np.array(values, np.float64)
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return buf.tolist()


def data_parallel(kind):
    """The data-parallel engine for ``Trainer(distributed=kind)``: None, "mpi", or an :class:`MPIDataParallel`."""
    if kind is None or isinstance(kind, MPIDataParallel):
        return kind
    if kind == "mpi":
        return MPIDataParallel()
    raise ValueError(f"Trainer: `distributed` must be None, 'mpi' or an MPIDataParallel; got {kind!r}")
