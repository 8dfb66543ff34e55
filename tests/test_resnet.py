"""The CIFAR ResNets and vgg11 of fastconv.models against their PyTorch twins
(outputs in eval and train mode, one SGD step from the same weights), their
init, batch-norm folding, AdamW and the softmax loss's options against
PyTorch, and `fastconv train --arch resnet20` with load_model."""

import numpy as np
import pytest
from conftest import rand

import fastconv as fc
from fastconv.models import build_model, load_model, resnet
from fastconv.tools import cli


def _twin(torch, model, build):
    twin = build(torch.nn)
    twin.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in model.state_dict().items()})
    return twin


def _close(got, want, what, rtol=1e-4):
    want = np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * (float(np.abs(want).max()) + 1e-6), err_msg=what)


@pytest.mark.parametrize("depth,params", [(20, 272_474), (32, 466_906), (56, 855_770)])
def test_resnet_structure(depth, params):
    fc.manual_seed(0)
    model = resnet(depth)
    assert sum(p.data.size for p in model.parameters()) == params  # He et al. with 1x1 projections + BN
    blocks = [m for m in model if isinstance(m, fc.Residual)]
    assert len(blocks) == 3 * ((depth - 2) // 6)
    assert [b.shortcut is not None for b in blocks].count(True) == 2  # the starts of stages 2 and 3
    assert [type(m).__name__ for m in model][-3:] == ["AdaptiveAvgPool2d", "Flatten", "Linear"]
    convs = [m for m in model.modules() if isinstance(m, fc.Conv2d)]
    assert all(c.bias is None for c in convs)
    big = max(convs, key=lambda c: c.weight.data.size)  # 64 x 64 x 3 x 3: fan_out 576
    assert np.std(big.weight.data) == pytest.approx(np.sqrt(2 / 576), rel=0.05)
    bns = [m for m in model.modules() if isinstance(m, fc.BatchNorm2d)]
    assert len(bns) == len(convs) and all((b.weight.data == 1).all() and (b.bias.data == 0).all() for b in bns)


def test_resnet_arguments():
    for depth in (19, 2, 20.0, True):
        with pytest.raises(ValueError, match="resnet: `depth` must be 6n \\+ 2"):
            resnet(depth)
    with pytest.raises(ValueError, match="arch: resnet20 needs an image"):
        build_model("resnet20", (64,), 10)


def test_resnet20_matches_torch_in_eval_and_train_mode(isa_threads, torch, rng):
    fc.manual_seed(1)
    model = fc.models.resnet20(num_classes=10)
    twin = _twin(torch, model, lambda lib: fc.models.resnet20(10, lib=lib))
    x = rand(rng, 4, 3, 32, 32)
    for mode in (True, False, True):
        model.train(mode), twin.train(mode)
        with torch.no_grad():
            want = twin(torch.from_numpy(x)).numpy()
        _close(model(x), want, f"training={mode}")
    buffers = dict(twin.named_buffers())
    for name, b in model.named_buffers():  # two training forwards moved the running statistics alike
        _close(b, buffers[name].numpy(), name, rtol=1e-5)


def test_resnet20_sgd_step_matches_torch(isa_threads, torch, rng):
    fc.manual_seed(2)
    model = fc.models.resnet20()
    # PyTorch in float32, the peer, and in float64, the yardstick of float32 rounding.
    twins = [_twin(torch, model, lambda lib: fc.models.resnet20(lib=lib)).to(dtype)
             for dtype in (torch.float32, torch.float64)]
    x, y = rand(rng, 8, 3, 32, 32), rng.integers(0, 10, 8)
    opt = fc.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    loss_fn = fc.SoftmaxCrossEntropy()
    loss = loss_fn(model(x), y)
    opt.zero_grad()
    model.backward(loss_fn.backward())
    opt.step()
    losses = []
    for twin in twins:
        topt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        tloss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x).to(twin[0].weight.dtype)),
                                                  torch.from_numpy(y))
        topt.zero_grad()
        tloss.backward()
        topt.step()
        losses.append(tloss.item())
    assert loss == pytest.approx(losses[0], rel=1e-5)
    ours32, exact = (dict(t.named_parameters()) for t in twins)
    for name, p in model.named_parameters():
        # Float32 gradients through 20 layers and batch norms over 8 examples are ~1e-4 off
        # the float64 ones, PyTorch's too: fastconv's step must be as close to PyTorch's as
        # PyTorch's float32 step is to its float64 one (with room for the two roundings),
        # and within float32 rounding of the weights.
        want, ideal = ours32[name].detach().numpy(), exact[name].detach().numpy()
        update = float(np.abs(ideal - before[name]).max())
        rounding = float(np.abs(want - ideal).max())
        assert update > 0, name
        np.testing.assert_allclose(p.data, want, rtol=1e-6, atol=4 * rounding + 1e-3 * update, err_msg=name)
    with torch.no_grad():  # the stepped models agree too
        after = torch.nn.functional.cross_entropy(twins[0](torch.from_numpy(x)), torch.from_numpy(y)).item()
    assert loss_fn(model(x), y) == pytest.approx(after, rel=1e-4)


def test_vgg11_matches_torch(torch, rng):
    fc.manual_seed(3)
    model = fc.models.vgg11(num_classes=10)
    assert sum(isinstance(m, fc.Conv2d) for m in model) == 8 and sum(isinstance(m, fc.MaxPool2d) for m in model) == 5
    twin = _twin(torch, model, lambda lib: fc.models.vgg11(10, lib=lib))
    x = rand(rng, 2, 3, 32, 32)
    for mode in (True, False):
        model.train(mode), twin.train(mode)
        with torch.no_grad():
            _close(model(x), twin(torch.from_numpy(x)).numpy(), f"training={mode}")


def test_fuse_batchnorm(isa_threads, rng):
    fc.manual_seed(4)
    model = fc.models.resnet20()
    x = rand(rng, 4, 3, 16, 16)
    model(rand(rng, 8, 3, 16, 16))  # move the running statistics off their initial values
    for bn in (m for m in model.modules() if isinstance(m, fc.BatchNorm2d)):
        bn.weight.data[...] = rng.uniform(0.5, 2, bn.weight.shape)
        bn.bias.data[...] = rng.standard_normal(bn.bias.shape)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    fused = fc.fuse_batchnorm(model)
    assert model.training and all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())
    assert not fused.training and not any(isinstance(m, fc.BatchNorm2d) for m in fused.modules())
    keys = set(fused.state_dict())
    assert {"0.weight", "0.bias", "3.body.0.bias", "3.body.3.weight", "9.shortcut.0.bias"} <= keys
    assert not any("running" in k for k in keys) and "3.body.1.weight" not in keys
    _close(fused(x), model.eval()(x), "fused vs eval", rtol=1e-4)
    kept = fc.Sequential(fc.Conv2d(3, 4, 3), fc.BatchNorm2d(4, track_running_stats=False))
    assert isinstance(fc.fuse_batchnorm(kept)[1], fc.BatchNorm2d)  # batch statistics: nothing to fold
    with pytest.raises(TypeError, match="fuse_batchnorm: `model` must be a Module"):
        fc.fuse_batchnorm("model")


def test_adamw_matches_torch(torch, rng):
    w = rand(rng, 6, 5)
    for kwargs in ({}, {"weight_decay": 0.1, "amsgrad": True, "lr": 0.05}):
        p, tp = fc.Parameter(w), torch.nn.Parameter(torch.from_numpy(w.copy()))
        opt, topt = fc.AdamW([p], **kwargs), torch.optim.AdamW([tp], **kwargs)
        assert opt.defaults["weight_decay"] == topt.defaults["weight_decay"]
        for _ in range(4):
            g = rand(rng, 6, 5)
            p.grad[...] = g
            tp.grad = torch.from_numpy(g.copy())
            opt.step(), topt.step()
        _close(p.data, tp.detach().numpy(), str(kwargs), rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_softmax_cross_entropy_matches_torch(torch, rng, reduction, smoothing):
    scores, y = rand(rng, 9, 6, scale=3), rng.integers(0, 6, 9)
    loss = fc.SoftmaxCrossEntropy(reduction, label_smoothing=smoothing)
    ts = torch.from_numpy(scores.copy()).requires_grad_()
    tl = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)(ts, torch.from_numpy(y))
    value = loss(scores, y)
    _close(np.asarray(value), tl.detach().numpy(), "loss", rtol=1e-5)
    dloss = rand(rng, 9) if reduction == "none" else None
    (tl * torch.from_numpy(dloss)).sum().backward() if dloss is not None else tl.backward()
    _close(loss.backward(dloss), ts.grad.numpy(), "dscores", rtol=1e-5)
    if reduction == "none":
        assert value.shape == (9,) and value.dtype == np.float32
        _close(loss.backward(), np.asarray(loss.backward(np.ones(9, np.float32))), "default dloss")


def test_softmax_cross_entropy_arguments():
    with pytest.raises(ValueError, match=r"`reduction` must be one of \('mean', 'sum', 'none'\); got 'avg'"):
        fc.SoftmaxCrossEntropy("avg")
    with pytest.raises(ValueError, match=r"`label_smoothing` must be a finite number in \[0, 1\]; got 1.5"):
        fc.SoftmaxCrossEntropy(label_smoothing=1.5)
    loss = fc.SoftmaxCrossEntropy()
    loss(np.zeros((2, 3), np.float32), [0, 1])
    with pytest.raises(ValueError, match="`dloss` is for reduction='none'"):
        loss.backward(np.ones(2, np.float32))
    with pytest.raises(ValueError, match="MulticlassSVM: `reduction` must be one of \\('mean', 'sum'\\)"):
        fc.MulticlassSVM(reduction="none")


def test_train_resnet20_from_the_command_line_and_load_it(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (60, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "tiny.npz", X=X, y=np.arange(60) % 3)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--data", "tiny.npz", "--arch", "resnet20", "--epochs", "1", "--batch-size", "16",
                     "--threads", "1", "--no-plots", "--out", "run"]) == 0
    assert "model resnet20: 272," in capsys.readouterr().out
    model, meta = load_model(tmp_path / "run" / "best")
    assert meta["user"]["arch"] == "resnet20" and isinstance(model[3], fc.Residual) and not model.training
    assert model(X[:2]).shape == (2, 3)
