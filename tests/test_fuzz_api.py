"""Fuzzing the public Python API with bad input (hypothesis): layer constructors
and forward/backward, losses, optimizers, schedules, data helpers and
``fc.set_num_threads``. A call either works (for layers: the same result as on
a clean float32 C-contiguous copy of the input) or raises ValueError/TypeError
whose message names the class or function and says what it got; never another
exception, a crash, or a MemoryError from a silly size.

``FASTCONV_FUZZ_EXAMPLES=N`` sets the examples per test (default: the
hypothesis profile's, 40).
"""

import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv as fc

EXAMPLES = int(os.environ.get("FASTCONV_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None) if EXAMPLES else settings(deadline=None)
FUZZ = settings(FUZZ, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

COUNTS = {"calls": 0, "raised": 0}


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(f"\n{__name__}: {COUNTS['calls']} calls (most with a spoiled argument), {COUNTS['raised']} raised ValueError/TypeError")


def attempt(where, call):
    """Run call(); a refusal must be a ValueError/TypeError naming `where` and what it got."""
    COUNTS["calls"] += 1
    try:
        return True, call()
    except (ValueError, TypeError) as e:
        COUNTS["raised"] += 1
        # named by the class or function called, or by the kernel it handed the input to
        assert where in str(e) or re.match(r"^[a-z0-9_]+: ", str(e)), str(e)
        return False, None


BAD_INTS = [0, -1, -2**40, 2**31, 2**40, 2**63, 2**64, 1.5, 2.0, float("nan"), True, "3", None, (1,), (1, 2, 3),
            (2, -1), (2**40, 1), [2, 2], np.int64(2), np.uint64(2**63), 3j]
BAD_REALS = [float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e300, 10**400, True, "0.1", None, 1j, [0.1],
             np.float32(0.5), 2]

LAYERS = {  # name -> (constructor taking one spoilable argument, its valid value, valid input shape)
    "Conv2d.kernel_size": (lambda v: fc.Conv2d(2, 3, v), 3, (2, 2, 6, 6)),
    "Conv2d.stride": (lambda v: fc.Conv2d(2, 3, 3, stride=v), 2, (2, 2, 6, 6)),
    "Conv2d.padding": (lambda v: fc.Conv2d(2, 3, 3, padding=v), 1, (2, 2, 6, 6)),
    "Conv2d.out_channels": (lambda v: fc.Conv2d(2, v, 3), 3, (2, 2, 6, 6)),
    "MaxPool2d.kernel_size": (lambda v: fc.MaxPool2d(v), 2, (2, 2, 6, 6)),
    "MaxPool2d.stride": (lambda v: fc.MaxPool2d(2, stride=v), 1, (2, 2, 6, 6)),
    "AvgPool2d.padding": (lambda v: fc.AvgPool2d(3, padding=v), 1, (2, 2, 6, 6)),
    "Linear.in_features": (lambda v: fc.Linear(v, 4), 5, (3, 5)),
    "Linear.out_features": (lambda v: fc.Linear(5, v), 4, (3, 5)),
    "LeakyReLU.negative_slope": (lambda v: fc.LeakyReLU(v), 0.1, (2, 3, 4)),
    "ELU.alpha": (lambda v: fc.ELU(v), 1.0, (2, 3, 4)),
    "Dropout.p": (lambda v: fc.Dropout(v), 0.5, (4, 6)),
    "BatchNorm2d.num_features": (lambda v: fc.BatchNorm2d(v), 2, (3, 2, 4, 4)),
    "BatchNorm2d.eps": (lambda v: fc.BatchNorm2d(2, eps=v), 1e-5, (3, 2, 4, 4)),
    "BatchNorm1d.momentum": (lambda v: fc.BatchNorm1d(4, momentum=v), 0.1, (3, 4)),
    "Maxout.pieces": (lambda v: fc.Maxout(5, 4, v), 2, (3, 5)),
    "Sigmoid": (lambda v: fc.Sigmoid(), None, (2, 3)),
    "Tanh": (lambda v: fc.Tanh(), None, (2, 3)),
    "ReLU": (lambda v: fc.ReLU(), None, (2, 3, 4, 4)),
    "Flatten": (lambda v: fc.Flatten(), None, (2, 3, 4)),
}


def spoil_input(draw, x):
    kind = draw(st.sampled_from(["dtype", "rank", "shape", "list", "none", "scalar", "nonfinite", "noncontiguous",
                                 "negative_stride", "readonly", "huge", "empty"]))
    if kind == "dtype":
        return x.astype(draw(st.sampled_from([np.float64, np.int32, np.bool_, object, np.float16, ">f4"]))), kind
    if kind == "rank":
        return (x[None] if draw(st.booleans()) else x.reshape(-1)), kind
    if kind == "shape":
        return np.ones(x.shape[:-1] + (x.shape[-1] + 1,), np.float32), kind
    if kind == "list":
        return x.tolist(), kind
    if kind == "none":
        return None, kind
    if kind == "scalar":
        return 1.0, kind
    if kind == "nonfinite":
        y = x.copy()
        y.reshape(-1)[::3] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return y, kind
    if kind == "noncontiguous":
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), np.float32)
        big[..., ::2] = x
        return big[..., ::2], kind
    if kind == "negative_stride":
        return np.ascontiguousarray(x[::-1])[::-1], kind
    if kind == "readonly":
        y = x.copy()
        y.flags.writeable = False
        return y, kind
    if kind == "huge":  # 2**44+ elements, no memory behind them
        return np.broadcast_to(np.float32(0), (2**(44 // x.ndim + 1),) * x.ndim), kind
    return np.zeros((0,) + x.shape[1:], np.float32), kind


SAME_VALUES = {"nonfinite", "noncontiguous", "negative_stride", "readonly", "empty"}


@pytest.mark.parametrize("name", sorted(LAYERS))
@FUZZ
@given(data=st.data())
def test_fuzz_layer(name, data):
    make, good, shape = LAYERS[name]
    value = data.draw(st.sampled_from(BAD_INTS + BAD_REALS)) if good is not None and data.draw(st.booleans()) \
        else good
    layer_name = name.split(".")[0]
    ok, layer = attempt(layer_name, lambda: make(value))
    if not ok:
        return
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x, kind = spoil_input(data.draw, x)
    layer.train(data.draw(st.booleans()))
    fc.manual_seed(1)
    ok, y = attempt(layer_name, lambda: layer(x))
    if not ok:
        return
    assert kind in SAME_VALUES | {"rank", "shape"}, f"{name} accepted a {kind} input"
    fc.manual_seed(1)
    clean = np.array(x, np.float32, order="C")
    with np.errstate(all="ignore"):
        want = layer(clean)
    np.testing.assert_array_equal(y, want)
    ok, dx = attempt(layer_name, lambda: layer.backward(np.ones_like(want)))
    assert ok and dx.shape == clean.shape


@FUZZ
@given(data=st.data())
def test_fuzz_losses(data):
    loss = data.draw(st.sampled_from([fc.SoftmaxCrossEntropy(), fc.MulticlassSVM()]))
    scores = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    y = np.array([0, 2, 1, 0])
    which = data.draw(st.sampled_from(["scores", "y"]))
    if which == "scores":
        scores, kind = spoil_input(data.draw, scores)
    else:
        y = data.draw(st.sampled_from([np.array([0, 3, 1, 0]), np.array([0, -1, 1, 0]), np.array([0., 1, 1, 0]),
                                       np.array([0, 1]), [0, 1, 1, 0], None, np.array([[0, 1, 1, 0]]),
                                       np.array([0, 2**40, 1, 0]), np.array(["a"] * 4), np.array([True] * 4)]))
        kind = "labels"
    ok, value = attempt(type(loss).__name__, lambda: loss(scores, y))
    if ok:
        assert kind in SAME_VALUES | {"labels", "shape", "rank"} and isinstance(value, float), (kind, value)


OPTIMIZERS = [(fc.SGD, ["lr", "momentum", "dampening", "weight_decay"]), (fc.Adam, ["lr", "eps", "weight_decay"]),
              (fc.RMSprop, ["lr", "alpha", "eps", "momentum"]), (fc.Adagrad, ["lr", "lr_decay", "eps"])]


@FUZZ
@given(data=st.data())
def test_fuzz_optimizers_and_schedules(data):
    cls, names = data.draw(st.sampled_from(OPTIMIZERS))
    name = data.draw(st.sampled_from(names))
    model = fc.Linear(3, 2)
    ok, opt = attempt(cls.__name__, lambda: cls(model.parameters(), **{name: data.draw(st.sampled_from(BAD_REALS))}))
    if ok:
        model.weight.grad[...] = 1
        opt.step()
    else:
        opt = cls(model.parameters(), lr=0.1)
    sched, arg = data.draw(st.sampled_from([(fc.StepLR, "step_size"), (fc.ExponentialLR, "gamma"),
                                            (fc.InverseTimeLR, "decay_rate"), (fc.CosineAnnealingLR, "T_max")]))
    bad = data.draw(st.sampled_from(BAD_INTS + BAD_REALS))
    ok, s = attempt(sched.__name__, lambda: sched(opt, **{arg: bad}))
    if ok:
        for _ in range(3):
            s.step()
    attempt(cls.__name__, lambda: cls(data.draw(st.sampled_from([[], None, 3, [np.ones(3)], "w"]))))


@FUZZ
@given(data=st.data())
def test_fuzz_data_helpers_and_threads(data):
    X = np.zeros((10, 1, 4, 4), np.float32)
    y = np.arange(10) % 2
    spoil = data.draw(st.sampled_from(["X", "y", "fraction", "threads"]))
    if spoil == "threads":
        old = fc.get_num_threads()
        try:
            attempt("set_num_threads", lambda: fc.set_num_threads(data.draw(st.sampled_from(BAD_INTS))))
        finally:
            fc.set_num_threads(old)
        return
    if spoil == "fraction":
        attempt("train_val_split", lambda: fc.data.train_val_split(fc.data.Dataset(X, y),
                                                                    data.draw(st.sampled_from(BAD_REALS))))
        return
    if spoil == "X":
        X, _ = spoil_input(data.draw, X)
    else:
        y = data.draw(st.sampled_from([y[:3], -y - 1, y.astype(float) + 0.5, None, y.reshape(2, 5), list(y)]))
    attempt("Dataset", lambda: fc.data.Dataset(X, y))


def test_huge_layers_are_refused_before_allocating():
    """Parameters larger than the machine's memory: a clear error, not a MemoryError."""
    for make in (lambda: fc.Linear(2**40, 2**40), lambda: fc.Conv2d(2**20, 2**20, 3), lambda: fc.Conv2d(1, 1, 2**25),
                 lambda: fc.BatchNorm2d(2**60), lambda: fc.Maxout(2**30, 2**30, 2**10)):
        with pytest.raises(ValueError, match="got"):
            make()
    with pytest.raises(ValueError, match="`x`"):
        fc.ReLU()(np.broadcast_to(np.float32(0), (2**22, 2**22)))
