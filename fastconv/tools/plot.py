"""Pictures of a training run, as PNG files: curves, first-layer filters, layer statistics.

Needs matplotlib, an optional extra: ``pip install "fastconv[plot]"``. Without
it these functions raise :class:`PlotUnavailable` (an ImportError) saying so;
training itself never needs matplotlib. Figures are drawn with the Agg
canvas directly (no pyplot, no global backend switch) and written atomically.

>>> history = trainer.fit(train, val, epochs=10)
>>> fc.plot.training_curves(history, "runs/x/curves.png")
>>> fc.plot.filters(model, "runs/x/filters.png")
>>> fc.plot.layer_stats(history, "runs/x/layer_stats.png")
"""

from __future__ import annotations

import io
import math
import os

import numpy as np

from fastconv.train.checkpoint import atomic_write
from fastconv.nn.module import Module

__all__ = ["PlotUnavailable", "available", "filters", "layer_stats", "training_curves"]

INSTALL_HINT = 'pip install "fastconv[plot]"  (or: pip install matplotlib)'


class PlotUnavailable(ImportError):
    """matplotlib is not installed; the message says how to get it."""


def available() -> bool:
    """True when matplotlib can be imported."""
    try:
        _figure_class()
    except PlotUnavailable:
        return False
    return True


def _figure_class():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(f"fastconv.tools.plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    return Figure, FigureCanvasAgg


def _new_figure(width, height, layout="constrained"):
    Figure, Canvas = _figure_class()
    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    Canvas(fig)
    return fig


def _save(fig, path) -> str:
    path = os.fspath(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write(path, buf.getvalue())
    return path


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average over ``window`` points (shorter at the start)."""
    if window <= 1 or values.size == 0:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(values.size):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def _check_history(history, who):
    if not isinstance(history, dict) or "iteration_loss" not in history or "epoch" not in history:
        raise TypeError(f"{who}: `history` must be the dict that Trainer.fit returns; got {type(history).__name__}")


def training_curves(history: dict, path) -> str:
    """Loss per iteration (raw and smoothed) with the per-epoch losses, and accuracy per epoch.

    Left: the loss of every minibatch, a moving average over about an epoch,
    and the train/val loss at the end of each epoch (on a log scale: the
    notes' "loss function" plot, where a too-high learning rate shows as a
    plateau or a blow-up and a too-low one as a slow, linear-looking decay).
    Right: train and validation accuracy per epoch (the gap is overfitting).
    Returns the path written.
    """
    _check_history(history, "training_curves")
    fig = _new_figure(11, 4)
    from matplotlib.ticker import MaxNLocator
    ax_loss, ax_acc = fig.subplots(1, 2)
    losses = np.asarray(history["iteration_loss"], np.float64)
    per_epoch = history.get("iterations_per_epoch") or max(1, losses.size // max(1, len(history["epoch"])))
    it = np.arange(1, losses.size + 1)
    ax_loss.plot(it / per_epoch, losses, color="tab:blue", alpha=0.25, lw=0.8, label="minibatch loss")
    ax_loss.plot(it / per_epoch, _smooth(losses, max(1, min(per_epoch, losses.size // 5 or 1))),
                 color="tab:blue", lw=1.8, label="smoothed")
    epochs = np.asarray(history["epoch"], np.float64)
    for key, color in (("train_loss", "tab:green"), ("val_loss", "tab:orange")):
        values = [np.nan if v is None else v for v in history.get(key, [])]
        if values and not all(np.isnan(values)):
            ax_loss.plot(epochs, values, "o-", color=color, ms=4, label=key.replace("_", " "))
    if losses.size and np.all(losses[np.isfinite(losses)] > 0):
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    for key, color in (("train_accuracy", "tab:green"), ("val_accuracy", "tab:orange")):
        values = [np.nan if v is None else 100 * v for v in history.get(key, [])]
        if values and not all(np.isnan(values)):
            ax_acc.plot(epochs, values, "o-", color=color, ms=4, label=key.replace("_", " "))
    best = history.get("best_epoch")
    if best:
        ax_acc.axvline(best, color="gray", ls="--", lw=1, label=f"best epoch ({best})")
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    return _save(fig, path)


def _first_conv_weight(model: Module) -> np.ndarray:
    from fastconv.nn.conv import Conv2d

    for m in model.modules():
        if isinstance(m, Conv2d):
            return m.weight.data
    raise ValueError(f"filters: the model has no Conv2d layer to show ({type(model).__name__})")


def filters(model: Module, path, max_filters: int = 64) -> str:
    """The first convolution layer's filters as an image grid.

    Each filter (in_channels, kh, kw) is one tile: an RGB image when it has 3
    input channels, otherwise one gray tile per input channel (up to 8) side
    by side. Each tile is scaled to its own min..max. Smooth, structured
    filters are a sign of a well-trained first layer; noisy ones suggest too
    little training or too little regularization. Returns the path written.
    """
    if not isinstance(model, Module):
        raise TypeError(f"filters: `model` must be a fastconv Module; got {type(model).__name__}")
    w = _first_conv_weight(model)[:max_filters].astype(np.float64)
    out_ch, in_ch, kh, kw = w.shape
    rgb = in_ch == 3
    per_filter = 1 if rgb else min(in_ch, 8)
    cols = max(1, math.ceil(math.sqrt(out_ch * per_filter)) // per_filter) * per_filter
    rows = math.ceil(out_ch * per_filter / cols)
    tile = 1.2
    fig = _new_figure(max(3.0, cols * tile), max(2.0, rows * tile + 0.5))
    fig.suptitle(f"first-layer filters: {out_ch} x {in_ch} x {kh} x {kw}")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for k in range(out_ch):
        if rgb:
            f = w[k].transpose(1, 2, 0)
            f = (f - f.min()) / (np.ptp(f) or 1.0)
            axes[k].imshow(f, interpolation="nearest")
        else:
            for c in range(per_filter):
                f = w[k, c]
                axes[k * per_filter + c].imshow(f, cmap="gray", interpolation="nearest",
                                                vmin=f.min(), vmax=f.max() if np.ptp(f) else f.min() + 1)
    return _save(fig, path)


def layer_stats(history: dict, path) -> str:
    """Per-layer statistics: update/weight ratios over time, activation and gradient distributions.

    Top: ||lr * update|| / ||w|| per parameter and epoch, on a log scale, with
    the rule of thumb 1e-3 marked (far below: the learning rate is too small; far
    above: too large). Middle: the histogram of each
    layer's output in the last recorded minibatch, with its share of zero
    elements (a ReLU's sparsity) and of dead units (units whose output is
    zero for every example of that minibatch). Bottom: the histogram of the gradient at each layer's
    output. Bars are log10(1 + count). Returns the path written.
    """
    _check_history(history, "layer_stats")

    stats = history.get("stats") or []
    if not stats:
        raise ValueError("layer_stats: the history has no layer statistics (train at least one epoch)")
    last = stats[-1]
    # A Flatten's output is its input reshaped: the same histogram twice.
    acts = {k: v for k, v in last.get("activations", {}).items() if not k.endswith(".Flatten")}
    grads = {k: v for k, v in last.get("gradients", {}).items() if not k.endswith(".Flatten")}
    n = max(len(acts), len(grads), 1)
    # Many small panels: a fixed layout (constrained layout costs seconds here) and few ticks.
    fig = _new_figure(max(8.0, 2.2 * n), 8.5, layout=None)
    from matplotlib.ticker import MaxNLocator

    grid = fig.add_gridspec(3, n, left=0.05, right=0.99, top=0.95, bottom=0.05, hspace=0.55, wspace=0.25)
    ax = fig.add_subplot(grid[0, :])
    epochs = [s["epoch"] for s in stats]
    for name in last["update_ratio"]:
        values = [np.nan if s["update_ratio"].get(name) is None else s["update_ratio"][name] for s in stats]
        if not all(np.isnan(values)):
            ax.plot(epochs, values, "o-", ms=3, label=name)
    ax.axhline(1e-3, color="gray", ls="--", lw=1, label="1e-3")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_title("update / weight ratio per parameter")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4)
    panels = (("activations", acts, "tab:blue"), ("gradients", grads, "tab:red"))
    for row, (title, table, color) in enumerate(panels, 1):
        for i, (name, s) in enumerate(table.items()):
            ax = fig.add_subplot(grid[row, i])
            if s["hist"]:  # log10(1 + count): the tails matter as much as the peak
                ax.stairs(np.log10(1 + np.asarray(s["hist"], np.float64)), s["edges"], fill=True, color=color,
                          alpha=0.8)
            std = "n/a" if s["std"] is None else f"{s['std']:.2g}"
            dead = f"\ndead units {100 * s['dead_units']:.0f}% (of {s['examples']} ex.)" if "dead_units" in s else ""
            ax.set_title(f"{name}\nstd {std}, zeros {100 * s['zero_fraction']:.0f}%{dead}", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.set_yticks([])
            ax.xaxis.set_major_locator(MaxNLocator(3))
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
            if i == 0:
                ax.set_ylabel(f"{title}, epoch {last['epoch']}\nlog10(1 + count)", fontsize=7)
    return _save(fig, path)
