"""Time one data-parallel SGD step of cifar_small (workloads.md) on a global batch, over MPI or in one process.

    python bench/mpi_step.py                                   # 1 process
    mpirun -n 2 python bench/mpi_step.py                       # 2 processes, each on half of every batch
    python bench/mpi_step.py --threads 1 --batch 128 --steps 30

A script rather than a pytest-benchmark suite, because mpirun must start the
processes. A step is what Trainer(distributed="mpi") does per global batch:
the rank's shard through forward and backward, the one Allreduce of gradients
(plus loss and correct count), and the optimizer step. Prints the median and
the quartiles over the steps after a warm-up, the global images per second,
and rank 0's CPU time per step (its share of the work, which a loaded machine
does not inflate the way it inflates wall time) and time in the Allreduce.
"""

import argparse
import os
import time

import numpy as np

import fastconv as fc
from fastconv.train import distributed
from fastconv.models import build_model

CIFAR_SMALL = "conv32x3p1-relu-pool2-conv64x3p1-relu-pool2-conv128x3p1-relu-pool2-fc10"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128, help="global batch size (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="kernel threads per process (default: %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="timed steps (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="(default: %(default)s)")
    args = p.parse_args()
    fc.set_num_threads(args.threads)
    dp = distributed.MPIDataParallel() if distributed.launched_by_mpi() else None
    fc.manual_seed(0)
    model = build_model(CIFAR_SMALL, (3, 32, 32), 10)
    opt = fc.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = fc.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.batch, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    if dp is not None:
        dp.setup(model, args.batch, args.batch)
        X, y = dp.shard(X, y)
    times, cpu, comm, comm_cpu = [], [], [], []
    for i in range(args.warmup + args.steps):
        if dp is not None:
            dp.comm.Barrier()  # every rank starts the step together: a step takes as long as the slowest rank
        start, start_cpu = time.perf_counter(), time.process_time()
        scores = model(X)
        loss = loss_fn(scores, y)
        hits, n = int(np.count_nonzero(scores.argmax(axis=1) == y)), len(y)
        opt.zero_grad()
        model.backward(loss_fn.backward())
        before_comm, before_comm_cpu = time.perf_counter(), time.process_time()
        if dp is not None:
            loss, hits, n = dp.allreduce(model, loss, hits, n)
        after_comm, after_comm_cpu = time.perf_counter(), time.process_time()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            comm.append(after_comm - before_comm)
            comm_cpu.append(after_comm_cpu - before_comm_cpu)
    if dp is None or dp.rank == 0:
        q1, med, q3 = np.percentile(np.array(times) * 1e3, [25, 50, 75])
        ranks = dp.size if dp else 1
        print(f"cifar_small step, global batch {args.batch}, {ranks} process(es) x {args.threads} thread(s), "
              f"ISA {fc.get_isa()}, pid {os.getpid()}: median {med:.1f} ms (quartiles {q1:.1f}-{q3:.1f}) over "
              f"{args.steps} steps = {args.batch / med * 1e3:.0f} images/s; rank 0 per step: CPU time "
              f"{np.median(cpu) * 1e3:.1f} ms of which {np.median(comm_cpu) * 1e3:.1f} ms in the Allreduce "
              f"(MPI polls while it waits for the other ranks), Allreduce wall time {np.median(comm) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
