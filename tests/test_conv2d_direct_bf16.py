"""Direct convolution in bf16 (conv2d_forward, and conv2d_backward's dx as the
convolution of dy, with precision="bfloat16" and K = 16, 32, ... output
channels): bit for bit against a NumPy twin of kernels/direct.h's bf16
contract, on every ISA (AVX512_BF16's vdpbf16ps, the reference's emulation) x
{1, 2} threads, at every stride and padding; within bf16 rounding of float32;
the plan.

The twin: x and w rounded to bf16, the input channels in pairs (an odd C's
last pair with a zero member), one float32 sum per output started at +0 that
takes the pair taps (c2, i, j) in order, each as vdpbf16ps does: the high
channel's product first, each multiply-add rounded once (reference._bf16_step);
then + bias (zero without one), then ReLU."""

import numpy as np
import pytest
from conftest import assert_bits_equal, conv_algorithm, rand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastconv import _kernels, reference

F32 = np.float32
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


def twin_forward(x, weight, bias, stride, padding, relu):
    """kernels/direct.h's bf16 forward; padding (top, left, bottom, right), any sign."""
    (sh, sw), (pt, pl, pb, pr) = stride, padding
    n, c, h, w = x.shape
    k, _, kh, kw = weight.shape
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    c2 = (c + 1) // 2 * 2
    xb = np.zeros((n, c2, h + max(pt, 0) + max(pb, 0), w + max(pl, 0) + max(pr, 0)))
    xb[:, :c, max(pt, 0):max(pt, 0) + h, max(pl, 0):max(pl, 0) + w] = reference._bf16_values(x)
    xb = xb[:, :, max(-pt, 0):, max(-pl, 0):]  # negative padding crops
    wb = np.zeros((k, c2, kh, kw))
    wb[:, :c] = reference._bf16_values(weight)
    s = np.zeros((n, k, oh, ow), F32)
    for cp in range(0, c2, 2):
        for i in range(kh):
            for j in range(kw):
                for ch in (cp + 1, cp):
                    xs = xb[:, ch, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                    s = reference._bf16_step(s, wb[None, :, ch, i, j, None, None], xs[:, None])
    b = np.zeros(k, F32) if bias is None else bias.astype(F32)
    y = s + b[None, :, None, None]
    return np.where(y < 0, F32(0), y) if relu else y


def twin_dx(weight, dy, padding, x_hw):
    """dx of a unit-stride layer as direct runs it: dy convolved with the weights
    transposed and flipped, padding kh - 1 - ph before and whatever reaches x's size after."""
    (ph, pw), (kh, kw) = padding, weight.shape[2:]
    flipped = np.ascontiguousarray(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    (oh, ow), (h, w) = dy.shape[2:], x_hw
    top, left = kh - 1 - ph, kw - 1 - pw
    return twin_forward(dy, flipped, None, (1, 1), (top, left, h + kh - 1 - oh - top, w + kw - 1 - ow - left),
                        False)


@st.composite
def direct_convs(draw):
    """Any shape bf16 direct takes when forced: K a multiple of 16, any C (odd ones
    included), batch 1 to 3, non-square images and kernels, strides 1 to 3."""
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    h = draw(st.integers(max(1, kh - 2 * ph), 12))
    w = draw(st.integers(max(1, kw - 2 * pw), 12))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 9)), h, w, draw(st.sampled_from([16, 32, 48])),
            (kh, kw), (sh, sw), (ph, pw))


@FIXTURE_OK
@given(conv=direct_convs(), with_bias=st.booleans(), relu=st.booleans(), seed=st.integers(0, 2**16))
def test_forward_has_the_twins_bits(isa_threads, conv, with_bias, relu, seed):
    n, c, h, w, k, kernel, stride, padding = conv
    rng = np.random.default_rng(seed)
    x, weight = rand(rng, n, c, h, w), rand(rng, k, c, *kernel, scale=0.5)
    bias = rand(rng, k) if with_bias else None
    assert _kernels.plan_conv2d(x.shape, weight.shape, stride, padding, mode="direct",
                                precision="bfloat16")["forward"][0] == "direct"
    with conv_algorithm("direct"):
        y = _kernels.conv2d_forward(x, weight, bias, stride, padding, relu, "bfloat16")
    want = twin_forward(x, weight, bias, stride, (padding[0], padding[1]) * 2, relu)
    assert_bits_equal(y, want)
    exact = reference.conv2d_forward(x.astype(np.float64), weight.astype(np.float64),
                                     None if bias is None else bias.astype(np.float64), stride, padding, relu)
    assert np.abs(y - exact).max() <= 2e-2 * max(np.abs(exact).max(), 1.0)


@FIXTURE_OK
@given(n=st.integers(1, 3), c=st.sampled_from([16, 32]), k=st.integers(1, 20), h=st.integers(1, 11),
       w=st.integers(1, 11), kernel=st.sampled_from([(1, 1), (3, 3), (2, 3), (5, 5)]),
       padding=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_dx_by_convolution_has_the_twins_bits(isa_threads, n, c, k, h, w, kernel, padding, seed):
    """Unit stride, C a multiple of 16: dx is a direct bf16 forward of dy, any K (odd
    ones: an odd last channel pair), padding past kh - 1 making that forward's negative."""
    kh, kw = kernel
    h, w = max(h, kh - 2 * padding), max(w, kw - 2 * padding)
    rng = np.random.default_rng(seed)
    x, weight = rand(rng, n, c, h, w), rand(rng, k, c, kh, kw, scale=0.5)
    dy = rand(rng, n, k, h + 2 * padding - kh + 1, w + 2 * padding - kw + 1)
    plan = _kernels.plan_conv2d(x.shape, weight.shape, 1, padding, mode="direct", precision="bfloat16")
    assert plan["dx"][0] == "direct"
    with conv_algorithm("direct"):
        dx, dw, db = _kernels.conv2d_backward(x, weight, dy, 1, padding, True, "bfloat16")
    assert_bits_equal(dx, twin_dx(weight, dy, (padding, padding), (h, w)))
    exact = reference.conv2d_backward(x.astype(np.float64), weight.astype(np.float64),
                                      dy.astype(np.float64), 1, padding)
    for got, want in zip((dx, dw, db), exact):
        assert np.abs(got - want).max() <= 2e-2 * max(np.abs(want).max(), 1.0)


@pytest.mark.parametrize("shape", [(1, 16, 32, 32, 16), (3, 3, 17, 9, 32), (2, 5, 7, 30, 48), (4, 32, 8, 8, 128)],
                         ids=str)
def test_the_same_bits_on_every_isa_and_thread_count(shape):
    """Tiles split between threads (batch 1) or images between threads: one sum per
    output, in one order, whoever computes it."""
    n, c, h, w, k = shape
    rng = np.random.default_rng(sum(shape))
    x, weight, bias = rand(rng, n, c, h, w), rand(rng, k, c, 3, 3, scale=0.3), rand(rng, k)
    want = twin_forward(x, weight, bias, (1, 1), (1, 1, 1, 1), True)
    old_isa, old_threads = _kernels.get_isa(), _kernels.get_num_threads()
    try:
        for isa in _kernels.supported_isas():
            for threads in (1, 2, 3):
                _kernels.set_isa(isa)
                _kernels.set_num_threads(threads)
                with conv_algorithm("direct"):
                    assert_bits_equal(_kernels.conv2d_forward(x, weight, bias, 1, 1, True, "bfloat16"), want)
    finally:
        _kernels.set_isa(old_isa)
        _kernels.set_num_threads(old_threads)


def test_special_values_follow_the_twin(isa_threads):
    """Inf and NaN in x, a denormal (flushed to zero by the rounding), a weight that
    rounds to Inf: where the sums make Inf and NaN, the kernels make them too."""
    rng = np.random.default_rng(3)
    x, weight, bias = rand(rng, 2, 5, 6, 7), rand(rng, 16, 5, 3, 3, scale=0.5), rand(rng, 16)
    x[0, 0, 2, 3], x[0, 3, 4, 4], x[1, 4, 0, 0] = np.inf, np.nan, -np.inf
    x[1, 1, 3, 3] = np.float32(1e-40)
    weight[3, 2, 1, 1] = np.uint32(0x7F7F8000).view(np.float32)  # finite; rounds to Inf in bf16
    with conv_algorithm("direct"):
        y = _kernels.conv2d_forward(x, weight, bias, 1, 1, False, "bfloat16")
    want = twin_forward(x, weight, bias, (1, 1), (1, 1, 1, 1), False)
    assert np.isnan(want).any() and np.isinf(want).any()
    assert_bits_equal(y, want)


def test_auto_takes_bf16_direct_where_its_rule_pays():
    """plan.c: in bf16 direct runs what float32 direct would for K = 16, 32, ...: a
    first layer (C = 3), K = 16 at unit stride, 3x3 stride 2; not K = 64 at unit stride
    (Winograd's), K = 8, or a strided 1x1."""
    def forward(x_shape, w_shape, stride, padding):
        return _kernels.plan_conv2d(x_shape, w_shape, stride, padding, precision="bfloat16")["forward"][0]

    assert forward((128, 3, 32, 32), (16, 3, 3, 3), 1, 1) == "direct"
    assert forward((128, 16, 32, 32), (16, 16, 3, 3), 1, 1) == "direct"
    assert forward((128, 16, 32, 32), (32, 16, 3, 3), 2, 1) == "direct"
    assert forward((128, 64, 8, 8), (64, 64, 3, 3), 1, 1) == "winograd"
    assert forward((128, 16, 16, 16), (8, 16, 3, 3), 1, 1) != "direct"
    assert forward((128, 16, 32, 32), (32, 16, 1, 1), 2, 0) != "direct"
    dx = _kernels.plan_conv2d((128, 16, 32, 32), (16, 16, 3, 3), 1, 1, precision="bfloat16")["dx"][0]
    assert dx == "direct"
    dw = _kernels.plan_conv2d((128, 16, 32, 32), (16, 16, 3, 3), 1, 1, mode="direct",
                              precision="bfloat16")["dweight"][0]
    assert dw != "direct"  # float32 dW tiles only
