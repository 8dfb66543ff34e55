"""Augmentation: RandomCrop and RandomHorizontalFlip against per-image loops, the
Trainer applying them per minibatch from a checkpointed generator (a resumed run
draws what an uninterrupted one does), and fastconv train --augment."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv as fc
from fastconv.data import Compose, RandomCrop, RandomHorizontalFlip
from fastconv.data import augment as A
from fastconv.tools import cli


def reference_crop(X, size, padding, rng):
    """One image at a time, with the draws the docstring promises: all rows' offsets, then all columns'."""
    h, w = size
    n, c, H, W = X.shape
    top = rng.integers(0, H + 2 * padding - h + 1, size=n)
    left = rng.integers(0, W + 2 * padding - w + 1, size=n)
    out = np.empty((n, c, h, w), X.dtype)
    for i in range(n):
        img = np.zeros((c, H + 2 * padding, W + 2 * padding), X.dtype)
        img[:, padding:padding + H, padding:padding + W] = X[i]
        out[i] = img[:, top[i]:top[i] + h, left[i]:left[i] + w]
    return out


def reference_flip(X, p, rng):
    flips = rng.random(X.shape[0]) < p
    return np.stack([X[i][:, :, ::-1] if flips[i] else X[i] for i in range(X.shape[0])])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), c=st.integers(1, 4), H=st.integers(1, 9), W=st.integers(1, 9),
       padding=st.integers(0, 4), dh=st.integers(0, 8), dw=st.integers(0, 8), seed=st.integers(0, 2**32 - 1))
def test_random_crop_matches_a_per_image_loop(n, c, H, W, padding, dh, dw, seed):
    size = (max(1, H + 2 * padding - dh), max(1, W + 2 * padding - dw))
    X = np.random.default_rng(seed).standard_normal((n, c, H, W)).astype(np.float32)
    before = X.copy()
    got = RandomCrop(size, padding)(X, np.random.default_rng(seed))
    np.testing.assert_array_equal(got, reference_crop(X, size, padding, np.random.default_rng(seed)))
    assert got.shape == (n, c) + size and got.dtype == X.dtype and got.flags.c_contiguous
    np.testing.assert_array_equal(X, before)
    assert not np.shares_memory(got, X)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), shape=st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)),
       p=st.sampled_from([0.0, 0.3, 0.5, 1.0]), seed=st.integers(0, 2**32 - 1))
def test_random_flip_matches_a_per_image_loop(n, shape, p, seed):
    X = np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)
    got = RandomHorizontalFlip(p)(X, np.random.default_rng(seed))
    np.testing.assert_array_equal(got, reference_flip(X, p, np.random.default_rng(seed)))
    assert not np.shares_memory(got, X)


def test_crops_reach_every_position_and_flips_happen_at_their_rate():
    X = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4).repeat(4000, axis=0)
    out = RandomCrop(4, padding=1)(X, np.random.default_rng(0))
    # pixel 6 (row 1, column 1) lands at (2 - top, 2 - left): where it is tells the offset
    where = (out[:, 0] == 6).reshape(4000, 16).argmax(axis=1)
    counts = np.bincount(where, minlength=16)
    assert np.count_nonzero(counts) == 9 and counts[counts > 0].min() > 300, counts  # 9 offsets, each ~1/9
    flips = RandomHorizontalFlip(0.25)(X, np.random.default_rng(1))[:, 0, 0, 0] == 4
    assert 0.22 < flips.mean() < 0.28


def test_transforms_refuse_bad_arguments():
    with pytest.raises(ValueError, match=r"RandomCrop: `size` \(9, 9\) must fit the padded images \(8x8"):
        RandomCrop(9, padding=2)(np.zeros((1, 1, 4, 4), np.float32), np.random.default_rng())
    with pytest.raises(ValueError, match="`padding` must be an int >= 0; got -1"):
        RandomCrop(4, padding=-1)
    with pytest.raises(ValueError, match=r"`size` must be >= 1; got \(0, 0\)"):
        RandomCrop(0)
    with pytest.raises(ValueError, match=r"`p` must be a number in \[0, 1\]; got 1.5"):
        RandomHorizontalFlip(1.5)
    with pytest.raises(ValueError, match=r"the batch must be a numpy array \(N, C, H, W\); got \(3, 4\)"):
        RandomHorizontalFlip()(np.zeros((3, 4)), np.random.default_rng())
    with pytest.raises(TypeError, match="each transform must be callable"):
        Compose(3)
    with pytest.raises(TypeError, match="`augment` must be callable"):
        model = fc.models.build_model("fc10", (1, 8, 8), 10)
        fc.Trainer(model, fc.SoftmaxCrossEntropy(), fc.SGD(model.parameters(), lr=0.1), augment="crop4")


def test_parse_builds_the_cli_pipeline():
    t = A.parse("crop4,flip", (3, 32, 32))
    assert [repr(x) for x in t.transforms] == ["RandomCrop(size=(32, 32), padding=4)", "RandomHorizontalFlip(p=0.5)"]
    assert repr(A.parse("flip0.2", (1, 8, 8)).transforms[0]) == "RandomHorizontalFlip(p=0.2)"
    assert A.parse("none", (1, 8, 8)) is None and A.parse(None, (1, 8, 8)) is None
    for text, message in [("rotate", "expected cropP"), ("cropx", "expected cropP"), ("flip2", r"\[0, 1\]")]:
        with pytest.raises(ValueError, match=f"--augment: '{text}': .*{message}"):
            A.parse(text, (1, 8, 8))
    with pytest.raises(ValueError, match=r"crop needs images \(C, H, W\)"):
        A.parse("crop2", (64,))
    X = np.random.default_rng(0).standard_normal((5, 3, 6, 6)).astype(np.float32)
    both = t.transforms[0].__class__((6, 6), 4)
    composed = Compose(both, RandomHorizontalFlip())(X, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(composed, reference_flip(reference_crop(X, (6, 6), 4, rng), 0.5, rng))


# -- the Trainer ---------------------------------------------------------------------------------------------


def digits():
    data = fc.data.load_digits()[:400]
    norm = fc.data.Normalizer.fit(data)
    return fc.data.train_val_split(norm(data), 0.25, seed=0)


def trainer(checkpoint_dir=None, augment=True):
    fc.manual_seed(0)
    model = fc.models.build_model("conv4x3p1-relu-pool2-fc10", (1, 8, 8), 10)
    aug = Compose(RandomCrop(8, padding=1), RandomHorizontalFlip()) if augment else None
    return fc.Trainer(model, fc.SoftmaxCrossEntropy(), fc.SGD(model.parameters(), lr=0.05, momentum=0.9),
                      batch_size=32, checkpoint_dir=checkpoint_dir, seed=7, verbose=False, augment=aug)


def weights(t):
    return {k: v.copy() for k, v in t.model.state_dict().items()}


def test_a_resumed_run_draws_the_same_augmentation_as_an_uninterrupted_one(tmp_path):
    train, val = digits()
    whole = trainer()
    whole.fit(train, val, epochs=4)
    first = trainer(tmp_path / "run")
    first.fit(train, val, epochs=2)
    second = trainer(tmp_path / "run")  # a new process, in effect: fresh generators, then the checkpoint's
    second.fit(train, val, epochs=4, resume=True)
    a, b = weights(whole), weights(second)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert whole.history["train_loss"] == second.history["train_loss"]
    plain = trainer(augment=False)
    plain.fit(train, val, epochs=4)
    assert not all(np.array_equal(a[k], v) for k, v in weights(plain).items())  # augmentation did something
    saved = json.loads((tmp_path / "run" / "last" / "checkpoint.json").read_text())
    assert set(saved["meta"]["rng"]) == {"shuffle", "init", "augment"}


def test_augmentation_leaves_the_minibatch_order_alone(monkeypatch):
    """Its own generator: turning augmentation on draws nothing from the shuffling one."""
    train, _ = digits()
    orders = []
    real = fc.data.Dataset.batches

    def spy(self, *args, **kw):
        for xb, yb in real(self, *args, **kw):
            orders.append(yb.copy())
            yield xb, yb

    monkeypatch.setattr(fc.data.Dataset, "batches", spy)
    trainer(augment=True).fit(train, epochs=2)
    with_aug, orders[:] = list(orders), []
    trainer(augment=False).fit(train, epochs=2)
    assert len(with_aug) == len(orders) and all(np.array_equal(a, b) for a, b in zip(with_aug, orders))


# -- fastconv train --augment --------------------------------------------------------------------------------


def run(out, *args):
    return cli.main(["train", "--arch", "conv4x3p1-relu-pool2-fc10", "--out", str(out), "--no-plots",
                     "--threads", "1", "--patience", "0", "--batch-size", "64", "--schedule", "none", *map(str, args)])


def test_cli_augment_resumes_exactly_and_refuses_another_augment(tmp_path, capsys):
    from safetensors.numpy import load_file

    assert run(tmp_path / "whole", "--epochs", 3, "--augment", "crop1,flip") == 0
    assert run(tmp_path / "split", "--epochs", 2, "--augment", "crop1,flip") == 0
    assert run(tmp_path / "split", "--epochs", 3, "--resume") == 0
    a = load_file(str(tmp_path / "whole" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "last" / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert 'augment = "crop1,flip"' in (tmp_path / "whole" / "config.toml").read_text()
    capsys.readouterr()
    assert run(tmp_path / "split", "--epochs", 4, "--resume", "--augment", "flip") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(augment = 'crop1,flip' in its config.toml); --augment 'flip' would change it" in err[0]
    assert run(tmp_path / "bad", "--epochs", 1, "--augment", "crop1,rotate") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--augment: 'rotate': expected cropP" in err[0]
