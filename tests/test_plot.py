"""fastconv.tools.plot: PNG pictures of a run; a clear message when matplotlib is missing."""

import sys

import numpy as np
import pytest

import fastconv as fc
from fastconv import data as D
from fastconv.tools import plot
from fastconv.train import Trainer
from fastconv.models import build_model

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run():
    train, val = D.train_val_split(D.load_digits()[:300], 0.3, seed=0)
    fc.manual_seed(0)
    model = build_model("conv6x3p1-relu-pool2-fc10", (1, 8, 8), 10)
    trainer = Trainer(model, fc.SoftmaxCrossEntropy(), fc.SGD(model.parameters(), lr=0.05, momentum=0.9),
                      batch_size=32, verbose=False, progress=False)
    return trainer.fit(train, val, epochs=2), model


def read_png(path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    raw = path.read_bytes()
    assert raw[:8] == PNG and len(raw) > 1000
    return matplotlib.image.imread(str(path))


def test_training_curves(run, tmp_path):
    pytest.importorskip("matplotlib")
    history, _ = run
    out = plot.training_curves(history, tmp_path / "sub" / "curves.png")
    assert out == str(tmp_path / "sub" / "curves.png")
    image = read_png(tmp_path / "sub" / "curves.png")
    assert image.shape[0] >= 300 and image.shape[1] >= 800 and image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0.05  # something was drawn


def test_filters_gray_and_rgb(run, tmp_path):
    pytest.importorskip("matplotlib")
    _, model = run
    plot.filters(model, tmp_path / "f.png")
    assert read_png(tmp_path / "f.png").ndim == 3
    fc.manual_seed(0)
    rgb = build_model("conv12x5p2-relu-pool2-fc10", (3, 16, 16), 10)
    plot.filters(rgb, tmp_path / "rgb.png")
    read_png(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"filters: the model has no Conv2d layer to show"):
        plot.filters(build_model("fc10", (1, 8, 8), 10), tmp_path / "none.png")
    with pytest.raises(TypeError, match=r"`model` must be a fastconv Module; got dict"):
        plot.filters({}, tmp_path / "none.png")


def test_layer_stats(run, tmp_path):
    pytest.importorskip("matplotlib")
    history, _ = run
    plot.layer_stats(history, tmp_path / "stats.png")
    read_png(tmp_path / "stats.png")
    with pytest.raises(ValueError, match=r"the history has no layer statistics"):
        plot.layer_stats({**history, "stats": []}, tmp_path / "x.png")
    with pytest.raises(TypeError, match=r"`history` must be the dict that Trainer.fit returns"):
        plot.training_curves([1, 2], tmp_path / "x.png")


def test_without_matplotlib_the_message_says_how_to_install(run, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib..." fail
    history, model = run
    assert not plot.available()
    with pytest.raises(plot.PlotUnavailable, match=r'needs matplotlib, which is not installed: pip install '
                                                   r'"fastconv\[plot\]"'):
        plot.training_curves(history, tmp_path / "c.png")
    with pytest.raises(ImportError):
        plot.filters(model, tmp_path / "f.png")
    assert not (tmp_path / "c.png").exists()


def test_smoothing_is_a_trailing_moving_average():
    np.testing.assert_allclose(plot._smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1, 2, 4, 6])
