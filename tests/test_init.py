"""Initialization: He for hidden layers, small scores from the output layer so
that the first softmax loss is about ln(C), and the container rule that
re-scales only a layer's own untouched draw."""

import math

import numpy as np
import pytest

import fastconv as fc
from fastconv.nn import init
from fastconv.models import ARCHS, build_model

LN10 = math.log(10)


def first_loss(model, x, y):
    return fc.SoftmaxCrossEntropy()(model(x), y)


FITS = [(arch, shape) for arch in [*ARCHS, "resnet20"] for shape in [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
        if not (arch == "lenet5" and shape == (1, 8, 8))  # LeNet-5's unpadded second 5x5 conv needs 12x12 or more
        and not (arch == "vgg11" and shape[1] < 32)]  # five 2x2 pools


@pytest.mark.parametrize("arch,shape", FITS, ids=str)
@pytest.mark.parametrize("seed", range(3))
def test_builtin_architectures_start_at_ln_c(arch, shape, seed):
    rng = np.random.default_rng(1000 + seed)  # not the init's stream: data correlated with weights
    x = rng.standard_normal((128, *shape)).astype(np.float32)  # normalized data, as the CLI gives
    y = rng.integers(0, 10, 128)
    fc.manual_seed(seed)
    assert abs(first_loss(build_model(arch, shape, 10), x, y) - LN10) < 0.1


def test_builtin_architecture_on_digits_starts_at_ln_c():
    from fastconv.tools.cli import load_data

    data = load_data("digits", None, 0.1)["train"]
    for arch in (a for a, shape in FITS if shape == (1, 8, 8)):
        fc.manual_seed(1)
        model = build_model(arch, data.X.shape[1:], data.num_classes)
        assert abs(first_loss(model, data.X[:256], data.y[:256]) - math.log(data.num_classes)) < 0.1, arch


@pytest.mark.parametrize("classes", [2, 10, 100])
def test_plain_sequential_ending_in_linear(rng, classes):
    x = rng.standard_normal((256, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, classes, 256)
    fc.manual_seed(0)
    model = fc.Sequential(fc.Conv2d(1, 8, 3, padding=1), fc.ReLU(), fc.MaxPool2d(2), fc.Flatten(),
                          fc.Linear(8 * 36, 64), fc.ReLU(), fc.Linear(64, classes))
    assert abs(first_loss(model, x, y) - math.log(classes)) < 0.1


def test_output_layer_std_and_hidden_layers_he():
    fc.manual_seed(0)
    model = fc.Sequential(fc.Linear(400, 300), fc.ReLU(), fc.Linear(300, 10))
    hidden, out = model[0].weight.data, model[2].weight.data
    assert hidden.std() == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    assert out.std() == pytest.approx(init.CLASSIFIER_GAIN / math.sqrt(300), rel=0.05)
    # the same draw as before, scaled: a seed gives the same hidden weights with or without the rule
    fc.manual_seed(0)
    a, b = fc.Linear(400, 300), fc.Linear(300, 10)
    np.testing.assert_array_equal(a.weight.data, hidden)
    np.testing.assert_allclose(b.weight.data * np.float32(init.CLASSIFIER_GAIN / math.sqrt(2)), out, rtol=1e-6)


def test_weights_set_before_wrapping_are_kept():
    lin = fc.Linear(5, 3)
    lin.weight.data[...] = np.arange(15, dtype=np.float32).reshape(3, 5)
    fc.Sequential(fc.Linear(4, 5), lin)
    np.testing.assert_array_equal(lin.weight.data, np.arange(15, dtype=np.float32).reshape(3, 5))
    loaded = fc.Linear(5, 3)
    loaded.load_state_dict({"weight": np.ones((3, 5), np.float32), "bias": np.zeros(3, np.float32)})
    fc.Sequential(loaded)
    np.testing.assert_array_equal(loaded.weight.data, 1.0)


def test_slicing_and_nesting_keep_roles_consistent():
    fc.manual_seed(0)
    model = fc.Sequential(fc.Linear(6, 8), fc.ReLU(), fc.Linear(8, 4))
    out = model[2].weight.data.copy()
    hidden = model[0].weight.data.copy()
    model[:1], model[1:]  # views: a hidden layer last, the output layer last
    np.testing.assert_array_equal(model[0].weight.data, hidden)
    np.testing.assert_array_equal(model[2].weight.data, out)
    # a nested Sequential followed by more layers gets its last Linear back to He
    fc.manual_seed(1)
    inner = fc.Sequential(fc.Linear(50, 40))
    small = inner[0].weight.data.std()
    fc.Sequential(inner, fc.ReLU(), fc.Linear(40, 3))
    assert inner[0].weight.data.std() == pytest.approx(small * math.sqrt(2) / init.CLASSIFIER_GAIN, rel=1e-5)
    # append: the previous output layer becomes hidden, the new one the output
    fc.manual_seed(2)
    seq = fc.Sequential(fc.Linear(50, 40))
    seq.append(fc.ReLU()).append(fc.Linear(40, 3))
    assert seq[0].weight.data.std() == pytest.approx(math.sqrt(2 / 50), rel=0.05)
    assert seq[2].weight.data.std() == pytest.approx(init.CLASSIFIER_GAIN / math.sqrt(40), rel=0.2)


def test_sanity_check_fails_on_large_initial_scores(rng):
    x = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    y = np.arange(40) % 10
    fc.manual_seed(0)
    model = build_model("fc32-relu-fc10", (1, 8, 8), 10)
    opt = fc.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = fc.Trainer(model, fc.SoftmaxCrossEntropy(), opt, progress=False, verbose=False)
    r = trainer.overfit_check((x, y), n=20)
    assert r["initial_ok"] and r["expected_initial_loss"] == pytest.approx(LN10)
    model[-1].weight.data *= 50  # an output layer initialized like a hidden one, and more
    r = trainer.overfit_check((x, y), n=20)
    assert not r["initial_ok"] and not r["passed"] and r["initial_loss"] > LN10 + 0.5
    svm = fc.Trainer(model, fc.MulticlassSVM(margin=2.0), opt, progress=False, verbose=False)
    assert svm.overfit_check((x, y), n=20, steps=1)["expected_initial_loss"] == pytest.approx(9 * 2.0)


def test_cli_sanity_fails_saying_why(monkeypatch, capsys):
    from fastconv.tools import cli

    monkeypatch.setattr(init, "CLASSIFIER_GAIN", 30.0)
    code = cli.main(["train", "--sanity", "--arch", "fc32-relu-fc10", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAILED" in out and "initial scores are too large" in out and "sanity check FAILED" in out


def test_a_layer_that_has_run_keeps_its_weights(rng):
    fc.manual_seed(0)
    lin = fc.Linear(6, 4)
    x = rng.standard_normal((2, 6)).astype(np.float32)
    y = lin(x)
    fc.Sequential(fc.Linear(3, 6), fc.ReLU(), lin)  # wrapping layers already used changes nothing
    np.testing.assert_array_equal(lin(x), y)
