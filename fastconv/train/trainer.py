"""The training loop: :class:`Trainer`.

>>> trainer = fc.Trainer(model, fc.SoftmaxCrossEntropy(), opt, batch_size=64,
...                      early_stopping=fc.EarlyStopping(patience=5), checkpoint_dir="runs/lenet", seed=0)
>>> history = trainer.fit(train, val, epochs=20)    # train/val: fc.data.Dataset or (X, y)
>>> trainer.evaluate(test)                          # {"loss": ..., "accuracy": ...}

What the trainer watches, the signals of a healthy (or failing) training
run: the loss of every iteration; train and validation loss and accuracy
per epoch; and once per epoch (on the epoch's last minibatch) each layer's
activation and gradient distribution and each parameter's update-to-weight
ratio ||lr * update|| / ||w||, which should be around 1e-3 (much lower: the
learning rate is too small; much higher: too large).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from fastconv.precision import autocast
from fastconv.data import Dataset, as_dataset
from fastconv.nn import fusion, init
from fastconv.nn.checks import is_int, is_number
from fastconv.nn.containers import Sequential
from fastconv.nn.module import Module
from fastconv.train import checkpoint as ckpt
from fastconv.train import stats
from fastconv.train.early_stopping import EarlyStopping, _mode_for
from fastconv.train.schedules import ReduceLROnPlateau

__all__ = ["Trainer", "TrainingDiverged"]


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch and the iteration."""


def _new_history() -> dict:
    return {"iteration_loss": [], "epoch": [], "train_loss": [], "train_accuracy": [], "val_loss": [],
            "val_accuracy": [], "lr": [], "time": [], "stats": [], "best_epoch": None, "best_metric": None,
            "monitor": None, "stopped_early": False, "stop_reason": None, "iterations_per_epoch": None}


@contextlib.contextmanager
def _no_image_grad(model):
    """Nobody reads the gradient of the images: a first Conv2d skips its dx
    (the user's setting is restored afterwards)."""
    first = model[0] if isinstance(model, Sequential) and len(model) else None
    if not hasattr(first, "needs_input_grad"):
        yield
        return
    saved, first.needs_input_grad = first.needs_input_grad, False
    try:
        yield
    finally:
        first.needs_input_grad = saved


# Trainer(precision=...): float32, or bf16 mixed precision (fastconv.precision, fc.autocast).
PRECISIONS = ("fp32", "bf16", "float32", "bfloat16")


class Trainer:
    """Minibatch training with validation, checkpoints, early stopping and statistics.

    Args:
        model: the network (a :class:`Module`; per-layer statistics need a :class:`Sequential`).
        loss_fn: e.g. :class:`fastconv.SoftmaxCrossEntropy`.
        optimizer: e.g. :class:`fastconv.SGD` over ``model.parameters()``.
        scheduler: a learning-rate schedule, stepped once per epoch
            (:class:`ReduceLROnPlateau` gets the validation loss).
        batch_size: examples per minibatch.
        early_stopping: an :class:`EarlyStopping`, or None to run all epochs.
        checkpoint_dir: where ``last/``, ``best/`` and ``history.json`` go
            (see :mod:`fastconv.train.checkpoint`); None keeps everything in memory.
        seed: seeds the generator that shuffles the minibatches.
        progress: a tqdm bar per epoch; None shows it when stderr is a terminal.
        verbose: print a one-line summary per epoch.
        monitor: the metric that picks the ``best`` checkpoint: "val_loss"
            (default: the early-stopping metric, else val_loss) or "val_accuracy";
            "train_*" when there is no validation data.
        metadata: JSON-able data stored in every checkpoint (e.g. how to rebuild the model).
        augment: None, or a transform ``augment(X, rng)`` applied to each training
            minibatch (e.g. :class:`fastconv.data.Compose` of ``RandomCrop`` and
            ``RandomHorizontalFlip``). It draws from a generator of its own, seeded
            from ``seed`` apart from the shuffling one (so turning augmentation on
            leaves the minibatch order as it was) and saved in every checkpoint
            (so a resumed run draws what an uninterrupted one would).
        log: where summary lines go (default ``print``).
        distributed: None, or "mpi" for synchronous data-parallel training
            over MPI (run under ``mpirun -n P``): each rank trains on its
            shard of every global batch of ``batch_size``, gradients are
            averaged, and only rank 0 logs and writes checkpoints. ``fit`` and
            ``evaluate`` are then collective: every rank calls them. Batch norm
            and dropout semantics: see :mod:`fastconv.train.distributed`.
        precision: "fp32" (default), or "bf16": every forward and backward
            (``fit``, ``evaluate``) inside ``fc.autocast("bfloat16")``.

    ``fit`` returns the history (also saved as ``history.json``):
    ``iteration_loss``; per epoch ``epoch``, ``train_loss``, ``train_accuracy``
    (averaged over the epoch's minibatches as they were trained), ``val_loss``,
    ``val_accuracy``, ``lr``, ``time``; ``stats`` (one record per epoch:
    ``update_ratio`` per parameter, ``activations`` and ``gradients`` per
    layer output, ``param_grads`` per parameter, each with mean, std, range,
    zero fraction and a histogram); ``best_epoch``, ``best_metric``,
    ``monitor``, ``stopped_early``.
    """

    def __init__(self, model: Module, loss_fn, optimizer, scheduler=None, batch_size: int = 64,
                 early_stopping: EarlyStopping | None = None, checkpoint_dir=None, seed: int = 0,
                 progress: bool | None = None, verbose: bool = True, monitor: str | None = None,
                 metadata: dict | None = None, log: Callable[[str], None] | None = None, distributed=None,
                 augment=None, precision: str = "fp32"):
        if not isinstance(model, Module):
            raise TypeError(f"Trainer: `model` must be a fastconv Module; got {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"Trainer: `batch_size` must be an int >= 1; got {batch_size!r}")
        if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"Trainer: `early_stopping` must be an EarlyStopping; got {type(early_stopping).__name__}")
        if precision not in PRECISIONS:
            raise ValueError(f"Trainer: `precision` must be one of {PRECISIONS}; got {precision!r}")
        self.precision = precision  # fc.autocast's dtype around every forward and backward
        self.model, self.loss_fn, self.optimizer, self.scheduler = model, loss_fn, optimizer, scheduler
        self.batch_size, self.early_stopping, self.seed = int(batch_size), early_stopping, seed
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.progress, self.verbose = progress, verbose
        self.monitor = monitor or (early_stopping.monitor if early_stopping else "val_loss")
        _mode_for(self.monitor)
        self.metadata = dict(metadata or {})
        if augment is not None and not callable(augment):
            raise TypeError(f"Trainer: `augment` must be callable as augment(X, rng) or None; got "
                            f"{type(augment).__name__}")
        self.augment = augment
        self.log = log or print
        self.history = _new_history()
        self.epoch = 0          # epochs completed
        self.iteration = 0      # minibatches trained
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self._best_state = None
        self._rng, self._augment_rng = self._new_rngs()
        self._dist = None
        if distributed is not None:
            from fastconv.train.distributed import data_parallel

            self._dist = data_parallel(distributed)
            if self._dist.rank != 0:  # one rank speaks and writes for all
                self.progress, self.verbose = False, False

    # -- public -----------------------------------------------------------------------

    def fit(self, train, val=None, epochs: int = 10, resume: bool = False) -> dict:
        """Train for ``epochs`` epochs in all (a resumed run counts those already done).

        With ``resume=True`` the state saved in ``checkpoint_dir/last`` (model,
        optimizer, scheduler, RNG states, history, early-stopping counter, best
        metric) is loaded first, so the run ends exactly as an uninterrupted
        one would. At the end the weights of the best epoch are loaded into
        the model. Raises :class:`TrainingDiverged` on a NaN or infinite loss,
        leaving the checkpoints as they were.
        """
        train = as_dataset(train, "train")
        val = None if val is None else as_dataset(val, "val")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"Trainer.fit: `epochs` must be an int >= 1; got {epochs!r}")
        if len(train) == 0:
            raise ValueError("Trainer.fit: the training set is empty")
        monitor = self.monitor if val is not None else self.monitor.replace("val_", "train_")
        if resume:
            self._resume()
        else:
            self.history, self.epoch, self.iteration = _new_history(), 0, 0
            self.best_metric = self.best_epoch = self._best_state = None
            self._rng, self._augment_rng = self._new_rngs()
            if self.early_stopping is not None:
                self.early_stopping.reset()
        self.history["monitor"] = monitor
        self.history["iterations_per_epoch"] = math.ceil(len(train) / self.batch_size)
        if self.checkpoint_dir is not None:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            for name in ("best", "last"):  # refused now, not after the first epoch
                ckpt.refuse_symlink(os.path.join(self.checkpoint_dir, name))
        if self._dist is not None:
            self._dist.setup(self.model, len(train), self.batch_size)
        stopper = self.early_stopping
        while self.epoch < epochs and not (stopper is not None and stopper.should_stop):
            self._run_epoch(train, val, epochs, monitor)
        self.history["stopped_early"] = bool(stopper is not None and stopper.should_stop)
        self.history["stop_reason"] = stopper.reason if self.history["stopped_early"] else None
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        self._save_history()
        return self.history

    def evaluate(self, data, batch_size: int | None = None) -> dict:
        """Mean loss and accuracy over ``data`` (a Dataset or (X, y)) in eval mode."""
        data = as_dataset(data, "data")
        if len(data) == 0:
            raise ValueError("Trainer.evaluate: `data` is empty")
        was_training = self.model.training
        self.model.eval()
        try:
            total, correct = 0.0, 0
            part = data if self._dist is None else self._dist.shard_dataset(data)
            for xb, yb in part.batches(batch_size or max(self.batch_size, 256)):
                with autocast(self.precision):
                    scores = self.model(xb)
                total += self.loss_fn(scores, yb) * len(yb)
                correct += int(np.count_nonzero(scores.argmax(axis=1) == yb))
        finally:
            self.model.train(was_training)
        if self._dist is not None:
            total, correct = self._dist.sum(total, correct)
        return {"loss": total / len(data), "accuracy": correct / len(data)}

    def predict(self, X, batch_size: int | None = None, return_scores: bool = False) -> np.ndarray:
        """Predicted class indices (N,) for images X (N, C, H, W); or the raw scores (N, K)."""
        X = np.asarray(X, np.float32)
        was_training = self.model.training
        self.model.eval()
        try:
            bs = batch_size or max(self.batch_size, 256)
            scores = np.concatenate([self.model(X[i:i + bs]) for i in range(0, X.shape[0], bs)])
        finally:
            self.model.train(was_training)
        return scores if return_scores else scores.argmax(axis=1)

    def overfit_check(self, data, n: int = 20, steps: int = 300, lr: float | None = None, tol: float = 0.01,
                      seed: int = 0, init_tol: float = 0.5) -> dict:
        """The two first sanity checks of a new network: is the loss at
        initialization what small initial scores give, and can the network
        drive the loss to ~0 on ``n`` examples?

        The expected initial loss is the loss of all-equal scores: ln(K) for
        softmax cross-entropy over K classes, (K - 1) * margin for the
        multiclass SVM. A first loss more than ``init_tol`` away from it means
        scores that start too large (an output layer initialized as a hidden
        one, unnormalized data) or a wrong loss. Then a copy of the model (the
        trainer's own model is untouched) is trained on ``n`` examples drawn
        with ``seed``, full batch, with the optimizer's type and settings but
        no weight decay and dropout off, for up to ``steps`` steps.

        Returns {"passed", "initial_ok", "fits", "initial_loss",
        "expected_initial_loss", "final_loss", "steps", "accuracy", "n"}:
        initial_ok means |initial_loss - expected_initial_loss| <= init_tol
        (a check for a new, untrained model), fits means final_loss < tol,
        passed means both.
        """
        data = as_dataset(data, "data")
        n = min(int(n), len(data))
        if n < 1:
            raise ValueError("overfit_check: need at least one example")
        idx = np.sort(np.random.default_rng(seed).permutation(len(data))[:n])
        X, y = data.X[idx], data.y[idx]
        model = copy.deepcopy(self.model).train()
        for m in model.modules():
            if "dropout" in type(m).__name__.lower():
                m.eval()
        group = self.optimizer.param_groups[0]
        settings = {k: group[k] for k in self.optimizer.defaults if k in group}
        settings["lr"] = lr if lr is not None else group.get("initial_lr", group["lr"])
        if "weight_decay" in settings:
            settings["weight_decay"] = 0.0
        opt = type(self.optimizer)(list(model.parameters()), **settings)
        loss_fn = copy.deepcopy(self.loss_fn)
        k = data.num_classes
        expected = float(loss_fn(np.zeros((n, max(k, int(y.max()) + 1)), np.float32), y))
        initial = loss = loss_fn(model(X), y)
        step = 0
        for step in range(1, steps + 1):
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            scores = model(X)
            loss = loss_fn(scores, y)
            if not math.isfinite(loss) or loss < tol:
                break
        model.eval()
        accuracy = float(np.mean(model(X).argmax(axis=1) == y))
        initial_ok = bool(abs(initial - expected) <= init_tol)
        fits = bool(math.isfinite(loss) and loss < tol)
        return {"passed": initial_ok and fits, "initial_ok": initial_ok, "fits": fits,
                "initial_loss": float(initial), "expected_initial_loss": expected, "final_loss": float(loss),
                "steps": step, "accuracy": accuracy, "n": n}

    # -- one epoch --------------------------------------------------------------------

    def _show_progress(self) -> bool:
        if self.progress is not None:
            return bool(self.progress)
        return sys.stderr.isatty()

    def _run_epoch(self, train: Dataset, val: Dataset | None, epochs: int, monitor: str) -> None:
        epoch = self.epoch  # 0-based index of the epoch being run
        start = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.model.train()
        # A diverging loss is reported by the checks; autocast: Trainer(precision=...).
        with np.errstate(over="ignore", invalid="ignore"), autocast(self.precision):
            metrics, losses, stats = self._train_steps(train, epoch, epochs, lr)
            v = self.evaluate(val) if val is not None else None
        if v is not None:
            metrics["val_loss"], metrics["val_accuracy"] = v["loss"], v["accuracy"]
            if not math.isfinite(v["loss"]):
                self.history["iteration_loss"].extend(losses)
                self._diverged(f"the validation loss is {v['loss']} after epoch {epoch + 1} "
                               f"(step {self.iteration}, lr {lr:g})")
        self._record_epoch(epoch, metrics, lr, losses, stats)
        self._step_schedule(metrics)
        improved = self._track_best(metrics, monitor, epoch)
        if self.early_stopping is not None:
            self.early_stopping.step(metrics[self.early_stopping.monitor if val is not None
                                             else self.early_stopping.monitor.replace("val_", "train_")])
        h = self.history
        h["best_epoch"], h["best_metric"] = self.best_epoch, self.best_metric
        self.epoch = epoch + 1
        h["time"].append(time.perf_counter() - start)
        if self._writes_files():
            encoded = ckpt.dumps_json(self.history).encode()
            self._save("last", encoded)
            if improved:  # after last, which then holds the same weights: see _resume_best
                self._save("best")
            self._save_history(encoded)
        if self.verbose:
            self.log(self._summary_line(epochs, metrics, lr, stats, improved))

    def _train_steps(self, train: Dataset, epoch: int, epochs: int, lr: float):
        """One pass over `train`: (metrics, the loss of each step, the statistics of the last step)."""
        n_batches = math.ceil(len(train) / self.batch_size)
        loss_sum, correct, seen, losses, stats = 0.0, 0, 0, [], None
        with self._progress_bar(n_batches, f"epoch {epoch + 1}/{epochs}") as bar:
            for it, (xb, yb) in enumerate(train.batches(self.batch_size, shuffle=True, rng=self._rng)):
                record = it == n_batches - 1
                if self.augment is not None:  # on the whole batch: every MPI rank draws the same
                    xb = self.augment(xb, self._augment_rng)
                loss, hits, n, step_stats = self._train_step(xb, yb, record, epoch)
                if not math.isfinite(loss):
                    self.history["iteration_loss"].extend(losses)
                    self._diverged(f"the training loss is {loss} at epoch {epoch + 1}, iteration {it + 1} "
                                   f"of {n_batches} (step {self.iteration + 1}, lr {lr:g})")
                stats = step_stats if record else stats
                self.iteration += 1
                losses.append(float(loss))
                loss_sum, correct, seen = loss_sum + float(loss) * n, correct + hits, seen + n
                if bar is not None:
                    bar.update(1)
                    if it % 5 == 0 or record:
                        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
        return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen}, losses, stats

    def _train_step(self, xb, yb, record: bool, epoch: int):
        """Forward, backward and (unless the loss is not finite) the optimizer step on one
        minibatch: (loss, correct predictions, examples, statistics when `record`)."""
        if self._dist is not None:
            xb, yb = self._dist.shard(xb, yb)
        scores, acts = self._forward(xb, record)
        loss = self.loss_fn(scores, yb)
        hits, n = int(np.count_nonzero(scores.argmax(axis=1) == yb)), len(yb)
        self.optimizer.zero_grad()
        grads = self._backward(self.loss_fn.backward(), record)
        if self._dist is not None:  # checked after the reduction, so all ranks agree on divergence
            loss, hits, n = self._dist.allreduce(self.model, loss, hits, n)
        if not math.isfinite(loss):
            return loss, hits, n, None
        before = {name: p.data.copy() for name, p in self.model.named_parameters()} if record else None
        self.optimizer.step()
        return loss, hits, n, self._stats(epoch, before, acts, grads) if record else None

    @contextlib.contextmanager
    def _progress_bar(self, total: int, desc: str):
        """A tqdm bar on stderr when it is a terminal (None otherwise), closed however the epoch ends."""
        if not self._show_progress():
            yield None
            return
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)
        try:
            yield bar
        finally:
            bar.close()

    def _record_epoch(self, epoch: int, metrics: dict, lr: float, losses: list, stats) -> None:
        h = self.history
        h["iteration_loss"].extend(losses)
        h["epoch"].append(epoch + 1)
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            h[key].append(metrics.get(key))
        h["lr"].append(lr)
        if stats is not None:
            h["stats"].append(stats)

    def _step_schedule(self, metrics: dict) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, ReduceLROnPlateau):
            key = "loss" if self.scheduler.mode == "min" else "accuracy"
            self.scheduler.step(metrics.get(f"val_{key}", metrics[f"train_{key}"]))
        else:
            self.scheduler.step()

    def _track_best(self, metrics: dict, monitor: str, epoch: int) -> bool:
        """Whether this epoch is the best so far on `monitor` (and if so, keep its weights)."""
        value = metrics[monitor]
        improved = self.best_metric is None or (
            value < self.best_metric if _mode_for(monitor) == "min" else value > self.best_metric)
        if improved:
            self.best_metric, self.best_epoch = float(value), epoch + 1
            self._best_state = self.model.state_dict()
        return improved

    def _summary_line(self, epochs, metrics, lr, stats, improved) -> str:
        parts = [f"epoch {self.epoch:>{len(str(epochs))}}/{epochs}",
                 f"train loss {metrics['train_loss']:.4f} acc {100 * metrics['train_accuracy']:5.1f}%"]
        if "val_loss" in metrics:
            parts.append(f"val loss {metrics['val_loss']:.4f} acc {100 * metrics['val_accuracy']:5.1f}%")
        parts.append(f"lr {lr:.3g}")
        if stats:
            ratios = [r for name, r in stats["update_ratio"].items() if r is not None and name.endswith("weight")]
            if ratios:
                parts.append(f"update/weight {float(np.median(ratios)):.1e}")
        parts.append(f"{self.history['time'][-1]:.1f}s")
        return "  ".join(parts) + ("  *" if improved else "")

    def _forward(self, x, record: bool):
        """Scores; with ``record``, also each child's output (containers only: those
        that run their children through fastconv.nn.fusion, which then runs them unfused)."""
        if not record:
            return self.model(x), None
        outputs = []
        with fusion.observe(self.model, lambda name, layer, y: outputs.append((f"{name}.{type(layer).__name__}", y))):
            scores = self.model(x)
        return scores, outputs or None

    def _backward(self, dy, record: bool):
        """Backpropagate; with ``record``, also the gradient at each child's output."""
        grads = []
        with _no_image_grad(self.model), contextlib.ExitStack() as stack:
            if record:
                stack.enter_context(fusion.observe(
                    self.model, lambda name, layer, g: grads.append((f"{name}.{type(layer).__name__}", g))))
            self.model.backward(dy)
        return grads[::-1] or None

    def _stats(self, epoch, before, acts, grads) -> dict:
        ratios, weights, param_grads = {}, {}, {}
        for name, p in self.model.named_parameters():
            scale = float(np.linalg.norm(before[name]))
            update = float(np.linalg.norm(p.data - before[name]))
            ratios[name] = update / scale if scale > 0 else None
            weights[name] = {"mean": float(p.data.mean()), "std": float(p.data.std())}
            param_grads[name] = stats.summary(p.grad)
        return {"epoch": epoch + 1, "iteration": self.iteration + 1, "update_ratio": ratios, "weights": weights,
                "param_grads": param_grads,
                "activations": {k: stats.activation_summary(v) for k, v in acts or []},
                "gradients": {k: stats.summary(v) for k, v in grads or []}}

    def _diverged(self, what: str):
        self.history["diverged"] = what
        self._save_history()
        kept = ""
        if self.checkpoint_dir is not None:
            kept = (f"; checkpoints untouched in {self.checkpoint_dir} (last: epoch {self.epoch}"
                    + (f", best: epoch {self.best_epoch})" if self.best_epoch else ")"))
        raise TrainingDiverged(f"training diverged: {what}. Try a lower learning rate{kept}")

    # -- checkpoints --------------------------------------------------------------------

    def _trainer_state(self) -> dict:
        return {"epoch": self.epoch, "iteration": self.iteration, "seed": self.seed, "batch_size": self.batch_size,
                "monitor": self.monitor, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "early_stopping": None if self.early_stopping is None else self.early_stopping.state_dict(),
                "rng": {"shuffle": self._rng.bit_generator.state, "init": init.generator().bit_generator.state,
                        "augment": self._augment_rng.bit_generator.state},
                "user": self.metadata}

    def _new_rngs(self):
        """(shuffling, augmentation) generators, independent streams from ``seed``."""
        augment = np.random.SeedSequence(self.seed, spawn_key=(1,))
        return np.random.default_rng(self.seed), np.random.default_rng(augment)

    def _writes_files(self) -> bool:
        return self.checkpoint_dir is not None and (self._dist is None or self._dist.rank == 0)

    def _save(self, name: str, history: bytes | None = None) -> None:
        if not self._writes_files():
            return
        ckpt.save_checkpoint(os.path.join(self.checkpoint_dir, name), self.model, self.optimizer, self.scheduler,
                             meta=self._trainer_state(), files={"history.json": history} if history else None)

    def _save_history(self, encoded: bytes | None = None) -> None:
        if self._writes_files():
            encoded = encoded or ckpt.dumps_json(self.history).encode()
            ckpt.atomic_write(os.path.join(self.checkpoint_dir, "history.json"), encoded)

    def _resume(self) -> None:
        if self.checkpoint_dir is None:
            raise ValueError("Trainer.fit: resume=True needs a `checkpoint_dir`")
        last = os.path.join(self.checkpoint_dir, "last")
        try:
            info = ckpt.read_metadata(last)
        except FileNotFoundError:
            raise FileNotFoundError(f"Trainer.fit: resume=True but there is no checkpoint {last} to resume from "
                                    "(no epoch finished yet?)") from None
        history = ckpt.read_json(last, info["folder"], "history.json")
        _check_resume_state(last, info["meta"], history)
        state = ckpt.load_checkpoint(last, self.model, self.optimizer, self.scheduler)
        if state["batch_size"] != self.batch_size:
            raise ValueError(f"Trainer.fit: the run to resume used batch_size {state['batch_size']}; "
                             f"this trainer has {self.batch_size}")
        self.history, self.epoch, self.iteration = history, state["epoch"], state["iteration"]
        self.best_metric, self.best_epoch = state["best_metric"], state["best_epoch"]
        if self.early_stopping is not None:
            if state["early_stopping"] is None:
                raise ValueError("Trainer.fit: the run to resume was trained without early stopping; "
                                 "resume it with early_stopping=None")
            self.early_stopping.load_state_dict(state["early_stopping"])
        self._rng, self._augment_rng = self._new_rngs()
        self._rng.bit_generator.state = state["rng"]["shuffle"]
        if "augment" in state["rng"]:  # older checkpoints have none: their augmentation starts from the seed
            self._augment_rng.bit_generator.state = state["rng"]["augment"]
        init.generator().bit_generator.state = state["rng"]["init"]
        self._best_state = None
        if self.best_epoch is not None:
            self._best_state = self._resume_best()

    def _resume_best(self) -> dict:
        """The best epoch's weights, as ``last`` names them; repairs ``best`` after a crash.

        ``last`` is written before ``best``, so a crash between the two leaves
        a ``last`` whose best epoch is its own epoch and an older ``best``:
        then ``last``'s weights (in the model now) are the best ones, and
        ``best`` is written again from them."""
        best = os.path.join(self.checkpoint_dir, "best")
        try:
            saved = ckpt.read_metadata(best)["meta"].get("epoch")
        except FileNotFoundError:
            saved = None
        if saved == self.best_epoch:
            return ckpt.load_weights(best, self.model)
        if self.best_epoch != self.epoch:
            raise ckpt.CheckpointError(f"checkpoint {best} holds epoch {saved}; the run's last checkpoint "
                                       f"names epoch {self.best_epoch} as the best")
        self._save("best")
        return self.model.state_dict()


_PER_EPOCH = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "time")


def _check_resume_state(path: str, meta: dict, history) -> None:
    """Every field of a ``last`` checkpoint that resuming reads has the type, range and
    meaning a run writes (a tampered file is refused naming the field, before anything changes)."""
    def need(where, value, ok, expected):
        ckpt.require(path, where, value, ok, expected)

    epoch = meta.get("epoch")
    need("checkpoint.json `meta.epoch`", epoch, is_int(epoch, 1), "an int >= 1")
    need("checkpoint.json `meta.iteration`", meta.get("iteration"), is_int(meta.get("iteration"), 0), "an int >= 0")
    need("checkpoint.json `meta.batch_size`", meta.get("batch_size"), is_int(meta.get("batch_size"), 1),
         "an int >= 1")
    best_epoch, best_metric = meta.get("best_epoch"), meta.get("best_metric")
    need("checkpoint.json `meta.best_epoch`", best_epoch, best_epoch is None or is_int(best_epoch, 1, epoch),
         f"null or an int in [1, {epoch}]")
    need("checkpoint.json `meta.best_metric`", best_metric,
         is_number(best_metric) if best_epoch is not None else best_metric is None,
         "a finite number (null when there is no best epoch)")
    stop = meta.get("early_stopping")
    need("checkpoint.json `meta.early_stopping`", stop, stop is None or (
        isinstance(stop, dict) and (stop.get("best") is None or is_number(stop.get("best")))
        and is_int(stop.get("num_bad_epochs"), 0, epoch) and type(stop.get("should_stop")) is bool),
        f"null or {{best: a number or null, num_bad_epochs: an int in [0, {epoch}], should_stop: a bool}}")
    rng = meta.get("rng")
    need("checkpoint.json `meta.rng`", rng, isinstance(rng, dict) and {"shuffle", "init"} <= rng.keys(),
         "{shuffle, init}: bit-generator states")
    for name in ("shuffle", "init", "augment")[:3 if "augment" in rng else 2]:
        try:
            np.random.default_rng().bit_generator.state = rng[name]
            ok = True
        except (TypeError, ValueError, KeyError, OverflowError):
            ok = False
        need(f"checkpoint.json `meta.rng.{name}`", rng[name], ok, "a PCG64 bit-generator state")
    need("history.json", history, isinstance(history, dict) and _new_history().keys() <= history.keys(),
         f"an object with the keys {sorted(_new_history())}")
    for key in _PER_EPOCH:
        values = history[key]
        need(f"history.json `{key}`", values, isinstance(values, list) and len(values) == epoch
             and all(v is None or is_number(v) for v in values), f"a list of {epoch} numbers (one per epoch)")
    need("history.json `epoch`", history["epoch"], history["epoch"] == list(range(1, epoch + 1)),
         f"[1, ..., {epoch}]")
    need("history.json `iteration_loss`", history["iteration_loss"], isinstance(history["iteration_loss"], list)
         and all(is_number(v) for v in history["iteration_loss"]), "a list of finite numbers")
    need("history.json `stats`", history["stats"], isinstance(history["stats"], list), "a list")
    for key, value in (("best_epoch", best_epoch), ("best_metric", best_metric)):
        need(f"history.json `{key}`", history[key], history[key] == value, f"{value} (as checkpoint.json says)")
