"""fc.from_torch: PyTorch Sequentials of the shared layers become fastconv models with the same
weights, buffers, modes and outputs; what cannot be mapped is refused by position and name.
Skipped without torch."""

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
