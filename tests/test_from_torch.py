"""fc.from_torch: PyTorch Sequentials of the shared layers, and residual and concat blocks (the
twins of fastconv.models.containers(torch.nn), or a class declaring fastconv_container), become
fastconv models with the same weights, buffers, modes, outputs and gradients; what cannot be
mapped is refused by position and name. Skipped without torch."""

import numpy as np
import pytest
from conftest import layer_stacks, rand
from hypothesis import given
from hypothesis import strategies as st

import fastconv as fc

torch = pytest.importorskip("torch", reason="from_torch converts PyTorch modules: pip install torch")
nn = torch.nn


def _close(ours, module, x, tol=1e-4):
    with torch.no_grad():
        theirs = module(torch.from_numpy(x)).numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol * max(1.0, float(np.abs(theirs).max())))


def _randomize(module, rng):
    """Every parameter, and the batch-norm statistics, drawn from ``rng`` (so an example repeats)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rand(rng, *p.shape, scale=0.5)))
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.copy_(torch.from_numpy(rand(rng, m.num_features)))
                m.running_var.copy_(torch.from_numpy(rng.uniform(0.3, 2, m.num_features).astype(np.float32)))
                m.num_batches_tracked.fill_(7)
    return module


def lenet_torch(classes=10):
    features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(6, 16, 5), nn.LeakyReLU(0.1), nn.AvgPool2d(2))
    head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(16 * 5 * 5, 84), nn.BatchNorm1d(84), nn.ELU(0.7),
                         nn.Linear(84, 32), nn.Tanh(), nn.Linear(32, classes), nn.Sigmoid())
    return nn.Sequential(features, head)


def test_nested_lenet_matches_torch_in_eval_mode():
    torch.manual_seed(0)
    module = lenet_torch().eval()
    _randomize(module, np.random.default_rng(0))
    model = fc.from_torch(module)
    assert isinstance(model, fc.Sequential) and isinstance(model[0], fc.Sequential) and len(model[1]) == 9
    assert not any(m.training for m in model.modules())
    x = rand(np.random.default_rng(1), 4, 1, 28, 28)
    _close(model(x), module, x)
    # the same arrays under the same keys: a fastconv state_dict loads into the torch module
    theirs = {k: v.numpy() for k, v in module.state_dict().items()}
    ours = model.state_dict()
    assert list(ours) == list(theirs)
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key])


def test_training_mode_is_kept_so_batchnorm_uses_batch_statistics_as_torch():
    torch.manual_seed(1)
    module = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3, momentum=None), nn.ReLU(),
                           nn.Flatten(), nn.Linear(3 * 4 * 4, 4), nn.BatchNorm1d(4, momentum=0.3)).train()
    model = fc.from_torch(module)
    assert all(m.training for m in model.modules())
    x = rand(np.random.default_rng(2), 6, 2, 8, 8)
    _close(model(x), module, x)  # torch's forward updated its running statistics; compare them too
    for key, value in module.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[key], value.numpy(), rtol=1e-5, atol=1e-6)


def test_mixed_modes_are_copied_layer_by_layer():
    module = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(3)).eval()
    module[0].train()
    model = fc.from_torch(module)
    assert [m.training for m in model.modules()] == [False, True, False]


@given(stack=layer_stacks(nn), seed=st.integers(0, 2**31))
def test_random_torch_stacks_match(stack, seed):
    module, shape = stack
    _randomize(module, np.random.default_rng(seed + 1))
    x = rand(np.random.default_rng(seed), 3, *shape)
    _close(fc.from_torch(module)(x), module, x)


def test_a_fastconv_model_round_trips_through_torch():
    model = fc.models.build_model("conv8x3p1-bn-relu-pool2-conv8x3-tanh-fc16-bn-elu-fc5", (2, 10, 10), 5).eval()
    rng = np.random.default_rng(4)
    for p in model.parameters():
        p.data[:] = rand(rng, *p.data.shape, scale=0.3)
    module = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(8, 8, 3), nn.Tanh(), nn.Flatten(), nn.Linear(72, 16), nn.BatchNorm1d(16),
                           nn.ELU(), nn.Linear(16, 5)).eval()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    back = fc.from_torch(module)
    x = rand(rng, 5, 2, 10, 10)
    np.testing.assert_array_equal(back(x), model(x))


def test_padding_strings_and_tuples_are_kept():
    module = nn.Sequential(nn.Conv2d(1, 2, (3, 5), padding="same"), nn.Conv2d(2, 2, 3, stride=(2, 1), padding=(0, 2)),
                           nn.Conv2d(2, 1, 2, padding="valid")).eval()
    model = fc.from_torch(module)
    assert [m.padding for m in model] == [(1, 2), (0, 2), (0, 0)] and model[1].stride == (2, 1)
    x = rand(np.random.default_rng(5), 2, 1, 9, 7)
    _close(model(x), module, x)


def test_grouped_dilated_depthwise_and_same_padded_convs():
    module = nn.Sequential(nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
                           nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.Conv2d(6, 2, 4, padding="same")).eval()
    model = fc.from_torch(module)
    assert (model[0].groups, model[0].dilation, model[2].groups) == (2, (2, 2), 6)
    x = rand(np.random.default_rng(6), 2, 4, 9, 7)
    _close(model(x), module, x)


def test_pool_options_are_mapped():
    module = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1, dilation=(2, 1), ceil_mode=True),
                           nn.AvgPool2d((2, 3), stride=2, padding=1, ceil_mode=True, count_include_pad=False),
                           nn.AvgPool2d(2, stride=1, divisor_override=3)).eval()
    model = fc.from_torch(module)
    assert (model[0].dilation, model[0].ceil_mode) == ((2, 1), True)
    assert (model[1].ceil_mode, model[1].count_include_pad, model[2].divisor_override) == (True, False, 3)
    assert repr(model[2]) == "AvgPool2d(kernel_size=(2, 2), stride=(1, 1), padding=(0, 0), divisor_override=3)"
    x = rand(np.random.default_rng(7), 2, 3, 12, 11)
    _close(model(x), module, x, tol=1e-6)


@pytest.mark.parametrize("module, match", [
    (nn.Sequential(nn.ReLU(), nn.Sequential(nn.Linear(2, 2), nn.GELU())),
     r"layer 1\.1 \(GELU\) has no fastconv equivalent \(torch\.nn layers mapped: .*Conv2d"),
    (nn.Conv2d(1, 1, 3, padding_mode="reflect"), r"the model \(Conv2d\): `padding_mode` must be 'zeros'.*'reflect'"),
    (nn.Sequential(nn.MaxPool2d(2, return_indices=True)), r"layer 0 \(MaxPool2d\): `return_indices` must be False"),
    (nn.Sequential(nn.ReLU(), nn.AvgPool2d(2, divisor_override=-2)),
     r"layer 1 \(AvgPool2d\): AvgPool2d: `divisor_override` must be None or >= 1; got -2"),
    (nn.Sequential(nn.Dropout2d(0.1)), r"layer 0 \(Dropout2d\) has no fastconv equivalent"),
    (nn.Sequential(nn.AdaptiveMaxPool2d(2, return_indices=True)), r"layer 0 \(AdaptiveMaxPool2d\): `return_indices`"),
    (nn.Sequential(nn.AdaptiveAvgPool2d((None, 2))), r"layer 0 \(AdaptiveAvgPool2d\): .*output_size"),
])
def test_refusals_name_the_first_layer_and_option(module, match):
    with pytest.raises(ValueError, match=match):
        fc.from_torch(module)


def test_not_a_torch_module():
    with pytest.raises(TypeError, match=r"`module` must be a torch\.nn\.Module; got Sequential"):
        fc.from_torch(fc.Sequential())


def test_from_torch_then_onnx_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the ONNX leg needs onnxruntime")
    pytest.importorskip("onnx", reason="the ONNX leg needs onnx")
    torch.manual_seed(3)
    module = lenet_torch(4).eval()
    _randomize(module, np.random.default_rng(3))
    fc.export_onnx(fc.from_torch(module), tmp_path / "m.onnx", (1, 28, 28))
    x = rand(np.random.default_rng(6), 2, 1, 28, 28)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    _close(session.run(None, {"input": x})[0], module, x)


# -- residual and concat blocks ------------------------------------------------------------------

Residual, Concat = fc.models.containers(nn)


def _grads_close(model, module, x, dy, tol=1e-4):
    """A training step's forward, dx, every parameter gradient and the moved batch-norm statistics
    of ``model`` against those of ``module``, each at the scale of torch's values."""
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = module(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(model(x), ty.detach().numpy(), rtol=tol, atol=tol * float(ty.detach().abs().max()))
    dx = model.backward(dy)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=tol, atol=tol * float(tx.grad.abs().max()))
    theirs = {name: p.grad.numpy() for name, p in module.named_parameters()}
    scale = max(float(np.abs(g).max()) for g in theirs.values())  # a batch norm's weight gradient cancels
    assert [name for name, _ in model.named_parameters()] == list(theirs)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, theirs[name], rtol=tol, atol=tol * scale / 10, err_msg=name)
    for name, b in module.named_buffers():
        np.testing.assert_allclose(model.state_dict()[name], b.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("depth", [20, 32])
def test_torch_resnet_twin_round_trips_in_eval_mode(depth):
    torch.manual_seed(depth)
    module = _randomize(fc.models.resnet(depth, lib=nn), np.random.default_rng(depth)).eval()
    model = fc.from_torch(module)
    blocks = [m for m in model if isinstance(m, fc.Residual)]
    assert len(blocks) == 3 * (depth - 2) // 6 and sum(b.shortcut is not None for b in blocks) == 2
    assert not any(m.training for m in model.modules())
    assert list(model.state_dict()) == list(module.state_dict())  # the same keys, "3.body.0.weight"
    x = rand(np.random.default_rng(1), 3, 3, 32, 32)
    _close(model(x), module, x)


def test_torch_resnet20_twin_gives_torchs_gradients_in_a_training_step():
    torch.manual_seed(2)
    module = _randomize(fc.models.resnet20(lib=nn), np.random.default_rng(2)).train()
    model = fc.from_torch(module)
    assert all(m.training for m in model.modules())
    rng = np.random.default_rng(3)
    _grads_close(model, module, rand(rng, 4, 3, 16, 16), rand(rng, 4, 10))


def test_torch_resnet20_twin_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the ONNX leg needs onnxruntime")
    pytest.importorskip("onnx", reason="the ONNX leg needs onnx")
    torch.manual_seed(4)
    module = _randomize(fc.models.resnet20(lib=nn), np.random.default_rng(4)).eval()
    fc.export_onnx(fc.from_torch(module), tmp_path / "r.onnx", (3, 32, 32))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(tmp_path / "r.onnx"), options, providers=["CPUExecutionProvider"])
    x = rand(np.random.default_rng(5), 2, 3, 32, 32)
    _close(session.run(None, {"input": x})[0], module, x)


def _inception(c=3):
    return Concat(nn.Conv2d(c, 2, 1), nn.Sequential(nn.Conv2d(c, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()),
                  nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(c, 4, 1)))


def test_concat_twin_maps_to_concat_with_the_same_keys_outputs_and_gradients():
    torch.manual_seed(5)
    module = _randomize(nn.Sequential(_inception(), nn.ReLU(), nn.Conv2d(9, 2, 1)), np.random.default_rng(5))
    model = fc.from_torch(module.train())
    assert isinstance(model[0], fc.Concat) and len(model[0]) == 3 and model[0].dim == 1
    assert list(model.state_dict()) == list(module.state_dict())
    rng = np.random.default_rng(6)
    _grads_close(model, module, rand(rng, 2, 3, 5, 4), rand(rng, 2, 2, 5, 4))
    x = rand(rng, 2, 3, 5, 4)
    _close(fc.from_torch(module.eval())(x), module, x)
    along = fc.from_torch(Concat(nn.Flatten(2), nn.ReLU(), dim=-1))
    assert along.dim == -1
    x = rand(rng, 2, 3, 4, 5)
    _close(along(x.reshape(2, 3, 20)), Concat(nn.Flatten(2), nn.ReLU(), dim=-1), x.reshape(2, 3, 20))


class Block(nn.Module):
    """A user's basic block: relu(body(x) + shortcut(x)), declared so."""
    fastconv_container = "residual_relu"

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def test_a_declared_user_block_with_relu_and_identity_shortcut():
    torch.manual_seed(7)
    module = _randomize(nn.Sequential(Block(3, 4, 2), Block(4, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(4, 3)), np.random.default_rng(7))
    model = fc.from_torch(module)
    first, second = model[0], model[1]
    assert [type(m).__name__ for m in first] == ["Residual", "ReLU"] and second[0].shortcut is None
    # one level more than torch's keys: "0.0.body.0.weight" for "0.body.0.weight"
    assert [k.replace(".0.", ".", 1) for k in model.state_dict()] == list(module.state_dict())
    rng = np.random.default_rng(8)
    x, dy = rand(rng, 3, 3, 7, 6), rand(rng, 3, 3)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    module(tx).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(model(x), module(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.backward(dy), tx.grad.numpy(), rtol=1e-4, atol=1e-4 * float(tx.grad.abs().max()))
    ours = {k.replace(".0.", ".", 1): p for k, p in model.named_parameters()}
    for name, p in module.named_parameters():
        np.testing.assert_allclose(ours[name].grad, p.grad.numpy(), rtol=1e-4, atol=1e-4 * float(p.grad.abs().max()),
                                   err_msg=name)
    _close(fc.from_torch(module.eval())(x), module, x)
    assert not any(m.training for m in fc.from_torch(module).modules())


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.body(x) * 2


def _declared(pattern, **children):
    cls = type("Declared", (nn.Module,), {"fastconv_container": pattern})
    m = cls()
    for name, child in children.items():
        setattr(m, name, child)
    return m


def test_a_module_with_its_own_forward_is_refused_by_class_path_and_the_patterns():
    with pytest.raises(ValueError) as e:
        fc.from_torch(nn.Sequential(nn.ReLU(), nn.Sequential(nn.ReLU(), Custom())))
    message = str(e.value)
    assert "from_torch: layer 1.1 (Custom) is a module of its own (test_from_torch.Custom)" in message
    assert "cannot read its forward" in message and "declare fastconv_container = 'residual'" in message
    assert "fastconv_container = 'residual' | 'residual_relu' | 'concat'" in message and "Conv2d" in message
    with pytest.raises(ValueError, match=r"the model \(Custom\) is a module of its own"):
        fc.from_torch(Custom())
    with pytest.raises(ValueError, match=r"layer 0.body \(Custom\) is a module of its own"):
        fc.from_torch(nn.Sequential(Residual(Custom())))


@pytest.mark.parametrize("module, match", [
    (_declared("residual", conv=nn.Conv2d(1, 1, 1)),
     r"the model \(Declared\) declares fastconv_container = 'residual', so its children must be `body` and, "
     r"optionally, `shortcut`; it has \['conv'\]"),
    (_declared("residual_relu", body=nn.ReLU(), shortcut=nn.ReLU(), extra=nn.ReLU()), r"it has \['body', 'shortcut', "),
    (_declared("residual", body=nn.ReLU(), scale=nn.Parameter(torch.ones(1))),
     r"holds parameters or buffers of its own \(scale\)"),
    (_declared("concat"), r"the model \(Declared\): Concat: needs at least one branch"),
    (_declared("residual+relu", body=nn.ReLU()),
     r"`fastconv_container` must be one of 'residual', 'residual_relu', 'concat'; got 'residual\+relu'"),
    (nn.Sequential(Residual(nn.Sequential(nn.GELU()))), r"layer 0\.body\.0 \(GELU\) has no fastconv equivalent"),
])
def test_declared_blocks_are_checked(module, match):
    with pytest.raises(ValueError, match=match):
        fc.from_torch(module)
