"""fc.export_onnx and fastconv export: the ONNX file, run by onnxruntime, gives fastconv's
outputs (float32 tolerance) at several batch sizes, on the built-in architectures and on
random layer stacks. Skipped, saying why, without onnx or onnxruntime."""

import json
import os
import sys

import numpy as np
import pytest
from conftest import layer_stacks, rand
from hypothesis import given
from hypothesis import strategies as st

import fastconv as fc
from fastconv.tools import cli
from fastconv.models import ARCHS, build_model

onnx = pytest.importorskip("onnx", reason="fc.export_onnx needs onnx: pip install 'fastconv[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the parity tests run the files with onnxruntime: "
                          "pip install onnxruntime")


def run_onnx(path, x):
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # the tests share the CPUs
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def assert_parity(model, input_shape, path, seed=0, batches=(1, 5)):
    """The exported model agrees with ``model`` in eval mode at each batch size."""
    fc.export_onnx(model, path, input_shape)
    rng = np.random.default_rng(seed)
    for n in batches:
        x = rand(rng, n, *input_shape)
        ours = model(x)
        theirs = run_onnx(path, x)
        assert theirs.shape == ours.shape
        np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ours).max())))


SHAPES = {"digits": (1, 8, 8), "lenet": (1, 28, 28), "lenet5": (1, 28, 28), "cifar_small": (3, 32, 32),
          "mlp": (2, 5, 5), "vgg11": (3, 32, 32)}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_builtin_architectures_match_onnxruntime(arch, tmp_path):
    assert arch in SHAPES, f"add an input shape for the new architecture {arch!r}"
    model = build_model(arch, SHAPES[arch], 10, dropout=0.3).eval()
    assert_parity(model, SHAPES[arch], tmp_path / "m.onnx")


@pytest.mark.parametrize("depth", [20, 32])
def test_resnets_match_onnxruntime(depth, tmp_path):
    """Residual blocks (identity and projection shortcuts), batch norm, the global pool."""
    fc.manual_seed(depth)
    model = _randomize(fc.models.resnet(depth, num_classes=10), np.random.default_rng(depth)).eval()
    assert_parity(model, (3, 32, 32), tmp_path / "m.onnx")


def test_concat_and_adaptive_pools_match_onnxruntime(tmp_path):
    fc.manual_seed(0)
    model = fc.Sequential(
        fc.Concat(fc.Conv2d(3, 4, 1), fc.Sequential(fc.Conv2d(3, 2, 3, padding=1), fc.ReLU())),
        fc.Residual(fc.Conv2d(6, 6, 3, padding=1)),
        fc.AdaptiveMaxPool2d((4, 2)), fc.AdaptiveAvgPool2d(1), fc.Flatten(), fc.Linear(6, 3))
    assert_parity(model, (3, 8, 6), tmp_path / "m.onnx")


@pytest.mark.parametrize("conv", [dict(padding=2, dilation=2, groups=2), dict(padding=1, groups=4),
                                  dict(kernel_size=4, padding="same"), dict(kernel_size=2, padding="same", dilation=3)],
                         ids=["dilated-grouped", "depthwise", "same-even", "same-even-dilated"])
def test_grouped_dilated_and_same_padded_convs_match_onnxruntime(conv, tmp_path):
    fc.manual_seed(0)
    layer = fc.Conv2d(4, 4, **{"kernel_size": 3, **conv})
    oh, ow = layer.output_size(8, 7)
    model = fc.Sequential(layer, fc.Flatten(), fc.Linear(4 * oh * ow, 3))
    assert_parity(model, (4, 8, 7), tmp_path / "m.onnx")


def test_uneven_adaptive_pool_is_refused_naming_the_layer(tmp_path):
    model = fc.Sequential(fc.AdaptiveAvgPool2d(3), fc.Flatten(), fc.Linear(9, 2))
    with pytest.raises(ValueError, match=r"layer 0 \(AdaptiveAvgPool2d\) pools 8x8 to 3x3: uneven windows"):
        fc.export_onnx(model, tmp_path / "m.onnx", (1, 8, 8))


def _randomize(model, rng):
    """Biases and batch-norm statistics away from their initial zeros and ones."""
    for m in model.modules():
        for name in ("bias", "weight"):
            p = getattr(m, name, None)
            if isinstance(p, fc.Parameter) and (name == "bias" or isinstance(m, fc.BatchNorm1d | fc.BatchNorm2d)):
                p.data[:] = rand(rng, *p.data.shape)
        if getattr(m, "running_var", None) is not None:
            m.running_mean[:] = rand(rng, m.num_features)
            m.running_var[:] = rng.uniform(0.2, 3, m.num_features).astype(np.float32)
    return model


@given(stack=layer_stacks(fc, maxout=True), seed=st.integers(0, 2**31))
def test_random_stacks_match_onnxruntime(stack, seed, tmp_path_factory):
    model, input_shape = stack
    _randomize(model, np.random.default_rng(seed + 1))
    assert_parity(model, input_shape, tmp_path_factory.mktemp("stack") / "m.onnx", seed)


def test_maxpool_padding_is_minus_infinity_as_in_fastconv(tmp_path):
    # All inputs negative: a zero-padded max would give 0 at the borders.
    model = fc.Sequential(fc.MaxPool2d(3, stride=2, padding=1), fc.AvgPool2d(2, stride=1, padding=1))
    fc.export_onnx(model, tmp_path / "m.onnx", (2, 7, 6))
    x = -1 - np.abs(rand(np.random.default_rng(1), 3, 2, 7, 6))
    np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", x), model(x), rtol=1e-6)


POOLS = [  # (layer, input (C, H, W)): each option, ceil_mode where opset 17's ceil_mode would differ
    (fc.MaxPool2d(3, stride=2, padding=1, dilation=2), (2, 9, 8)),
    (fc.MaxPool2d(2, stride=2, padding=1, ceil_mode=True), (2, 5, 5)),          # last window dropped
    (fc.MaxPool2d(3, stride=2, ceil_mode=True), (2, 8, 7)),                      # last windows clipped
    (fc.MaxPool2d((2, 3), stride=(3, 1), padding=1, dilation=2, ceil_mode=True), (2, 6, 8)),  # a pad >= kernel: Pad
    (fc.AvgPool2d(3, stride=2, padding=1, ceil_mode=True), (2, 6, 7)),           # divisor cut at the padding: Pad
    (fc.AvgPool2d(2, stride=2, padding=(1, 0), ceil_mode=True, count_include_pad=False), (2, 5, 7)),  # one of each
    (fc.AvgPool2d((3, 2), stride=2, padding=1, count_include_pad=False), (2, 7, 6)),
    (fc.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, divisor_override=4), (2, 6, 7)),
    (fc.AvgPool2d(2, divisor_override=3), (2, 4, 5)),
]


@pytest.mark.parametrize("pool, input_shape", POOLS, ids=lambda v: repr(v) if isinstance(v, fc.Module) else str(v))
def test_pool_options_match_onnxruntime(pool, input_shape, tmp_path):
    """Values as fastconv's, and output shapes that ONNX's own shape inference agrees with."""
    x = -1 - np.abs(rand(np.random.default_rng(2), 3, *input_shape))  # negative: -inf padding shows
    model = fc.Sequential(pool, fc.Flatten())
    fc.export_onnx(model, tmp_path / "m.onnx", input_shape)
    np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", x), model(x), rtol=1e-6, atol=1e-6)
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "m.onnx")), strict_mode=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim][1:] for v in proto.graph.value_info}
    pooled = next(n.output[0] for n in proto.graph.node if n.op_type in ("MaxPool", "AveragePool", "Div"))
    assert shapes[pooled] == list(pool(x).shape[1:])
    ops = [n.op_type for n in proto.graph.node]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for n in proto.graph.node for a in n.attribute}
    if isinstance(pool, fc.MaxPool2d):
        assert attrs["dilations"] == list(pool.dilation) and attrs["ceil_mode"] == 0
    elif pool.divisor_override is not None:
        assert ops[:2] == ["Conv", "Div"] and attrs["group"] == input_shape[0]
    else:
        assert attrs["count_include_pad"] == int(pool.count_include_pad and "Pad" not in ops)


@pytest.mark.parametrize("layers, input_shape", [
    ([fc.Flatten(2), fc.Linear(12, 3), fc.ReLU(), fc.Maxout(3, 2, pieces=2), fc.Flatten()], (2, 3, 4)),
    ([fc.Flatten(1, 2), fc.BatchNorm1d(6), fc.Flatten()], (2, 3, 4)),
    ([fc.Flatten(-3, -2), fc.Linear(4, 2, bias=False), fc.Flatten()], (2, 3, 4)),
    ([fc.Sequential(fc.Conv2d(2, 3, 3, padding="same"), fc.Sequential(fc.Tanh())), fc.Flatten()], (2, 4, 4)),
    ([fc.Conv2d(2, 3, (1, 5), stride=(2, 1), padding=(0, 2)), fc.MaxPool2d((3, 1), stride=(1, 2), padding=(1, 0)),
      fc.AvgPool2d((2, 3), padding=(1, 1)), fc.Flatten()], (2, 7, 6)),  # height and width apart
    ([fc.Linear(5, 3)], (5,)),
    ([fc.ELU(2.0)], (2, 3, 4)),
])
def test_partial_flattens_and_higher_rank_inputs(layers, input_shape, tmp_path):
    model = fc.Sequential(*layers).eval()
    assert_parity(model, input_shape, tmp_path / "m.onnx")


def test_exports_evaluation_behaviour_and_leaves_the_mode_alone(tmp_path):
    rng = np.random.default_rng(3)
    model = fc.Sequential(fc.Conv2d(1, 2, 3), fc.BatchNorm2d(2), fc.Dropout(0.5), fc.Flatten(), fc.Linear(8, 2))
    _randomize(model, rng).train()
    fc.export_onnx(model, tmp_path / "m.onnx", (1, 4, 4))
    assert all(m.training for m in model.modules())
    assert int(model[1].num_batches_tracked) == 0
    x = rand(rng, 4, 1, 4, 4)
    np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", x), model.eval()(x), rtol=1e-4, atol=1e-5)


def test_the_file_declares_a_dynamic_batch_axis_and_the_class_names(tmp_path):
    model = build_model("digits", (1, 8, 8), 3).eval()
    fc.export_onnx(model, tmp_path / "m.onnx", (1, 8, 8), classes=["a", "b", "c"], metadata={"k": [1, 2]})
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 1, 8, 8]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 3]
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == ["a", "b", "c"] and json.loads(props["k"]) == [1, 2]
    assert run_onnx(tmp_path / "m.onnx", np.zeros((7, 1, 8, 8), np.float32)).shape == (7, 3)


class Custom(fc.Module):
    def forward(self, x):
        return x


@pytest.mark.parametrize("model, input_shape, match", [
    (fc.Sequential(fc.ReLU(), fc.Sequential(fc.Tanh(), Custom())), (3,),
     r"layer 1\.1 \(Custom\) has no ONNX form.*Conv2d"),
    (Custom(), (3,), r"the model \(Custom\) has no ONNX form"),
    (fc.Sequential(fc.BatchNorm1d(3, track_running_stats=False)), (3,), r"layer 0 \(BatchNorm1d\).*track_running"),
    (fc.Sequential(fc.Flatten(0)), (3, 2), r"layer 0 \(Flatten\) flattens the batch axis"),
    (fc.Sequential(fc.Conv2d(3, 2, 3)), (1, 8, 8), r"layer 0 \(Conv2d\) takes \(N, 3, H, W\).*\('N', 1, 8, 8\)"),
    (fc.Sequential(fc.MaxPool2d(5)), (1, 4, 8), r"layer 0 \(MaxPool2d\) has a window of \(5, 5\) larger"),
    (fc.Sequential(fc.Flatten(), fc.Linear(10, 2)), (1, 3, 3), r"layer 1 \(Linear\) takes \(N, \.\.\., 10\)"),
    (fc.Sequential(fc.Linear(3, 2)), (0, 3), r"`input_shape` must be one example's shape.*\(0, 3\)"),
    (fc.Sequential(fc.Linear(3, 2)), (1, 2, 3, 3), r"`input_shape` must be one example's shape"),
])
def test_refusals_name_the_layer_and_its_position(model, input_shape, match, tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match=match):
        fc.export_onnx(model, target, input_shape)
    assert target.read_bytes() == b"old"  # nothing half-written
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_class_names_must_match_the_scores(tmp_path):
    with pytest.raises(ValueError, match=r"`classes` names 2 classes; the model's output has shape \('N', 3\)"):
        fc.export_onnx(fc.Sequential(fc.Linear(4, 3)), tmp_path / "m.onnx", (4,), classes=["a", "b"])
    assert not (tmp_path / "m.onnx").exists()


def test_without_onnx_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"fastconv\[onnx\]"):
        fc.export_onnx(fc.Sequential(fc.ReLU()), tmp_path / "m.onnx", (3,))


def test_export_command_writes_the_checkpoints_model_with_its_metadata(digits_run, tmp_path, capsys):
    out = tmp_path / "digits.onnx"
    assert cli.main(["export", str(digits_run), "--onnx", str(out)]) == 0
    assert f"wrote {out}: input (batch, 1, 8, 8), 10 class scores" in capsys.readouterr().out
    model, meta = fc.models.load_model(digits_run / "best")
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["classes"]) == [str(d) for d in range(10)]
    assert json.loads(props["normalization"]) == meta["user"]["normalization"]
    assert json.loads(props["input_shape"]) == [1, 8, 8]
    x = rand(np.random.default_rng(0), 6, 1, 8, 8)
    np.testing.assert_allclose(run_onnx(out, x), model(x), rtol=1e-4, atol=1e-4)


def test_export_command_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "nothing"), "--onnx", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err
    assert not (tmp_path / "m.onnx").exists()
