"""Layers: backward against float64 central differences, forward and gradients
against PyTorch, and the errors bad input gets."""

import numpy as np
import pytest
from conftest import rand

import fastconv as fc

# ---------------------------------------------------------------------------
# backward vs central differences (float64, through fc.gradcheck)

CONV_CASES = [  # (N, C, H, W, K, kernel, stride, padding)
    (1, 1, 5, 5, 1, 3, 1, 0),
    (2, 3, 7, 5, 4, (3, 2), (2, 1), (1, 0)),
    (1, 2, 6, 9, 3, 1, 1, 0),
    (2, 2, 5, 4, 2, (5, 4), 1, 0),
    (1, 3, 8, 7, 2, 3, 3, 2),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradcheck(case, rng):
    n, c, h, w, k, kernel, stride, padding = case
    fc.manual_seed(0)
    conv = fc.Conv2d(c, k, kernel, stride=stride, padding=padding)
    conv.bias.data[:] = rand(rng, k)
    result = fc.gradcheck(conv, rand(rng, n, c, h, w))
    assert result.passed, str(result)
    assert result.checked > 0


@pytest.mark.parametrize("kernel,stride,padding,options", [
    (2, 2, 0, {}), (3, 2, 1, {}), ((3, 2), (1, 2), (1, 1), {}), (3, 1, 0, {}),
    (2, 2, 0, dict(ceil_mode=True)), (3, 2, 1, dict(dilation=2)), ((2, 3), (2, 1), (1, 1), dict(dilation=(3, 2), ceil_mode=True))],
    ids=str)
def test_maxpool2d_gradcheck(kernel, stride, padding, options, rng):
    # Distinct values spaced well beyond the kink distance: no tie within reach.
    x = rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6).astype(np.float32) * 0.01
    result = fc.gradcheck(fc.MaxPool2d(kernel, stride, padding, **options), x)
    assert result.passed, str(result)
    assert result.skipped == 0


def test_relu_gradcheck_skips_kinks(rng):
    x = rand(rng, 3, 4, 5)
    x[0, 0, :3] = [0.0, 1e-6, -1e-6]  # at and near the kink
    result = fc.gradcheck(fc.ReLU(), x)
    assert result.passed, str(result)
    assert result.skipped == 3


@pytest.mark.parametrize("shape", [(4, 6), (1, 6), (2, 3, 6)])
def test_linear_gradcheck(shape, rng):
    lin = fc.Linear(6, 5)
    lin.bias.data[:] = rand(rng, 5)
    result = fc.gradcheck(lin, rand(rng, *shape))
    assert result.passed, str(result)


def test_softmax_cross_entropy_gradcheck(rng):
    result = fc.gradcheck(fc.SoftmaxCrossEntropy(), rand(rng, 5, 7, scale=3), y=rng.integers(0, 7, 5))
    assert result.passed, str(result)


def test_sequential_gradcheck(rng):
    fc.manual_seed(1)
    model = fc.Sequential(fc.Conv2d(2, 3, 3, padding=1), fc.ReLU(), fc.MaxPool2d(2),
                          fc.Flatten(), fc.Linear(3 * 3 * 2, 4))
    result = fc.gradcheck(model, rand(rng, 2, 2, 6, 4), max_elements=40)
    assert result.passed, str(result)


def test_gradcheck_catches_a_backward_one_percent_off(rng):
    class Scaled(fc.Linear):
        def backward(self, dy):
            return 1.01 * super().backward(dy)

    result = fc.gradcheck(Scaled(4, 3), rand(rng, 2, 4))
    assert not result.passed
    assert result.max_rel_error > 5e-3
    assert result.worst[0] == "x"


# ---------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("make,x,exc,match", [
    (lambda: fc.Conv2d(3, 4, 3), np.zeros((2, 2, 8, 8), np.float32), ValueError, r"Conv2d: `x` must have 3 channels"),
    (lambda: fc.Conv2d(3, 4, 3), np.zeros((3, 8), np.float32), ValueError, r"Conv2d: `x` must have rank 3 or 4"),
    (lambda: fc.Conv2d(3, 4, 3), np.zeros((1, 3, 8, 8)), TypeError, r"Conv2d: `x` must be a float32 array; got dtype float64"),
    (lambda: fc.Conv2d(3, 4, 3), [[1.0]], TypeError, r"Conv2d: `x` must be a float32 numpy array; got list"),
    (lambda: fc.Conv2d(1, 4, 5), np.zeros((1, 1, 2, 8), np.float32), ValueError, r"kernel size \(5, 5\) is larger than the padded input \(2, 8\)"),
    (lambda: fc.MaxPool2d(3), np.zeros((1, 1, 2, 2), np.float32), ValueError, r"MaxPool2d: kernel size"),
    (lambda: fc.MaxPool2d(2), np.zeros((2, 2), np.float32), ValueError, r"MaxPool2d: `x` must have rank 3 or 4"),
    (lambda: fc.MaxPool2d(3, dilation=2), np.zeros((1, 1, 4, 8), np.float32), ValueError,
     r"MaxPool2d: kernel size \(3, 3\) at dilation \(2, 2\) is larger than the padded input \(4, 8\)"),
    (lambda: fc.MaxPool2d(2, stride=1, padding=1, dilation=3), np.zeros((1, 2, 2), np.float32), ValueError,
     r"MaxPool2d: with `dilation` \(3, 3\) and padding \(1, 1\), a window on the input \(2, 2\) holds only padding"),
    (lambda: fc.Linear(5, 2), np.zeros((3, 4), np.float32), ValueError, r"Linear: `x` must have 5 features"),
    (lambda: fc.Linear(5, 2), np.zeros((3, 5), np.int64), TypeError, r"Linear: `x` must be a float32 array"),
    (lambda: fc.ReLU(), np.zeros(3, np.float16), TypeError, r"ReLU: `x` must be a float32 array"),
])
def test_layer_errors(make, x, exc, match):
    with pytest.raises(exc, match=match):
        make()(x)


@pytest.mark.parametrize("make,exc,match", [
    (lambda: fc.Conv2d(0, 4, 3), ValueError, r"Conv2d: `in_channels` must be >= 1; got 0"),
    (lambda: fc.Conv2d(3, 4, 3, stride=0), ValueError, r"Conv2d: `stride` must be >= 1; got \(0, 0\)"),
    (lambda: fc.Conv2d(3, 4, 3, padding=-1), ValueError, r"Conv2d: `padding` must be >= 0"),
    (lambda: fc.Conv2d(3, 4, 2.5), TypeError, r"Conv2d: `kernel_size` must be an int or a pair of ints; got 2.5"),
    (lambda: fc.MaxPool2d(2, padding=2), ValueError, r"MaxPool2d: `padding` must be at most half"),
    (lambda: fc.MaxPool2d(2, dilation=0), ValueError, r"MaxPool2d: `dilation` must be >= 1; got \(0, 0\)"),
    (lambda: fc.MaxPool2d(2, dilation=(1, -1)), ValueError, r"MaxPool2d: `dilation` must be >= 1; got \(1, -1\)"),
    (lambda: fc.MaxPool2d(2, dilation=1.0), TypeError, r"MaxPool2d: `dilation` must be an int or a pair of ints"),
    (lambda: fc.MaxPool2d(2, ceil_mode="yes"), TypeError, r"MaxPool2d: `ceil_mode` must be a bool; got 'yes'"),
    (lambda: fc.Linear(3, "4"), TypeError, r"Linear: `out_features` must be an int"),
    (lambda: fc.Sequential(fc.ReLU(), "relu"), TypeError, r"Sequential: argument 1 must be a Module"),
])
def test_constructor_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("scores,y,exc,match", [
    (np.zeros((3, 4), np.float32), np.array([0, 1]), ValueError, r"`y` must have shape \(3,\)"),
    (np.zeros((3, 4), np.float32), np.array([0, 1, 4]), ValueError, r"class indices in \[0, 4\); got 4"),
    (np.zeros((3, 4), np.float32), np.array([0.0, 1.0, 2.0]), TypeError, r"integer class indices; got dtype float64"),
    (np.zeros((3, 4, 1), np.float32), np.array([0, 1, 2]), ValueError, r"`scores` must have rank 2"),
])
def test_cross_entropy_errors(scores, y, exc, match):
    with pytest.raises(exc, match=match):
        fc.SoftmaxCrossEntropy()(scores, y)


def test_misaligned_input_is_copied_by_layers(rng):
    raw = np.zeros(2 * 3 * 5 * 5 * 4 + 1, np.uint8)[1:]
    x = raw.view(np.float32).reshape(2, 3, 5, 5)
    x[...] = rand(rng, 2, 3, 5, 5)
    assert not x.flags.aligned
    conv = fc.Conv2d(3, 2, 3)
    np.testing.assert_array_equal(conv(x), conv(np.array(x)))


def test_flatten_dims_as_torch(rng):
    x = rand(rng, 2, 3, 4, 5)
    assert fc.Flatten()(x).shape == (2, 60)
    assert fc.Flatten(0, 1)(x).shape == (6, 4, 5)
    assert fc.Flatten(-2)(x).shape == (2, 3, 20)
    with pytest.raises(ValueError, match=r"Flatten: `start_dim` must be in \[-1, 0\] for shape \(5,\); got 1"):
        fc.Flatten()(rand(rng, 5))
    with pytest.raises(ValueError, match="comes after end_dim"):
        fc.Flatten(2, 1)(x)
