"""MulticlassSVM, l2_penalty, and the FC-to-CONV conversion."""

import numpy as np
import pytest
from conftest import rand

import fastconv as fc


def test_svm_worked_example_from_the_notes():
    svm = fc.MulticlassSVM(margin=10)
    assert svm(np.array([[13, -7, 11]], np.float32), np.array([0])) == 8.0
    np.testing.assert_array_equal(svm.backward(), [[-1, 0, 1]])


@pytest.mark.parametrize("squared", [False, True])
def test_svm_gradcheck(squared, rng):
    scores = rand(rng, 6, 5, scale=2)
    result = fc.gradcheck(fc.MulticlassSVM(squared=squared), scores, y=rng.integers(0, 5, 6))
    assert result.passed, str(result)


@pytest.mark.parametrize("squared,p", [(False, 1), (True, 2)])
def test_svm_is_class_count_times_torch_multi_margin(squared, p, rng, torch):
    scores, y = rand(rng, 7, 4), rng.integers(0, 4, 7)
    ours = fc.MulticlassSVM(margin=0.7, squared=squared)(scores, y)
    theirs = torch.nn.MultiMarginLoss(p=p, margin=0.7)(torch.tensor(scores), torch.tensor(y)).item()
    assert ours == pytest.approx(4 * theirs, rel=1e-5)


def test_l2_penalty():
    lin = fc.Linear(2, 2)
    lin.weight.data[...] = [[1, 2], [3, 0]]
    lin.bias.data[...] = 10
    assert fc.l2_penalty(lin, 0.1) == pytest.approx(0.5 * 0.1 * 14)
    assert fc.l2_penalty(lin, 0.1, include_bias=True) == pytest.approx(0.5 * 0.1 * 214)
    with pytest.raises(ValueError, match=r"`reg` must be a finite number >= 0; got -1"):
        fc.l2_penalty(lin, -1)


def _net():
    fc.manual_seed(4)
    return fc.Sequential(fc.Conv2d(1, 4, 3), fc.ReLU(), fc.MaxPool2d(2), fc.Flatten(),
                         fc.Linear(4 * 4 * 3, 6), fc.ReLU(), fc.Linear(6, 3))


def test_linear_to_conv_same_scores_and_slides(rng):
    model = _net()
    conv_net = fc.convert.linear_to_conv(model, (1, 10, 8))
    assert not any(isinstance(m, (fc.Linear, fc.Flatten)) for m in conv_net)
    x = rand(rng, 3, 1, 10, 8)
    np.testing.assert_allclose(conv_net(x)[:, :, 0, 0], model(x), rtol=1e-5, atol=1e-5)
    big = rand(rng, 1, 1, 14, 16)  # no padding, so each crop sees the same pixels
    scores = conv_net(big)
    assert scores.shape == (1, 3, 3, 5)
    for i in range(3):
        for j in range(5):  # each map entry is the original net on one 10x8 crop at stride 2
            crop = big[:, :, 2 * i:2 * i + 10, 2 * j:2 * j + 8]
            np.testing.assert_allclose(scores[:, :, i, j], model(np.ascontiguousarray(crop)), rtol=1e-4, atol=1e-5)


def test_linear_to_conv_errors():
    with pytest.raises(TypeError, match="must be a Sequential"):
        fc.convert.linear_to_conv(fc.Linear(2, 2), (1, 2, 2))
    with pytest.raises(ValueError, match=r"follows an output of shape \(1, 5, 4\), not a \(C, H, W\) volume of 7"):
        fc.convert.linear_to_conv(fc.Sequential(fc.Flatten(), fc.Linear(7, 2)), (1, 5, 4))
