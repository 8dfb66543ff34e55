"""Grouped, depthwise and dilated convolution, and padding="same" for even
kernels: conv2d_ex_forward / conv2d_ex_backward against their NumPy twins and
PyTorch (on every ISA x {1, 2} threads), the depthwise algorithm in the
planner, determinism, Conv2d's new arguments, gradcheck and the spec tokens."""

import warnings
from typing import NamedTuple

import numpy as np
import pytest
from conftest import rand
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_conv2d import assert_close

import fastconv as fc
from fastconv import _kernels, reference

torch = pytest.importorskip("torch")

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


class GConv(NamedTuple):
    """x (n, c, h, w), weight (k, c / groups, kh, kw); padding ((top, bottom), (left, right))."""

    n: int
    c: int
    h: int
    w: int
    k: int
    kh: int
    kw: int
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int

    @property
    def out(self):
        return tuple((size + a + b - d * (kk - 1) - 1) // s + 1 for size, (a, b), d, kk, s in zip(
            (self.h, self.w), self.padding, self.dilation, (self.kh, self.kw), self.stride))

    @property
    def args(self):
        return self.stride, self.padding, self.dilation, self.groups

    def arrays(self, rng):
        x = rand(rng, self.n, self.c, self.h, self.w)
        weight = rand(rng, self.k, self.c // self.groups, self.kh, self.kw)
        return x, weight, rand(rng, self.k), rand(rng, self.n, self.k, *self.out)


def same_padding(kernel, dilation):
    """PyTorch's padding="same": dilation*(k-1) in all, the extra one after."""
    return tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation))


@st.composite
def gconvs(draw, same=None):
    """Groups of 1, 2 or C (depthwise, multiplier 1 or 2), any stride, padding
    (either side) and dilation that gives an output; "same" padding at stride 1."""
    kind = draw(st.sampled_from(["1", "2", "C"]))
    mult = draw(st.sampled_from([1, 2]))
    if kind == "C":
        c = draw(st.integers(1, 5))
        groups, k = c, mult * c
    else:
        groups = int(kind)
        cg = draw(st.integers(1, 3))
        c, k = groups * cg, groups * draw(st.sampled_from([mult * cg, draw(st.integers(1, 4))]))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h, w = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    if same if same is not None else draw(st.booleans()):
        stride, padding = (1, 1), same_padding((kh, kw), dilation)
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    conv = GConv(draw(st.integers(1, 3)), c, h, w, k, kh, kw, stride, padding, dilation, groups)
    assume(min(conv.out) >= 1)
    return conv


# Shapes for the depthwise row kernels' fast paths (3x3 at stride 1 and 2, rows
# long enough for whole vectors and edges) and their fallbacks.
DEPTHWISE_CASES = {
    "3x3-s1": GConv(2, 6, 9, 37, 6, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 6),
    "3x3-s2": GConv(2, 5, 12, 41, 10, 3, 3, (2, 2), ((1, 1), (1, 1)), (1, 1), 5),
    "3x3-s1-d2": GConv(1, 4, 11, 35, 4, 3, 3, (1, 1), ((2, 2), (2, 2)), (2, 2), 4),
    "5x5-s1": GConv(3, 3, 8, 20, 6, 5, 5, (1, 1), ((2, 2), (2, 2)), (1, 1), 3),
    "4x4-same": GConv(2, 4, 7, 19, 4, 4, 4, (1, 1), ((1, 2), (1, 2)), (1, 1), 4),
    "3x5-s3-d3": GConv(2, 3, 17, 23, 6, 3, 5, (3, 2), ((0, 3), (2, 1)), (3, 2), 3),
    "no-padding-wide": GConv(1, 2, 5, 70, 4, 3, 3, (1, 1), ((0, 0), (0, 0)), (1, 1), 2),
}


def magnitudes(conv, x, weight, dy):
    """The twin's sums with every term made non-negative (assert_close's magnitude)."""
    y = reference.conv2d_ex_forward(np.abs(x), np.abs(weight), np.ones(conv.k, np.float32), *conv.args)
    return (y,) + reference.conv2d_ex_backward(np.abs(x), np.abs(weight), np.abs(dy), *conv.args)


def check_against(conv, x, weight, bias, dy, y_want, grads_want):
    """The native forward and backward against the expected values."""
    mag_y, mag_dx, mag_dw, mag_db = magnitudes(conv, x, weight, dy)
    y = _kernels.conv2d_ex_forward(x, weight, bias, *conv.args)
    dx, dw, db = _kernels.conv2d_ex_backward(x, weight, dy, *conv.args)
    batch = conv.n * conv.out[0] * conv.out[1]
    assert y.shape == (conv.n, conv.k) + conv.out
    assert_close(y, y_want, mag_y, conv.c // conv.groups * conv.kh * conv.kw + 1, "y")
    assert_close(dx, grads_want[0], mag_dx, conv.k // conv.groups * conv.kh * conv.kw, "dx")
    assert_close(dw, grads_want[1], mag_dw, batch, "dweight")
    assert_close(db, grads_want[2], mag_db, batch, "dbias")


def check_reference(conv, seed):
    x, weight, bias, dy = conv.arrays(np.random.default_rng(seed))
    check_against(conv, x, weight, bias, dy, reference.conv2d_ex_forward(x, weight, bias, *conv.args),
                  reference.conv2d_ex_backward(x, weight, dy, *conv.args))


def torch_results(conv, x, weight, bias, dy):
    tx, tw, tb = (torch.from_numpy(a.copy()).double().requires_grad_() for a in (x, weight, bias))
    (top, bottom), (left, right) = conv.padding
    xp = torch.nn.functional.pad(tx, (left, right, top, bottom))
    ty = torch.nn.functional.conv2d(xp, tw, tb, stride=conv.stride, dilation=conv.dilation,
                                    groups=conv.groups)
    ty.backward(torch.from_numpy(dy).double())
    return ty.detach().numpy(), (tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy())


# ---------------------------------------------------------------------------
# against the NumPy twins and PyTorch

@FIXTURE_OK
@given(conv=gconvs(), seed=st.integers(0, 2**32 - 1))
def test_matches_reference(isa_threads, conv, seed):
    check_reference(conv, seed)


@FIXTURE_OK
@given(conv=gconvs(same=True), seed=st.integers(0, 2**32 - 1))
def test_same_padding_matches_reference(isa_threads, conv, seed):
    assert conv.out == (conv.h, conv.w)
    check_reference(conv, seed)


@settings(FIXTURE_OK, max_examples=20)
@given(conv=gconvs(), seed=st.integers(0, 2**32 - 1))
def test_matches_pytorch(isa_threads, conv, seed):
    x, weight, bias, dy = conv.arrays(np.random.default_rng(seed))
    check_against(conv, x, weight, bias, dy, *torch_results(conv, x, weight, bias, dy))


@pytest.mark.parametrize("conv", DEPTHWISE_CASES.values(), ids=DEPTHWISE_CASES.keys())
def test_depthwise_rows_match_pytorch_and_the_per_group_path(isa_threads, rng, conv):
    x, weight, bias, dy = conv.arrays(rng)
    assert _kernels.plan_conv2d((conv.n, conv.c, conv.h, conv.w), weight.shape, conv.stride, conv.padding,
                                dilation=conv.dilation, groups=conv.groups)["forward"][0] == "depthwise"
    want = torch_results(conv, x, weight, bias, dy)
    check_against(conv, x, weight, bias, dy, *want)
    previous = _kernels.set_conv_algorithm("no-depthwise")  # each group by the GEMM paths
    try:
        check_against(conv, x, weight, bias, dy, *want)
    finally:
        _kernels.set_conv_algorithm(previous)


def test_relu_in_the_depthwise_pass(isa_threads, rng):
    conv = DEPTHWISE_CASES["3x3-s2"]
    x, weight, bias, _ = conv.arrays(rng)
    x[0, 1, 3, 5] = np.nan
    y = _kernels.conv2d_ex_forward(x, weight, bias, *conv.args, relu=True)
    plain = _kernels.conv2d_ex_forward(x, weight, bias, *conv.args)
    np.testing.assert_array_equal(y, np.where(plain < 0, 0, plain))
    assert np.isnan(y).any() and (y == 0).any()


@pytest.mark.parametrize("conv", [DEPTHWISE_CASES["3x3-s1"], DEPTHWISE_CASES["3x5-s3-d3"],
                                  GConv(4, 8, 10, 9, 12, 3, 3, (1, 1), ((1, 1), (1, 1)), (2, 2), 2)],
                         ids=["depthwise-s1", "depthwise-s3", "grouped"])
def test_bitwise_deterministic(isa_threads, rng, conv):
    x, weight, bias, dy = conv.arrays(rng)
    first = (_kernels.conv2d_ex_forward(x, weight, bias, *conv.args),) + _kernels.conv2d_ex_backward(
        x, weight, dy, *conv.args)
    for _ in range(2):
        again = (_kernels.conv2d_ex_forward(x, weight, bias, *conv.args),) + _kernels.conv2d_ex_backward(
            x, weight, dy, *conv.args)
        for got, want in zip(again, first):
            np.testing.assert_array_equal(got, want)


def test_depthwise_is_the_same_bits_at_any_thread_count(rng):
    """Each output plane and each channel's dW is one thread's, in a fixed order."""
    conv = GConv(3, 8, 20, 24, 16, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 8)
    x, weight, bias, dy = conv.arrays(rng)
    threads = _kernels.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            _kernels.set_num_threads(t)
            results.append((_kernels.conv2d_ex_forward(x, weight, bias, *conv.args),)
                           + _kernels.conv2d_ex_backward(x, weight, dy, *conv.args))
    finally:
        _kernels.set_num_threads(threads)
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("conv", [
    GConv(2, 3, 11, 13, 3, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 3),
    GConv(1, 2, 7, 40, 4, 5, 5, (1, 1), ((2, 2), (2, 2)), (1, 1), 2),
    GConv(2, 2, 12, 17, 2, 3, 3, (1, 1), ((2, 2), (2, 2)), (2, 2), 2),
    GConv(1, 3, 9, 16, 3, 4, 4, (1, 1), ((1, 2), (1, 2)), (1, 1), 3),
    GConv(2, 2, 6, 5, 2, 3, 1, (1, 1), ((1, 1), (0, 0)), (1, 1), 2),
], ids=["3x3", "5x5-multiplier-2", "3x3-d2", "4x4-same", "3x1"])
def test_depthwise_buffer_pitch_leaves_the_bits(isa_threads, rng, conv):
    """One more padding column on the right (OW = W + 1) changes the plane buffer's pitch and
    the flat passes' garbage columns (kernels/depthwise.h), not the terms of the first W
    columns or their order: the same bits."""
    x, weight, bias, dy = conv.arrays(rng)
    assert conv.out[1] == conv.w
    (top, bottom), (left, right) = conv.padding
    wide = conv._replace(padding=((top, bottom), (left, right + 1)))
    y = _kernels.conv2d_ex_forward(x, weight, bias, *conv.args)
    np.testing.assert_array_equal(_kernels.conv2d_ex_forward(x, weight, bias, *wide.args)[..., :conv.w], y)
    # dy's extra column zero: its terms are +-0, which leave the (non-zero) sums' bits as they
    # are; dx and dW (not db, whose lanes run over the plane's elements as they fall)
    dy_wide = np.concatenate([dy, np.zeros(dy.shape[:3] + (1,), np.float32)], axis=3)
    for got, want in zip(_kernels.conv2d_ex_backward(x, weight, dy_wide, *wide.args)[:2],
                         _kernels.conv2d_ex_backward(x, weight, dy, *conv.args)[:2]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("conv", [GConv(8, 2, 48, 48, 2, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 2),
                                  GConv(5, 3, 40, 44, 6, 3, 3, (2, 1), ((1, 0), (1, 1)), (1, 1), 3)],
                         ids=["2-channels", "3-channels-multiplier-2"])
def test_depthwise_dweight_with_few_channels_is_the_same_bits_at_any_thread_count(rng, conv):
    """dW splits a channel's images into blocks by the shape alone (conv/depthwise.c), so that
    two threads share a layer of few channels, with the same bits at any thread count."""
    x, weight, _, dy = conv.arrays(rng)
    threads = _kernels.get_num_threads()
    try:
        results = []
        for t in (1, 2, 3):
            _kernels.set_num_threads(t)
            results.append(_kernels.conv2d_ex_backward(x, weight, dy, *conv.args))
    finally:
        _kernels.set_num_threads(threads)
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)
    check_reference(conv, 5)


@st.composite
def depthwise_convs(draw):
    """Depthwise only, planes up to 40 wide (whole vectors and their ends), the flat
    pass's unit stride and "same" padding often."""
    c, mult = draw(st.integers(1, 4)), draw(st.sampled_from([1, 2]))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 40))
    if draw(st.booleans()):
        stride, padding = (1, 1), same_padding((kh, kw), dilation)
    else:
        stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    conv = GConv(draw(st.integers(1, 3)), c, h, w, mult * c, kh, kw, stride, padding, dilation, c)
    assume(min(conv.out) >= 1)
    return conv


@settings(FIXTURE_OK, max_examples=40)
@given(conv=depthwise_convs(), seed=st.integers(0, 2**32 - 1))
def test_depthwise_planes_match_reference(isa_threads, conv, seed):
    check_reference(conv, seed)


def test_plain_arguments_give_the_conv2d_kernels_bits(isa_threads, rng):
    x, weight, bias, dy = rand(rng, 3, 4, 9, 8), rand(rng, 8, 4, 3, 3), rand(rng, 8), rand(rng, 3, 8, 9, 8)
    np.testing.assert_array_equal(_kernels.conv2d_ex_forward(x, weight, bias, 1, 1, 1, 1),
                                  _kernels.conv2d_forward(x, weight, bias, 1, 1))
    for got, want in zip(_kernels.conv2d_ex_backward(x, weight, dy, 1, 1, 1, 1),
                         _kernels.conv2d_backward(x, weight, dy, 1, 1)):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# the planner

def plan(conv, mode="auto"):
    return _kernels.plan_conv2d((conv.n, conv.c, conv.h, conv.w),
                                (conv.k, conv.c // conv.groups, conv.kh, conv.kw), conv.stride,
                                conv.padding, mode=mode, dilation=conv.dilation, groups=conv.groups)


def test_depthwise_is_planned_for_every_direction_and_forced_only_where_it_applies():
    dw = DEPTHWISE_CASES["3x3-s1"]
    assert {v[0] for v in plan(dw).values()} == {"depthwise"}
    assert "groups == C" in plan(dw)["forward"][1]
    assert "depthwise" not in {v[0] for v in plan(dw, "no-depthwise").values()}
    grouped = GConv(2, 8, 10, 9, 12, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 2)
    forced = plan(grouped, "depthwise")["forward"]
    assert forced[0] != "depthwise" and "2 groups of C = 4 -> K = 6" in forced[1]
    one_channel = GConv(2, 1, 10, 9, 12, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    assert plan(one_channel)["forward"][0] != "depthwise"
    assert plan(one_channel, "depthwise")["forward"][0] == "depthwise"


@pytest.mark.parametrize("algorithm", ["direct", "winograd", "pointwise"])
def test_dilation_and_uneven_padding_fall_back_from_the_plain_algorithms(isa_threads, rng, algorithm):
    """Winograd and pointwise need the same padding each side, all three need
    dilation 1; direct pads each image as the shape says, unevenly too, and
    runs it (a negative padding, which only the phases of a strided dx have,
    tests/test_conv2d.py)."""
    kernel = 1 if algorithm == "pointwise" else 3
    k = 8 if algorithm == "direct" else 16
    base = GConv(4, 16, 16, 16, k, kernel, kernel, (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    if kernel == 3:
        base = base._replace(padding=((1, 1), (1, 1)))
    if plan(base, algorithm)["forward"][0] != algorithm:
        pytest.skip(f"{algorithm} has no kernels on {isa_threads[0]}")
    variants = [base._replace(padding=((0, 1), (1, 0)))]
    if kernel == 3:
        variants += [base._replace(dilation=(2, 1)), base._replace(padding=((2, 0), (0, 1)))]
    for conv in variants:
        chosen = plan(conv, algorithm)["forward"]
        runs_it = algorithm == "direct" and conv.dilation == (1, 1)
        assert (chosen[0] == algorithm) == runs_it, chosen
        if not runs_it:
            assert chosen[0] in ("implicit_im2col", "im2col", "direct"), chosen
        previous = _kernels.set_conv_algorithm(algorithm)
        try:
            check_reference(conv, 7)
        finally:
            _kernels.set_conv_algorithm(previous)


@pytest.mark.parametrize("algorithm", ["implicit_im2col", "im2col"])
def test_dilation_on_the_gemm_paths(isa_threads, algorithm):
    conv = GConv(3, 4, 13, 11, 6, 3, 2, (1, 2), ((2, 1), (0, 3)), (3, 2), 2)
    assert plan(conv, algorithm)["forward"][0] == algorithm
    previous = _kernels.set_conv_algorithm(algorithm)
    try:
        check_reference(conv, 3)
    finally:
        _kernels.set_conv_algorithm(previous)


def test_conv_plan_names_the_depthwise_layer():
    model = fc.Sequential(fc.Conv2d(3, 8, 3, padding=1), fc.ReLU(), fc.Conv2d(8, 16, 3, padding=1, groups=8))
    rows = fc.conv_plan(model, (2, 3, 10, 10))
    assert [r["forward"][0] for r in rows][1] == "depthwise"


# ---------------------------------------------------------------------------
# the layer

@pytest.mark.parametrize("kernel, dilation", [(2, 1), (4, 1), ((2, 3), (1, 2)), (3, 2), (4, 3)])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_conv2d_layer_same_padding_matches_pytorch(rng, kernel, dilation, groups):
    layer = fc.Conv2d(4, 8, kernel, padding="same", dilation=dilation, groups=groups)
    twin = torch.nn.Conv2d(4, 8, kernel, padding="same", dilation=dilation, groups=groups)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    x = rand(rng, 2, 4, 7, 10)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    y = layer(x)
    with warnings.catch_warnings():  # PyTorch's note that it may copy the input for an even kernel
        warnings.simplefilter("ignore", UserWarning)
        ty = twin(tx)
    assert y.shape == (2, 8, 7, 10)
    dy = rand(rng, *y.shape)
    ty.backward(torch.from_numpy(dy))
    dx = layer.backward(dy)
    for got, want in ((y, ty.detach()), (dx, tx.grad), (layer.weight.grad, twin.weight.grad),
                      (layer.bias.grad, twin.bias.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("layer", [
    lambda: fc.Conv2d(4, 6, 3, padding="same", dilation=2, groups=2),
    lambda: fc.Conv2d(3, 6, 3, stride=2, padding=1, groups=3),
    lambda: fc.Conv2d(2, 2, (2, 4), padding="same", groups=2),
], ids=["grouped-dilated-same", "depthwise-x2-s2", "depthwise-even-same"])
def test_gradcheck(rng, layer, backend):
    m = layer()
    x = rng.standard_normal((2, m.in_channels, 6, 7))
    result = fc.gradcheck(m, x, backend=backend)
    assert result.passed, result


@pytest.mark.parametrize("kwargs, error, match", [
    ({"groups": 3}, ValueError, r"Conv2d: `groups` must divide `in_channels`; got groups=3, in_channels=4"),
    ({"groups": 4, "out_channels": 6}, ValueError, r"`groups` must divide `out_channels`; got groups=4, out_channels=6"),
    ({"groups": 0}, ValueError, r"Conv2d: `groups` must be >= 1; got 0"),
    ({"groups": 1.5}, TypeError, r"Conv2d: `groups` must be an int"),
    ({"dilation": 0}, ValueError, r"Conv2d: `dilation` must be >= 1; got \(0, 0\)"),
    ({"padding": "same", "stride": 2}, ValueError, r"padding='same' needs stride 1 \(as PyTorch\); got stride \(2, 2\)"),
])
def test_layer_errors_name_the_argument(kwargs, error, match):
    args = {"in_channels": 4, "out_channels": 8, "kernel_size": 3} | kwargs
    with pytest.raises(error, match=match):
        fc.Conv2d(**args)


def test_layer_refuses_a_dilated_kernel_larger_than_the_input():
    with pytest.raises(ValueError, match=r"dilated kernel size \(7, 7\) is larger than the padded input"):
        fc.Conv2d(2, 2, 3, dilation=3)(np.zeros((1, 2, 5, 5), np.float32))


@pytest.mark.parametrize("call, error, match", [
    (lambda x, w: _kernels.conv2d_ex_forward(x, w, None, 1, 0, 1, 3), ValueError,
     r"conv2d_ex_forward: `groups` must be >= 1 and divide the input channels \(4"),
    (lambda x, w: _kernels.conv2d_ex_forward(x, w, None, 1, 0, 1, 4), ValueError,
     r"`weight` must have 1 input channels \(C / groups\) to match `x` \(2, 4, 6, 6\) with groups=4; "
     r"got weight shape \(8, 2, 3, 3\)"),
    (lambda x, w: _kernels.conv2d_ex_forward(x, w, None, 1, 0, 0, 2), ValueError, r"`dilation` must be >= 1"),
    (lambda x, w: _kernels.conv2d_ex_forward(x, w, None, 1, 0, 3, 2), ValueError,
     r"kernel height 3 at dilation 3 \(spanning 7\) is larger than the padded input height 6 \+ 2\*0"),
    (lambda x, w: _kernels.conv2d_ex_forward(x, w, None, 1, ((0, -1), (0, 0)), 1, 2), ValueError,
     r"`padding` must be >= 0"),
    (lambda x, w: _kernels.conv2d_ex_backward(x, w, np.zeros((2, 8, 4, 4), np.float32), 1,
                                              ((1, 0), (0, 0)), 1, 2), ValueError,
     r"`dy` must have shape \(2, 8, 5, 4\)"),
    (lambda x, w: _kernels.plan_conv2d(x.shape, w.shape, groups=True), TypeError, r"`groups` must be an int"),
])
def test_kernel_errors_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(np.zeros((2, 4, 6, 6), np.float32), np.zeros((8, 2, 3, 3), np.float32))


# ---------------------------------------------------------------------------
# the spec language

def test_spec_tokens_build_the_pytorch_twin(rng):
    spec = "conv8x3p1-relu-dwconv3s2p1-relu-conv16x3p2d2g2-relu-dwconv5p2-fc10"
    model = fc.models.build_model(spec, (3, 12, 12), 10)
    convs = [m for m in model if isinstance(m, fc.Conv2d)]
    assert [(m.groups, m.dilation, m.stride) for m in convs] == [
        (1, (1, 1), (1, 1)), (8, (1, 1), (2, 2)), (2, (2, 2), (1, 1)), (16, (1, 1), (1, 1))]
    twin = fc.models.build_model(spec, (3, 12, 12), 10, lib=torch.nn)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    x = rand(rng, 2, 3, 12, 12)
    np.testing.assert_allclose(model(x), twin(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert "dwconv<K>" in fc.models.SPEC_HELP and "[d<D>][g<G>]" in fc.models.SPEC_HELP


@pytest.mark.parametrize("spec, match", [
    ("conv8x3g3-fc10", r"'conv8x3g3': the groups \(3\) must divide the input channels \(4\) and the filters \(8\)"),
    ("conv8x3d4-fc10", r"'conv8x3d4' does not fit its input of shape \(4, 8, 8\)"),
    ("conv8x3g0-fc10", r"'conv8x3g0': the groups must be >= 1; got 0"),
])
def test_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        fc.models.build_model(spec, (4, 8, 8), 10)


@pytest.mark.parametrize("spoiled", ["weight", "dy", "x"])
@pytest.mark.parametrize("conv", [DEPTHWISE_CASES["3x3-s1"], DEPTHWISE_CASES["3x5-s3-d3"],
                                  GConv(1, 3, 5, 4, 6, 3, 3, (2, 3), ((0, 2), (1, 1)), (1, 1), 3)],
                         ids=["3x3-s1", "3x5-s3-d3", "uneven-multiplier-2"])
def test_depthwise_with_nonfinite_input_matches_reference(isa_threads, rng, conv, spoiled):
    """The depthwise planes multiply their buffer's zero padding as the twin does (an infinite
    weight gives NaN there in the forward, an infinite dy in dW); dx as a convolution would
    multiply padding and the spread-out dy's zeros where the twin's dx has no terms, so an
    infinite weight sends dx to the per-group path (the planner's guard)."""
    x, weight, bias, dy = conv.arrays(rng)
    a = {"x": x, "weight": weight, "dy": dy}[spoiled].reshape(-1)
    a[rng.integers(0, a.size, max(1, a.size // 4))] = rng.choice([np.nan, np.inf, -np.inf], max(1, a.size // 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want_y = reference.conv2d_ex_forward(x, weight, bias, *conv.args)
        want = reference.conv2d_ex_backward(x, weight, dy, *conv.args)
    np.testing.assert_allclose(_kernels.conv2d_ex_forward(x, weight, bias, *conv.args), want_y,
                               rtol=1e-4, atol=1e-4, equal_nan=True)
    for got, w in zip(_kernels.conv2d_ex_backward(x, weight, dy, *conv.args), want):
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4, equal_nan=True)
