"""Datasets, minibatches, splits and normalization.

>>> import fastconv as fc
>>> data = fc.data.load_digits()                       # 1,797 images, (N, 1, 8, 8)
>>> train, val = fc.data.train_val_split(data, val_fraction=0.1, seed=0)
>>> norm = fc.data.Normalizer.fit(train)               # per-channel mean/std of train only
>>> train, val = norm(train), norm(val)
>>> for xb, yb in train.batches(64, shuffle=True, rng=np.random.default_rng(0)):
...     ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from fastconv import _guard


class DataError(ValueError):
    """A data file that exists but does not hold what its format promises."""


# -- Dataset and minibatches ------------------------------------------------------


class Dataset:
    """Images ``X`` (N, C, H, W) float32 and labels ``y`` (N,) int64, held in memory.

    ``classes`` names the labels 0..K-1 (default: "0", "1", ...). Indexing
    with an int array, a slice or a boolean mask gives a new Dataset (a view
    for slices). ``len(ds)`` is N.

    >>> ds = Dataset(np.zeros((10, 1, 8, 8), np.float32), np.arange(10) % 2)
    >>> ds.input_shape, ds.num_classes
    ((1, 8, 8), 2)
    """

    def __init__(self, X, y, classes: Sequence[str] | None = None, name: str = ""):
        if not isinstance(X, np.ndarray):
            raise TypeError(f"Dataset: `X` must be a numpy array; got {type(X).__name__}")
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise TypeError(f"Dataset: `X` must be a numeric array; got dtype {X.dtype}")
        if X.ndim < 2:
            raise ValueError(f"Dataset: `X` must have shape (N, C, H, W) (or (N, features)); got {X.shape}")
        y = np.asarray(y)
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"Dataset: `y` must hold integer class indices; got dtype {y.dtype}")
        if y.shape != (X.shape[0],):
            raise ValueError(f"Dataset: `y` must have shape ({X.shape[0]},) to match `X` {X.shape}; got {y.shape}")
        if y.size and y.min() < 0:
            raise ValueError(f"Dataset: `y` must be class indices >= 0; got {y.min()}")
        self.X = np.ascontiguousarray(X, dtype=np.float32)
        self.y = y.astype(np.int64, copy=False)
        if classes is None:
            classes = [str(i) for i in range(int(self.y.max()) + 1 if self.y.size else 0)]
        self.classes = [str(c) for c in classes]
        if self.y.size and self.y.max() >= len(self.classes):
            raise ValueError(f"Dataset: label {self.y.max()} has no name in `classes` ({len(self.classes)} names)")
        self.name = name

    def __len__(self) -> int:
        return self.X.shape[0]

    def __getitem__(self, index):
        """``ds[i]`` is the pair (x, y) of example i; ``ds[indices]`` a new Dataset."""
        if isinstance(index, (int, np.integer)):
            return self.X[index], self.y[index]
        return Dataset(self.X[index], self.y[index], self.classes, self.name)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple:
        """The shape of one example, e.g. (1, 8, 8)."""
        return tuple(self.X.shape[1:])

    def batches(self, batch_size: int, shuffle: bool = False, rng: np.random.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Minibatches ``(X_b, y_b)`` in order, or in a random order drawn from ``rng``.

        Shuffling permutes an index array and gathers one batch at a time, so an
        epoch never copies the whole dataset. Without shuffling the batches are
        views. The last batch is smaller unless ``drop_last``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"Dataset.batches: `batch_size` must be an int >= 1; got {_guard.plain(batch_size)!r}")
        n = len(self)
        stop = n - n % batch_size if drop_last else n
        if not shuffle:
            for i in range(0, stop, batch_size):
                yield self.X[i:i + batch_size], self.y[i:i + batch_size]
            return
        if rng is None:
            raise ValueError("Dataset.batches: shuffle=True needs a seeded `rng` (np.random.Generator)")
        order = rng.permutation(n)
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            yield self.X[idx], self.y[idx]

    def __repr__(self):
        name = f"{self.name!r}, " if self.name else ""
        return f"Dataset({name}{len(self)} examples of shape {self.input_shape}, {self.num_classes} classes)"


def as_dataset(data, what: str = "data") -> Dataset:
    """A :class:`Dataset` from a Dataset or an ``(X, y)`` pair."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return Dataset(np.asarray(data[0]) if not isinstance(data[0], np.ndarray) else data[0], data[1])
    raise TypeError(f"`{what}` must be a fastconv.data.Dataset or an (X, y) pair; got {type(data).__name__}")


def train_val_split(data, val_fraction: float = 0.1, seed: int = 0, stratify: bool = True) -> tuple[Dataset, Dataset]:
    """Split into ``(train, val)`` at random, from a generator seeded with ``seed``.

    With ``stratify`` (the default) each class keeps its proportion:
    round(val_fraction * n_c) of class c's n_c examples go to ``val``. Both
    parts keep the original order of the examples.

    >>> train, val = train_val_split(load_digits(), val_fraction=0.2, seed=0)
    >>> len(train), len(val)
    (1438, 359)
    """
    data = as_dataset(data)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"train_val_split: `val_fraction` must be a number in (0, 1); got {_guard.plain(val_fraction)!r}")
    rng = np.random.default_rng(seed)
    n = len(data)
    if stratify:
        picked = []
        for c in np.unique(data.y):
            members = np.flatnonzero(data.y == c)
            k = round(val_fraction * members.size)
            picked.append(rng.permutation(members)[:k])
        val_idx = np.concatenate(picked) if picked else np.empty(0, np.int64)
    else:
        val_idx = rng.permutation(n)[:round(val_fraction * n)]
    if val_idx.size == 0 or val_idx.size == n:
        raise ValueError(f"train_val_split: `val_fraction` {val_fraction} of {n} examples leaves an empty split")
    mask = np.zeros(n, bool)
    mask[val_idx] = True
    return data[~mask], data[mask]


def kfold(data, k: int = 5, seed: int = 0) -> Iterator[tuple[Dataset, Dataset]]:
    """The ``k`` (train, val) pairs of stratified k-fold cross-validation.

    Every example is in exactly one val fold (and in the train part of the
    others). Each class's examples are shuffled by a generator seeded with
    ``seed`` and dealt round the folds, each class starting where the last
    one stopped: the folds' sizes differ by at most one, and so do each
    class's counts in them. Both parts keep the original order.

    >>> scores = [fit_and_score(train, val) for train, val in kfold(data, k=5, seed=0)]
    """
    data = as_dataset(data)
    n = len(data)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= max(n, 2):
        raise ValueError(f"kfold: `k` must be an int in [2, {max(n, 2)}] (the number of examples); "
                         f"got {_guard.plain(k)!r}")
    rng = np.random.default_rng(seed)
    fold, start = np.empty(n, np.int64), 0
    for c in np.unique(data.y):
        members = rng.permutation(np.flatnonzero(data.y == c))
        fold[members] = (start + np.arange(members.size)) % k
        start += members.size
    return ((data[fold != i], data[fold == i]) for i in range(int(k)))


class Normalizer:
    """Per-channel standardization: x'[:, c] = (x[:, c] - mean[c]) / std[c].

    Fit it on the training split only and apply the same numbers to every
    split: statistics from the validation or test data would leak them into training.

    >>> norm = Normalizer.fit(train)
    >>> train, val = norm(train), norm(val)
    """

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, np.float32).reshape(-1)
        self.std = np.asarray(std, np.float32).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"Normalizer: `mean` {self.mean.shape} and `std` {self.std.shape} "
                             "must have the same length")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.std)) and np.all(self.std > 0)):
            raise ValueError(f"Normalizer: `std` must be finite and > 0 and `mean` finite; got {self.mean}, {self.std}")

    @classmethod
    def fit(cls, data, eps: float = 1e-8) -> Normalizer:
        """Mean and standard deviation of each channel (axis 1) over all other axes."""
        X = data.X if isinstance(data, Dataset) else np.asarray(data)
        if X.ndim < 2 or X.shape[0] == 0:
            raise ValueError(f"Normalizer.fit: need a non-empty (N, C, ...) array; got shape {X.shape}")
        axes = (0,) + tuple(range(2, X.ndim))
        mean = X.mean(axis=axes, dtype=np.float64)
        std = X.std(axis=axes, dtype=np.float64)
        return cls(mean, np.maximum(std, eps))

    def __call__(self, data):
        """Normalize a Dataset (returns a new one) or an array (N, C, ...)."""
        if isinstance(data, Dataset):
            return Dataset(self(data.X), data.y, data.classes, data.name)
        X = np.asarray(data, np.float32)
        if X.ndim < 2 or X.shape[1] != self.mean.size:
            raise ValueError(f"Normalizer: input must have {self.mean.size} channels in axis 1; got shape {X.shape}")
        shape = (1, -1) + (1,) * (X.ndim - 2)
        return ((X - self.mean.reshape(shape)) / self.std.reshape(shape)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        return cls(d["mean"], d["std"])

    def __repr__(self):
        return f"Normalizer(mean={self.mean.tolist()}, std={self.std.tolist()})"
