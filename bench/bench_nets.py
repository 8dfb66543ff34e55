"""Whole-network workloads of ../shared/workloads.md: one SGD training step of
`lenet` (batch 64) and `cifar_small` (batch 128), and `cifar_small`
inference at batch 1 and 256; fastconv against PyTorch on the CPU in
channels_last (its fastest configuration) and NCHW, same weights and batches.
"""

import numpy as np
import pytest

import fastconv as fc

try:
    import torch
except ImportError:
    torch = None

LENET_GFLOP, CIFAR_GFLOP = 0.284, 7.7


def lenet(lib):
    return lib.Sequential(
        lib.Conv2d(1, 8, 5, padding=2), lib.ReLU(), lib.MaxPool2d(2),
        lib.Conv2d(8, 16, 5, padding=2), lib.ReLU(), lib.MaxPool2d(2),
        lib.Flatten(), lib.Linear(16 * 7 * 7, 10))


def cifar_small(lib):
    return lib.Sequential(
        lib.Conv2d(3, 32, 3, padding=1), lib.ReLU(), lib.MaxPool2d(2),
        lib.Conv2d(32, 64, 3, padding=1), lib.ReLU(), lib.MaxPool2d(2),
        lib.Conv2d(64, 128, 3, padding=1), lib.ReLU(), lib.MaxPool2d(2),
        lib.Flatten(), lib.Linear(2048, 10))


NETS = {"lenet": (lenet, (64, 1, 28, 28), LENET_GFLOP), "cifar_small": (cifar_small, (128, 3, 32, 32), CIFAR_GFLOP)}
IMPLS = ["fastconv", "torch_cl", "torch_nchw"]


def _batch(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(np.float32), rng.integers(0, 10, shape[0])


def _fastconv_step(build, x, y):
    fc.manual_seed(0)
    model = build(fc)
    # As the PyTorch peers, whose input batch does not require grad: no dL/dx
    # for the images.
    model[0].needs_input_grad = False
    loss_fn = fc.SoftmaxCrossEntropy()
    opt = fc.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    return step


def _torch_model(build, impl, x):
    if torch is None:
        pytest.skip("PyTorch is not installed")
    model = build(torch.nn)
    tx = torch.from_numpy(x)
    if impl == "torch_cl":
        model = model.to(memory_format=torch.channels_last)
        tx = tx.contiguous(memory_format=torch.channels_last)
    return model, tx


def _torch_step(build, impl, x, y):
    model, tx = _torch_model(build, impl, x)
    ty = torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = loss_fn(model(tx), ty)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("net", list(NETS))
def test_train_step(benchmark, record, net, impl):
    build, shape, gflop = NETS[net]
    x, y = _batch(shape)
    step = _fastconv_step(build, x, y) if impl == "fastconv" else _torch_step(build, impl, x, y)
    step()  # warm-up: workspaces, oneDNN primitives
    benchmark.pedantic(step, rounds=15, warmup_rounds=2)
    record(impl, flop=gflop * 1e9, workload=f"{net} train step b{shape[0]}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", [1, 256])
def test_cifar_small_inference(benchmark, record, batch, impl):
    x, _ = _batch((batch, 3, 32, 32))
    if impl == "fastconv":
        model = cifar_small(fc).eval()
        run = lambda: model(x)  # noqa: E731
    else:
        model, tx = _torch_model(cifar_small, impl, x)
        model.eval()

        def run():
            with torch.no_grad():
                return model(tx)
    run()
    benchmark.pedantic(run, rounds=30 if batch == 1 else 10, warmup_rounds=2)
    record(impl, flop=CIFAR_GFLOP / 3 * 1e9 * batch / 128, workload=f"cifar_small inference b{batch}")
