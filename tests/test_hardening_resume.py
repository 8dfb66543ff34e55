"""A crash at any point of an epoch's checkpoint writes leaves `best/` and `last/`
consistent: resuming reports the metrics of the weights it restores, and ends
as the uninterrupted run does.

Each epoch writes `last/`, then `best/` when the metric improved, then
history.json. The crash is simulated by raising at each of those points (and
between the two renames inside the `best/` write), then the run resumes.
"""

import json
import os

import numpy as np
import pytest

import fastconv as fc
from fastconv.train import checkpoint as ckpt
from fastconv.models import build_model

EPOCHS = 3


class Crash(Exception):
    pass


def setup(out):
    data = fc.data.load_digits()
    X, y = data.X[:200], data.y[:200]
    fc.manual_seed(0)
    model = build_model("fc16-relu-fc10", (1, 8, 8), 10)
    opt = fc.Adam(model.parameters(), lr=3e-3)
    trainer = fc.Trainer(model, fc.SoftmaxCrossEntropy(), opt, fc.StepLR(opt, 50), batch_size=32,
                         checkpoint_dir=out, seed=0, progress=False, verbose=False)
    return trainer, (X[:150], y[:150]), (X[150:], y[150:])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its history and its final (best) weights."""
    fc.set_num_threads(1)
    trainer, train, val = setup(tmp_path_factory.mktemp("reference"))
    history = trainer.fit(train, val, epochs=EPOCHS)
    improved = [e for e in history["epoch"] if history["val_loss"][e - 1] == min(history["val_loss"][:e])]
    assert improved[:2] == [1, 2], improved  # the crash points below need a best written at epoch 2
    return history, trainer.model.state_dict()


WRITES = ["last", "best", "last", "best", "last"]  # the save_checkpoint calls of epochs 1 to 3, in order

# Crash before the n-th checkpoint write (n = 2..5: after epoch 1's `last`, ..., after epoch 2's `best`),
# or between the two renames of epoch 2's `best` write.
POINTS = [("before", n) for n in range(2, len(WRITES) + 1)] + [("mid-rename", 4)]


@pytest.mark.parametrize("how, n", POINTS, ids=[f"{h}-{n}" for h, n in POINTS])
def test_resume_after_a_crash_restores_the_weights_its_metrics_belong_to(reference, tmp_path, monkeypatch, how, n):
    ref_history, ref_weights = reference
    fc.set_num_threads(1)
    real_save, real_rename, calls = ckpt.save_checkpoint, os.rename, []

    def save(path, *args, **kwargs):
        calls.append(os.path.basename(path))
        if how == "before" and len(calls) == n:
            raise Crash(f"before write {n}")
        return real_save(path, *args, **kwargs)

    def rename(src, dst):
        if how == "mid-rename" and len(calls) == n and ".tmp-" in os.fspath(src):
            raise Crash("between the renames")  # best/ is now only best.old
        return real_rename(src, dst)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    monkeypatch.setattr(os, "rename", rename)
    trainer, train, val = setup(tmp_path)
    with pytest.raises(Crash):
        trainer.fit(train, val, epochs=EPOCHS)
    monkeypatch.undo()
    assert calls == WRITES[:len(calls)], calls

    # Resuming with nothing left to train only restores the best weights: the bug showed here.
    done = ckpt.read_metadata(tmp_path / "last")["meta"]["epoch"]
    trainer, train, val = setup(tmp_path)
    _assert_consistent(trainer, trainer.fit(train, val, epochs=done, resume=True), tmp_path, val)
    trainer, train, val = setup(tmp_path)
    history = trainer.fit(train, val, epochs=EPOCHS, resume=True)
    _assert_consistent(trainer, history, tmp_path, val)
    assert (history["best_epoch"], history["best_metric"]) == (ref_history["best_epoch"], ref_history["best_metric"])
    assert history["val_loss"] == ref_history["val_loss"]
    for key, value in ref_weights.items():
        np.testing.assert_array_equal(trainer.model.state_dict()[key], value, err_msg=key)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".old") or ".tmp-" in p]


def _assert_consistent(trainer, history, folder, val):
    """The weights restored at the end, and those in best/, are the best epoch's:
    their validation loss is its recorded metric, and best/ names that epoch."""
    best = history["best_epoch"]
    assert trainer.evaluate(val)["loss"] == pytest.approx(history["val_loss"][best - 1], rel=1e-6)
    assert ckpt.read_metadata(folder / "best")["meta"]["epoch"] == best
    other, _, _ = setup(folder / "unused")
    ckpt.load_checkpoint(folder / "best", other.model)
    assert other.evaluate(val)["loss"] == pytest.approx(history["val_loss"][best - 1], rel=1e-6)


def test_resume_repairs_best_at_once(reference, tmp_path, monkeypatch):
    """Crash after epoch 2's `last`, before its `best`: resuming with nothing left
    to train still leaves a `best/` of epoch 2 on disk."""
    real_save, calls = ckpt.save_checkpoint, []

    def save(path, *args, **kwargs):
        calls.append(os.path.basename(path))
        if len(calls) == 4:
            raise Crash
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    trainer, train, val = setup(tmp_path)
    with pytest.raises(Crash):
        trainer.fit(train, val, epochs=EPOCHS)
    monkeypatch.undo()
    assert ckpt.read_metadata(tmp_path / "best")["meta"]["epoch"] == 1
    trainer, train, val = setup(tmp_path)
    trainer.fit(train, val, epochs=2, resume=True)
    assert ckpt.read_metadata(tmp_path / "best")["meta"]["epoch"] == 2


def test_a_best_other_than_last_names_is_refused(reference, tmp_path):
    """A pair no crash can leave (last/ names epoch 1 as the best, best/ holds another
    epoch) is refused with both epochs named, not resumed with mixed state."""
    trainer, train, val = setup(tmp_path)
    history = trainer.fit(train, val, epochs=EPOCHS)
    held = ckpt.read_metadata(tmp_path / "best")["meta"]["epoch"]
    assert held > 1
    info = json.loads((tmp_path / "last" / "checkpoint.json").read_text())
    info["meta"].update(best_epoch=1, best_metric=history["val_loss"][0])
    (tmp_path / "last" / "checkpoint.json").write_text(json.dumps(info))
    saved = json.loads((tmp_path / "last" / "history.json").read_text())
    saved.update(best_epoch=1, best_metric=history["val_loss"][0])
    (tmp_path / "last" / "history.json").write_text(json.dumps(saved))
    trainer, train, val = setup(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match=rf"best holds epoch {held}; .* names epoch 1 as the best"):
        trainer.fit(train, val, epochs=EPOCHS + 1, resume=True)
