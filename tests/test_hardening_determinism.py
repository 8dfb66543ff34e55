"""Determinism: a fixed seed and thread count give bitwise-identical training, and
every kernel gives bitwise-identical results with 1 and 2 threads (README,
"Thread-count invariance"). Two Python threads running kernels side by side
are tested in test_kernel_contract.py; set_num_threads' bad values in
test_training.py."""

import numpy as np
import pytest
from test_kernel_contract import ARGS

import fastconv as fc
from fastconv import _kernels


@pytest.fixture
def restore_threads():
    old = fc.get_num_threads()
    yield
    fc.set_num_threads(old)


def _as_tuple(r):
    return r if isinstance(r, tuple) else (r,)


# Kernels whose result depends on the thread count (README says so): conv2d_backward
# sums dweight over the batch in per-thread partials, so 1 and 2 threads add in a
# different order. The rest split work in fixed chunks, or reduce in an order
# that does not depend on the team size (batch norm's statistics, sgemm's K loop).
NOT_INVARIANT = {"conv2d_backward"}


@pytest.mark.parametrize("name", _kernels.KERNELS)
def test_kernel_is_thread_count_invariant(name, restore_threads):
    """Bitwise equal with 1 and 2 threads, except the kernels in NOT_INVARIANT
    (equal to float32 rounding, and bitwise reproducible for a given thread count)."""
    make = ARGS[name][0]
    for scale in (1, 3, 8):
        results = []
        for threads in (1, 2):
            fc.set_num_threads(threads)
            results.append(_as_tuple(getattr(_kernels, name)(*make(scale))))
        for a, b in zip(*results):
            if a is None or b is None:
                assert a is None and b is None
            elif name in NOT_INVARIANT:
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * np.abs(a).max(), err_msg=name)
            else:
                assert np.array_equal(a, b, equal_nan=True), (name, scale)


CONV_NET = "conv8x3p1-bn-relu-pool2-drop0.25-fc32-relu-fc10"


def _train(threads, arch=CONV_NET, steps=6):
    """A few Adam steps of a small net with batch norm and dropout on the digits."""
    fc.set_num_threads(threads)
    data = fc.data.load_digits()
    fc.manual_seed(7)
    model = fc.models.build_model(arch, (1, 8, 8), 10)
    opt = fc.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    loss_fn = fc.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(data), 64, replace=False)
        losses.append(loss_fn(model(data.X[idx]), data.y[idx]))
        opt.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    return losses, {k: v.copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("threads", [1, 2])
def test_training_is_bitwise_reproducible(threads, restore_threads):
    (losses, state), (losses2, state2) = _train(threads), _train(threads)
    assert losses == losses2
    for k, v in state.items():
        assert np.array_equal(v, state2[k]), k


def test_training_without_convolutions_is_thread_count_invariant(restore_threads):
    (losses1, state1), (losses2, state2) = (_train(t, "fc64-bn-tanh-drop0.25-fc32-elu-fc10") for t in (1, 2))
    assert losses1 == losses2
    for k, v in state1.items():
        assert np.array_equal(v, state2[k]), k


def test_training_with_1_and_2_threads_agrees_closely(restore_threads):
    """Not bitwise: conv2d_backward's dweight is summed in a thread-count dependent order."""
    (losses1, _), (losses2, _) = _train(1), _train(2)
    np.testing.assert_allclose(losses1, losses2, rtol=1e-3)


def test_set_num_threads_accepts_numpy_ints_and_refuses_the_rest(restore_threads):
    fc.set_num_threads(np.int64(2))
    assert fc.get_num_threads() in (1, 2)  # 1 in a build without OpenMP
    for bad, exc in [(None, TypeError), ("2", TypeError), (2.0, TypeError), (np.float32(2), TypeError),
                     (np.bool_(True), TypeError), (2**64, ValueError), (-(2**64), ValueError),
                     (np.int64(-1), ValueError), (1025, ValueError)]:
        with pytest.raises(exc, match=r"set_num_threads: `n` must .*; got"):
            fc.set_num_threads(bad)
