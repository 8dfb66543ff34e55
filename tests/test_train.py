"""fastconv.train: Trainer (history, statistics, checkpoints, exact resume, divergence),
EarlyStopping, the overfit sanity check, and models from spec strings."""

import json
import math
import os

import numpy as np
import pytest

import fastconv as fc
from fastconv.train import checkpoint as ckpt
from fastconv import data as D
from fastconv.models import ARCHS, build_model, load_model
from fastconv.train import EarlyStopping, Trainer, TrainingDiverged, confusion_matrix

ARCH = "conv4x3p1-relu-pool2-fc10"


@pytest.fixture(scope="module")
def digits():
    """A 400-example slice of the digits, normalized: (train, val)."""
    rest, _ = D.train_val_split(D.load_digits(), 0.75, seed=0)
    train, val = D.train_val_split(rest, 0.25, seed=0)
    norm = D.Normalizer.fit(train)
    return norm(train), norm(val)


def make(checkpoint_dir=None, seed=0, lr=0.05, scheduler=True, patience=None, arch=ARCH, **kwargs):
    fc.manual_seed(seed)
    model = build_model(arch, (1, 8, 8), 10)
    opt = fc.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = fc.CosineAnnealingLR(opt, T_max=6) if scheduler else None
    stopper = EarlyStopping(patience=patience) if patience else None
    kwargs = {"verbose": False, "progress": False, **kwargs}
    return Trainer(model, kwargs.pop("loss_fn", fc.SoftmaxCrossEntropy()), opt, sched, batch_size=32,
                   early_stopping=stopper, checkpoint_dir=checkpoint_dir, seed=seed, **kwargs)


def weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


# -- EarlyStopping -------------------------------------------------------------------------


def test_early_stopping_counts_epochs_without_improvement():
    s = EarlyStopping(patience=2, min_delta=0.1)
    assert [s.step(v) for v in (1.0, 0.95, 0.85, 0.9, 0.8)] == [False, False, False, False, True]
    assert s.best == 0.85 and s.num_bad_epochs == 2
    a = EarlyStopping(patience=1, monitor="val_accuracy")
    assert [a.step(v) for v in (0.5, 0.6, 0.6)] == [False, False, True]
    b = EarlyStopping(patience=1, monitor="val_accuracy")
    b.load_state_dict(a.state_dict())
    assert b.best == 0.6 and b.should_stop
    with pytest.raises(ValueError, match=r"`patience` must be an int >= 1 or None; got 0"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match=r"`min_delta` must be a finite number >= 0; got -1"):
        EarlyStopping(min_delta=-1)
    with pytest.raises(ValueError, match=r"`monitor` must be 'val_loss', 'val_accuracy'.*got 'loss'"):
        EarlyStopping(monitor="loss")
    with pytest.raises(ValueError, match=r"`target` must be a finite number; got nan"):
        EarlyStopping(target=float("nan"))
    with pytest.raises(ValueError, match=r"`worse_epochs` must be an int >= 1 or None; got 0"):
        EarlyStopping(worse_epochs=0)
    with pytest.raises(ValueError, match=r"`window` must be an int >= 1 or None; got 2.5"):
        EarlyStopping(window=2.5)
    with pytest.raises(ValueError, match=r"no trigger is set"):
        EarlyStopping(patience=None)


def stops(stopper, values):
    """The epoch (1-based) at which the stopper says stop, or None."""
    return next((i for i, v in enumerate(values, 1) if stopper.step(v)), None)


LOSSES = [1.0, 0.8, 0.7, 0.65, 0.66, 0.64, 0.645, 0.66, 0.67, 0.7]


@pytest.mark.parametrize("kwargs,monitor,values,epoch,reason", [
    # 1. no improvement by more than min_delta for `patience` epochs
    ({"patience": 3}, "val_loss", LOSSES, 9, "did not improve by more than 0 for 3 epochs"),
    ({"patience": 2, "min_delta": 0.02}, "val_loss", LOSSES, 6, "did not improve by more than 0.02"),
    # 2. an absolute value reached
    ({"patience": None, "target": 0.7}, "val_loss", LOSSES, 3, "reached the target 0.7"),
    ({"patience": None, "target": 0.9}, "val_accuracy", [0.5, 0.8, 0.89, 0.9, 0.95], 4, "reached the target 0.9"),
    ({"patience": None, "target": 0.1}, "val_loss", LOSSES, None, None),
    # 3. worse than the epoch before, N epochs in a row
    ({"patience": None, "worse_epochs": 2}, "val_loss", LOSSES, 8, "got worse 2 epochs in a row"),
    ({"patience": None, "worse_epochs": 2}, "val_accuracy", [0.5, 0.6, 0.55, 0.58, 0.57, 0.56], 6, "worse 2"),
    # 4. average improvement per epoch over a window below a threshold
    ({"patience": None, "window": 3, "min_average_change": 0.05}, "val_loss", LOSSES, 5,
     "improved by 0.0466667 per epoch on average over the last 3 epochs, less than 0.05"),
    ({"patience": None, "window": 2, "min_average_change": 0.0}, "val_accuracy", [0.5, 0.6, 0.7, 0.7, 0.65], 5,
     "improved by -0.025"),
])
def test_early_stopping_triggers(kwargs, monitor, values, epoch, reason):
    s = EarlyStopping(monitor=monitor, **kwargs)
    assert stops(s, values) == epoch
    assert (s.reason is None) if reason is None else (reason in s.reason and s.reason.startswith(monitor)), s.reason
    # the state carries every trigger's counters: a copy restored mid-way stops at the same epoch
    if epoch is not None:
        a, b = EarlyStopping(monitor=monitor, **kwargs), EarlyStopping(monitor=monitor, **kwargs)
        stops(a, values[:epoch - 1])
        b.load_state_dict(a.state_dict())
        assert b.step(values[epoch - 1]) and b.reason == s.reason


def test_early_stopping_loads_a_state_from_before_the_triggers():
    old = {"best": 0.5, "num_bad_epochs": 2, "should_stop": False, "patience": 3, "min_delta": 0.0,
           "monitor": "val_loss"}
    s = EarlyStopping(patience=3, window=2)
    s.load_state_dict(old)
    assert s.num_worse_epochs == 0 and s.recent == [] and s.step(0.6) and "for 3 epochs" in s.reason


def test_trainer_records_why_it_stopped(digits):
    train, val = digits
    trainer = make(scheduler=False)
    trainer.early_stopping = EarlyStopping(patience=None, target=0.5, monitor="val_accuracy")
    history = trainer.fit(train, val, epochs=20)
    assert history["stopped_early"] and len(history["epoch"]) < 20
    assert history["stop_reason"].startswith("val_accuracy ") and "reached the target 0.5" in history["stop_reason"]


# -- fit, history, statistics ----------------------------------------------------------------


def test_dead_units_are_units_silent_for_every_example():
    from fastconv.train.stats import activation_summary as _activation_summary

    a = np.zeros((3, 2, 2, 2), np.float32)  # 8 units (channel, y, x), 3 examples
    a[0, 0, 0, 0] = 1.0  # fires for one example only: alive
    a[:, 0, 1, 1] = 2.0  # fires for all: alive
    s = _activation_summary(a)
    assert s["zero_fraction"] == pytest.approx(1 - 4 / 24)  # most elements are zero...
    assert s["dead_units"] == pytest.approx(6 / 8) and s["dead_channels"] == 0.5  # ...channel 1 never fires
    assert s["examples"] == 3
    flat = _activation_summary(np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]], np.float32))
    assert flat["dead_units"] == pytest.approx(1 / 3) and "dead_channels" not in flat


def test_fit_records_history_statistics_and_keeps_the_best_weights(digits, tmp_path):
    train, val = digits
    logged = []
    trainer = make(tmp_path / "run", log=logged.append, verbose=True)
    history = trainer.fit(train, val, epochs=3)
    n_it = math.ceil(len(train) / 32)
    assert history["iterations_per_epoch"] == n_it and len(history["iteration_loss"]) == 3 * n_it
    assert history["epoch"] == [1, 2, 3]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "time"):
        assert len(history[key]) == 3, key
    assert history["train_loss"][-1] < history["train_loss"][0] and history["val_accuracy"][-1] > 0.8
    assert history["lr"][0] == 0.05 and history["lr"][1] < 0.05  # the schedule stepped once per epoch
    assert history["monitor"] == "val_loss" and history["best_metric"] == min(history["val_loss"])

    stats = history["stats"][-1]
    assert stats["epoch"] == 3 and stats["iteration"] == 3 * n_it
    assert set(stats["update_ratio"]) == {"0.weight", "0.bias", "4.weight", "4.bias"}
    assert 1e-5 < stats["update_ratio"]["0.weight"] < 1
    assert list(stats["activations"]) == ["0.Conv2d", "1.ReLU", "2.MaxPool2d", "3.Flatten", "4.Linear"]
    relu = stats["activations"]["1.ReLU"]
    last_batch = len(train) - 32 * (n_it - 1)
    assert relu["min"] >= 0 and 0 < relu["zero_fraction"] < 1 and sum(relu["hist"]) == last_batch * 4 * 64
    assert len(relu["edges"]) == len(relu["hist"]) + 1
    assert relu["examples"] == last_batch and 0 <= relu["dead_units"] <= relu["zero_fraction"]
    assert set(stats["gradients"]) == set(stats["activations"]) and "0.weight" in stats["param_grads"]

    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved["val_loss"] == history["val_loss"] and saved["iteration_loss"] == history["iteration_loss"]
    best = ckpt.load_weights(tmp_path / "run" / "best")
    for k, v in trainer.model.state_dict().items():
        np.testing.assert_array_equal(v, best[k])
    assert ckpt.read_metadata(tmp_path / "run" / "best")["meta"]["epoch"] == history["best_epoch"]
    assert ckpt.read_metadata(tmp_path / "run" / "last")["meta"]["epoch"] == 3
    assert len(logged) == 3 and logged[0].startswith("epoch 1/3  train loss ") and "val loss" in logged[0]
    assert "update/weight" in logged[0]

    result = trainer.evaluate(val)
    assert set(result) == {"loss", "accuracy"} and result["loss"] == pytest.approx(history["best_metric"])
    pred = trainer.predict(val.X)
    assert pred.shape == (len(val),) and np.mean(pred == val.y) == pytest.approx(result["accuracy"])
    assert trainer.predict(val.X[:3], return_scores=True).shape == (3, 10)
    assert trainer.model.training  # evaluate and predict restore the mode


def test_fit_takes_pairs_and_runs_without_validation(digits):
    train, _ = digits
    trainer = make(scheduler=False)
    history = trainer.fit((train.X, train.y), epochs=1)
    assert history["val_loss"] == [None] and history["monitor"] == "train_loss"


def test_early_stopping_ends_the_run(digits):
    train, val = digits
    trainer = make(lr=0.0, patience=2)  # nothing changes: no improvement after epoch 1
    trainer.optimizer.param_groups[0]["lr"] = 0.0
    history = trainer.fit(train, val, epochs=10)
    assert history["epoch"] == [1, 2, 3] and history["stopped_early"] and history["best_epoch"] == 1


def test_progress_bar_only_when_asked(digits, capsys):
    train, val = digits
    make(scheduler=False, progress=None).fit(train[:64], val, epochs=1)  # stderr is not a terminal here
    assert capsys.readouterr().err == ""
    trainer = make(scheduler=False)
    trainer.progress = True
    trainer.fit(train[:64], val, epochs=1)
    assert "epoch 1/1" in capsys.readouterr().err


# -- exact resume ------------------------------------------------------------------------------


class Interrupting(fc.SoftmaxCrossEntropy):
    """Raises KeyboardInterrupt on the n-th forward call, as a Ctrl-C in the middle of an epoch."""

    def __init__(self, at):
        super().__init__()
        self.calls, self.at = 0, at

    def forward(self, scores, y):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().forward(scores, y)


def test_resume_after_an_interruption_is_bitwise_identical(digits, tmp_path):
    train, val = digits
    full = make(tmp_path / "full", patience=5)
    h_full = full.fit(train, val, epochs=4)

    # killed in epoch 3, iteration 4 (the loss also runs on validation batches: count them)
    n_it, n_val = math.ceil(len(train) / 32), math.ceil(len(val) / 256)
    broken = make(tmp_path / "cut", patience=5, loss_fn=Interrupting(2 * (n_it + n_val) + 4))
    with pytest.raises(KeyboardInterrupt):
        broken.fit(train, val, epochs=4)
    assert ckpt.read_metadata(tmp_path / "cut" / "last")["meta"]["epoch"] == 2

    fc.manual_seed(123)  # a new process: other random state, fresh objects
    fresh = make(tmp_path / "cut", seed=0, patience=5)
    np.random.default_rng(9).random(5)
    h = fresh.fit(train, val, epochs=4, resume=True)
    for k, v in full.model.state_dict().items():
        np.testing.assert_array_equal(fresh.model.state_dict()[k], v, err_msg=k)
    for key in ("iteration_loss", "train_loss", "val_loss", "val_accuracy", "lr", "epoch", "best_epoch"):
        assert h[key] == h_full[key], key
    assert fresh.early_stopping.state_dict() == full.early_stopping.state_dict()
    for i in full.optimizer.state:
        np.testing.assert_array_equal(fresh.optimizer.state[i]["momentum_buffer"],
                                      full.optimizer.state[i]["momentum_buffer"])
    last_full = ckpt.load_weights(tmp_path / "full" / "last")
    for k, v in ckpt.load_weights(tmp_path / "cut" / "last").items():
        np.testing.assert_array_equal(v, last_full[k])


def test_resume_in_two_calls_equals_one_call(digits, tmp_path):
    train, val = digits
    one = make(tmp_path / "one")
    one.fit(train, val, epochs=3)
    two = make(tmp_path / "two")
    two.fit(train, val, epochs=1)
    again = make(tmp_path / "two", seed=0)
    again.fit(train, val, epochs=3, resume=True)
    for k, v in one.model.state_dict().items():
        np.testing.assert_array_equal(again.model.state_dict()[k], v, err_msg=k)
    assert again.fit(train, val, epochs=3, resume=True)["epoch"] == [1, 2, 3]  # nothing left to do


def test_resume_with_dropout_and_batch_norm_is_bitwise_identical(digits, tmp_path):
    """Dropout masks come from fastconv's generator, batch norm keeps running statistics:
    both must be part of the checkpoint for a resumed run to match."""
    pytest.importorskip("fastconv.nn.dropout")
    pytest.importorskip("fastconv.nn.normalization")
    train, val = digits
    arch = "conv4x3p1-bn-relu-pool2-drop0.3-fc16-relu-fc10"
    full = make(tmp_path / "full", arch=arch)
    full.fit(train, val, epochs=3)
    part = make(tmp_path / "part", arch=arch)
    part.fit(train, val, epochs=1)
    fc.manual_seed(99)  # what a new process would have
    resumed = make(tmp_path / "part", arch=arch, seed=0)
    fc.manual_seed(98)
    resumed.fit(train, val, epochs=3, resume=True)
    state = full.model.state_dict()
    assert any("running_mean" in k for k in state)
    for k, v in state.items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)
    r = full.overfit_check(train, n=20)  # dropout is switched off for the sanity check
    assert r["fits"], r  # (a trained model's first loss is no longer ln(C): initial_ok is for new ones)


def test_resume_errors(digits, tmp_path):
    train, val = digits
    with pytest.raises(ValueError, match=r"resume=True needs a `checkpoint_dir`"):
        make().fit(train, val, epochs=1, resume=True)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint .*last to resume from"):
        make(tmp_path / "empty").fit(train, val, epochs=1, resume=True)


# -- divergence ----------------------------------------------------------------------------------


class Exploding(fc.SoftmaxCrossEntropy):
    def __init__(self, at):
        super().__init__()
        self.calls, self.at = 0, at

    def forward(self, scores, y):
        self.calls += 1
        loss = super().forward(scores, y)
        return float("nan") if self.calls == self.at else loss


def test_nan_loss_stops_with_epoch_and_iteration_and_keeps_best(digits, tmp_path):
    train, val = digits
    first = make(tmp_path / "run")
    first.fit(train, val, epochs=1)
    best_before = {n: (tmp_path / "run" / "best" / n).read_bytes() for n in os.listdir(tmp_path / "run" / "best")}
    resumed = make(tmp_path / "run", loss_fn=Exploding(at=3))
    with pytest.raises(TrainingDiverged, match=r"training diverged: the training loss is nan at epoch 2, iteration 3 "
                                               r"of \d+ \(step \d+, lr [\d.e-]+\)\. Try a lower learning rate; "
                                               r"checkpoints untouched in .*run \(last: epoch 1, best: epoch 1\)"):
        resumed.fit(train, val, epochs=3, resume=True)
    assert {n: (tmp_path / "run" / "best" / n).read_bytes() for n in os.listdir(tmp_path / "run" / "best")} \
        == best_before
    assert "epoch 2, iteration 3" in json.loads((tmp_path / "run" / "history.json").read_text())["diverged"]


def test_a_huge_learning_rate_really_diverges(digits):
    train, val = digits
    with pytest.raises(TrainingDiverged, match=r"the (training|validation) loss is (nan|inf)"):
        make(lr=1e8, scheduler=False).fit(train, val, epochs=3)


# -- the sanity check --------------------------------------------------------------------------------


def test_overfit_check_reaches_zero_loss_on_20_examples(digits):
    train, _ = digits
    trainer = make(arch="conv8x3p1-relu-pool2-fc32-relu-fc10", scheduler=False)
    before = weights(trainer.model)
    r = trainer.overfit_check(train, n=20)
    assert r["passed"] and r["final_loss"] < 0.01 and r["accuracy"] == 1.0 and r["n"] == 20
    assert r["expected_initial_loss"] == pytest.approx(math.log(10))
    assert 0.5 * math.log(10) < r["initial_loss"] < 3 * math.log(10)
    for k, v in trainer.model.state_dict().items():  # the trainer's own model is untouched
        np.testing.assert_array_equal(v, before[k])
    stuck = trainer.overfit_check(train, n=20, lr=1e-9, steps=5)
    assert not stuck["passed"] and stuck["steps"] == 5


# -- arguments --------------------------------------------------------------------------------------


def test_trainer_argument_errors(digits):
    train, val = digits
    model = build_model(ARCH, (1, 8, 8), 10)
    opt = fc.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"Trainer: `batch_size` must be an int >= 1; got 0"):
        Trainer(model, fc.SoftmaxCrossEntropy(), opt, batch_size=0)
    with pytest.raises(TypeError, match=r"Trainer: `model` must be a fastconv Module; got str"):
        Trainer("model", fc.SoftmaxCrossEntropy(), opt)
    with pytest.raises(TypeError, match=r"`early_stopping` must be an EarlyStopping; got int"):
        Trainer(model, fc.SoftmaxCrossEntropy(), opt, early_stopping=3)
    with pytest.raises(ValueError, match=r"`epochs` must be an int >= 1; got 0"):
        Trainer(model, fc.SoftmaxCrossEntropy(), opt).fit(train, val, epochs=0)
    with pytest.raises(ValueError, match=r"must name a loss or an accuracy"):
        Trainer(model, fc.SoftmaxCrossEntropy(), opt, monitor="val_f1")


# -- models from specs --------------------------------------------------------------------------------


def test_build_model_from_a_spec_string():
    m = build_model("conv8x5s1p2-relu-pool2-conv16x3-relu-maxpool2s1-fc32-relu-fc10", (1, 28, 28), 10)
    kinds = [type(x).__name__ for x in m]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU",
                     "Linear"]
    assert m[3].weight.shape == (16, 8, 3, 3) and m[7].in_features == 16 * 11 * 11
    assert m(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)
    for name in ARCHS:
        shape = {"cifar_small": (3, 32, 32), "vgg11": (3, 32, 32), "lenet": (1, 28, 28),
                 "lenet5": (1, 28, 28)}.get(name, (1, 8, 8))
        assert build_model(name, shape, 7)(np.zeros((1,) + shape, np.float32)).shape == (1, 7)


def test_build_model_with_the_optional_layers():
    m = build_model("conv8x3p1-bn-elu-avgpool2-fc16-tanh-bn-fc16-leakyrelu-fc16-sigmoid-fc10", (1, 8, 8), 10,
                    dropout=0.2)
    kinds = [type(x).__name__ for x in m]
    assert kinds[:4] == ["Conv2d", "BatchNorm2d", "ELU", "AvgPool2d"] and "BatchNorm1d" in kinds
    assert kinds.count("Dropout") == 4 and kinds[kinds.index("Linear") - 1] == "Dropout"
    assert m(np.zeros((3, 1, 8, 8), np.float32)).shape == (3, 10)


@pytest.mark.parametrize("spec,message", [
    ("conv8x3-relu-softmax-fc10", r"unknown layer 'softmax'"),
    ("conv8x9-fc10", r"'conv8x9' does not fit its input of shape \(1, 8, 8\)"),
    ("conv8x3-relu", r"must end with fc<number of classes>"),
    ("conv8x3-fc5", r"ends with 5 outputs but the data has 10 classes"),
    ("fc10-conv8x3-fc10", r"'conv8x3' needs an image \(C, H, W\) input; it gets shape \(10,\)"),
    ("", r"must be a built-in name"),
])
def test_build_model_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        build_model(spec, (1, 8, 8), 10)


def test_confusion_matrix():
    cm = confusion_matrix([0, 1, 1, 2], [0, 2, 1, 2], 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])


def test_load_model_rebuilds_from_metadata(digits, tmp_path):
    train, val = digits
    t = make(tmp_path / "run", metadata={"arch": ARCH, "input_shape": [1, 8, 8], "classes": train.classes})
    t.fit(train, val, epochs=1)
    model, meta = load_model(tmp_path / "run" / "best")
    np.testing.assert_array_equal(model(val.X[:5]), t.predict(val.X[:5], return_scores=True))
    assert meta["epoch"] == 1
    t2 = make(tmp_path / "bare")
    t2.fit(train, val, epochs=1)
    with pytest.raises(ckpt.CheckpointError, match=r"does not say how to rebuild its model"):
        load_model(tmp_path / "bare" / "best")


def test_fit_skips_the_gradient_of_the_images_and_restores_the_flag(digits):
    trainer = make()
    first = trainer.model[0]
    calls = []
    backward = first.backward

    def spy(dy):
        dx = backward(dy)
        calls.append((first.needs_input_grad, dx))
        return dx

    first.backward = spy
    trainer.fit(*digits, epochs=1)
    assert calls and all(flag is False and dx is None for flag, dx in calls)
    assert first.needs_input_grad is True  # the user's setting, back after fit
    x = digits[0].X[:2]
    trainer.model(x)
    assert trainer.model.backward(np.ones((2, 10), np.float32)).shape == x.shape
