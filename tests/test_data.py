"""fastconv.data: the shipped digits, IDX and CIFAR-10 readers, splits, normalization, minibatches."""

import gzip
import os
import pickle
import struct
import tracemalloc

import numpy as np
import pytest

from fastconv import data as D

# -- the shipped digits ---------------------------------------------------------------


def test_load_digits_is_the_uci_set_as_scikit_learn_ships_it():
    ds = D.load_digits()
    assert ds.X.shape == (1797, 1, 8, 8) and ds.X.dtype == np.float32 and ds.X.flags.c_contiguous
    assert ds.y.shape == (1797,) and ds.y.dtype == np.int64
    assert ds.num_classes == 10 and ds.classes == [str(i) for i in range(10)]
    np.testing.assert_array_equal(np.bincount(ds.y), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    assert ds.X.min() == 0.0 and ds.X.max() == 1.0
    # the first row of digits.csv.gz: a zero
    first = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0]
    np.testing.assert_array_equal(ds.X[0, 0, :2].ravel() * 16, first)
    assert ds.y[0] == 0 and ds.y[-1] == 8
    np.testing.assert_allclose(ds.X * 16, np.round(ds.X * 16))  # counts 0..16, scaled exactly


# -- Dataset and minibatches -------------------------------------------------------------


def small(n=10, c=1, h=4, w=4, k=2, seed=0):
    rng = np.random.default_rng(seed)
    return D.Dataset(rng.standard_normal((n, c, h, w)).astype(np.float32), np.arange(n) % k)


def test_dataset_validates_its_arrays():
    X = np.zeros((4, 1, 2, 2), np.float32)
    with pytest.raises(TypeError, match=r"Dataset: `X` must be a numpy array; got list"):
        D.Dataset([[1.0]], [0])
    with pytest.raises(ValueError, match=r"`y` must have shape \(4,\) to match `X` \(4, 1, 2, 2\); got \(3,\)"):
        D.Dataset(X, [0, 1, 0])
    with pytest.raises(TypeError, match=r"`y` must hold integer class indices; got dtype float64"):
        D.Dataset(X, np.zeros(4))
    with pytest.raises(ValueError, match=r"class indices >= 0; got -1"):
        D.Dataset(X, [0, 1, -1, 0])
    with pytest.raises(ValueError, match=r"label 3 has no name in `classes` \(2 names\)"):
        D.Dataset(X, [0, 1, 3, 0], classes=["a", "b"])
    ds = D.Dataset(X.astype(np.float64), [0, 1, 1, 0])
    assert ds.X.dtype == np.float32 and len(ds) == 4 and ds.input_shape == (1, 2, 2)
    x0, y0 = ds[1]
    assert x0.shape == (1, 2, 2) and y0 == 1
    assert len(ds[1:3]) == 2 and "2 classes" in repr(ds)
    assert D.as_dataset((X, np.zeros(4, int))).X.shape == X.shape
    with pytest.raises(TypeError, match=r"`train` must be a fastconv.data.Dataset or an \(X, y\) pair; got str"):
        D.as_dataset("x", "train")


def test_batches_in_order_are_views_and_cover_everything():
    ds = small(10)
    batches = list(ds.batches(4))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert all(np.shares_memory(xb, ds.X) for xb, _ in batches)
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), ds.y)
    assert [len(y) for _, y in ds.batches(4, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match=r"`batch_size` must be an int >= 1; got 0"):
        list(ds.batches(0))
    with pytest.raises(ValueError, match=r"shuffle=True needs a seeded `rng`"):
        list(ds.batches(4, shuffle=True))


def test_shuffled_batches_are_a_seeded_permutation():
    ds = D.Dataset(np.arange(50, dtype=np.float32).reshape(50, 1, 1, 1), np.arange(50) % 5)
    order = lambda seed: np.concatenate([xb.ravel() for xb, _ in ds.batches(8, True, np.random.default_rng(seed))])
    a, b, c = order(1), order(1), order(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.sort(a), np.arange(50))
    for xb, yb in ds.batches(8, True, np.random.default_rng(0)):  # labels travel with their images
        np.testing.assert_array_equal(yb, xb.ravel().astype(int) % 5)


def test_shuffling_does_not_copy_the_dataset():
    ds = D.Dataset(np.zeros((20000, 1, 16, 16), np.float32), np.zeros(20000, np.int64))  # 20 MB of images
    tracemalloc.start()
    try:
        it = ds.batches(32, shuffle=True, rng=np.random.default_rng(0))
        next(it)
        next(it)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"peak {peak} bytes: the epoch copied the dataset"


# -- splits and normalization ---------------------------------------------------------------


def test_train_val_split_is_seeded_disjoint_and_stratified():
    ds = D.load_digits()
    train, val = D.train_val_split(ds, 0.2, seed=3)
    assert len(train) + len(val) == len(ds) and len(val) == 359
    # each class keeps its share (round(0.2 * n_c))
    np.testing.assert_array_equal(np.bincount(val.y), np.round(0.2 * np.bincount(ds.y)).astype(int))
    again, _ = D.train_val_split(ds, 0.2, seed=3)
    np.testing.assert_array_equal(again.X, train.X)
    other, _ = D.train_val_split(ds, 0.2, seed=4)
    assert not np.array_equal(other.y, train.y)
    _, plain_val = D.train_val_split(ds, 0.2, seed=3, stratify=False)
    assert len(plain_val) == 359


def test_train_val_split_partitions_the_indices():
    ds = D.Dataset(np.arange(30, dtype=np.float32).reshape(30, 1, 1, 1), np.arange(30) % 3)
    for stratify in (True, False):
        train, val = D.train_val_split(ds, 0.3, seed=0, stratify=stratify)
        ids = np.concatenate([train.X.ravel(), val.X.ravel()])
        np.testing.assert_array_equal(np.sort(ids), np.arange(30))
        assert np.all(np.diff(train.X.ravel()) > 0)  # original order kept


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, True, "0.2"])
def test_train_val_split_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match=r"`val_fraction` must be a number in \(0, 1\)"):
        D.train_val_split(small(), fraction)


def test_train_val_split_rejects_an_empty_part():
    with pytest.raises(ValueError, match=r"leaves an empty split"):
        D.train_val_split(small(4), 0.01)


def test_normalizer_uses_training_statistics_per_channel():
    rng = np.random.default_rng(0)
    X = rng.normal([1.0, -2.0, 5.0], [0.5, 2.0, 3.0], size=(500, 4, 4, 3)).transpose(0, 3, 1, 2)
    train = D.Dataset(X.astype(np.float32), np.zeros(500, int))
    norm = D.Normalizer.fit(train)
    np.testing.assert_allclose(norm.mean, [1.0, -2.0, 5.0], atol=0.1)
    np.testing.assert_allclose(norm.std, [0.5, 2.0, 3.0], rtol=0.1)
    z = norm(train).X
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-4)
    other = np.ones((2, 3, 4, 4), np.float32)
    np.testing.assert_allclose(norm(other)[:, 0], (1 - norm.mean[0]) / norm.std[0], rtol=1e-6)
    back = D.Normalizer.from_dict(norm.to_dict())
    np.testing.assert_array_equal(back.mean, norm.mean)
    with pytest.raises(ValueError, match=r"input must have 3 channels in axis 1; got shape \(2, 1, 4, 4\)"):
        norm(np.zeros((2, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"`std` must be finite and > 0"):
        D.Normalizer([0.0], [0.0])
    const = D.Normalizer.fit(np.ones((3, 1, 2, 2), np.float32))  # a constant channel does not divide by 0
    assert np.all(np.isfinite(const(np.ones((1, 1, 2, 2), np.float32))))


# -- MNIST (IDX) ----------------------------------------------------------------------------


def idx_bytes(array, code=0x08):
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return bytes([0, 0, code, array.ndim]) + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_mnist(folder, n_train=6, n_test=4, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, arr, rank in (("images", images, 3), ("labels", labels, 1)):
            raw = idx_bytes(arr)
            name = f"{prefix}-{kind}-idx{rank}-ubyte"
            if gz:
                with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                    f.write(raw)
            else:
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(raw)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_reads_idx_files(tmp_path, gz):
    written = write_mnist(tmp_path, gz=gz)
    train = D.load_mnist(tmp_path)
    test = D.load_mnist(str(tmp_path), split="test")
    assert train.X.shape == (6, 1, 28, 28) and test.X.shape == (4, 1, 28, 28)
    np.testing.assert_allclose(train.X[:, 0] * 255, written["train"][0], atol=1e-4)
    np.testing.assert_array_equal(test.y, written["t10k"][1])
    assert train.y.dtype == np.int64 and train.num_classes == 10


def test_read_idx_handles_every_type_code(tmp_path):
    for code, dtype in ((0x08, "u1"), (0x09, "i1"), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")):
        a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
        p = tmp_path / f"a{code}"
        p.write_bytes(idx_bytes(a, code))
        got = D.read_idx(p)
        np.testing.assert_array_equal(got, a)
        assert got.dtype.isnative


def test_mnist_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load_mnist: .* is not a folder"):
        D.load_mnist(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"load_mnist: no train-images-idx3-ubyte\[.gz\] in"):
        D.load_mnist(tmp_path)
    write_mnist(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-10])
    with pytest.raises(D.DataError, match=r"train-images-idx3-ubyte: IDX data of shape \(6, 28, 28\) needs 4704 bytes; "
                                          r"the file has 4694"):
        D.load_mnist(tmp_path)
    images.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(D.DataError, match=r"not a valid gzip file"):
        D.load_mnist(tmp_path)
    images.write_bytes(b"PK\x03\x04" + good[4:])
    with pytest.raises(D.DataError, match=r"not an IDX file \(bad magic number 504b0304\)"):
        D.load_mnist(tmp_path)
    images.write_bytes(idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    with pytest.raises(D.DataError, match=r"train labels must have shape \(5,\); got \(6,\)"):
        D.load_mnist(tmp_path)
    with pytest.raises(ValueError, match=r"`split` must be 'train' or 'test'; got 'val'"):
        D.load_mnist(tmp_path, split="val")


# -- CIFAR-10 -----------------------------------------------------------------------------------


def cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)]


def write_cifar_python(folder, n=3, protocol=2, bytes_keys=True):
    """Batches as the original files are laid out: a dict with 'data' (N, 3072) uint8 and 'labels'."""
    folder = os.path.join(folder, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    key = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    batches = {}
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        data, labels = cifar_batch(n, i)
        batch = {key("batch_label"): key(f"batch {i}"), key("labels"): labels, key("data"): data,
                 key("filenames"): [key(f"img{j}.png") for j in range(n)]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        batches[name] = (data, labels)
    return batches


@pytest.mark.parametrize("protocol,bytes_keys", [(2, True), (2, False), (4, False), (5, False)])
def test_load_cifar10_python_batches(tmp_path, protocol, bytes_keys):
    batches = write_cifar_python(tmp_path, protocol=protocol, bytes_keys=bytes_keys)
    train = D.load_cifar10(tmp_path)
    test = D.load_cifar10(tmp_path / "cifar-10-batches-py", split="test")
    assert train.X.shape == (15, 3, 32, 32) and test.X.shape == (3, 3, 32, 32)
    data, labels = batches["data_batch_2"]
    # rows are 1024 red, then green, then blue values, each row-major 32x32
    np.testing.assert_allclose(train.X[3, 1].ravel() * 255, data[0, 1024:2048], atol=1e-3)
    np.testing.assert_array_equal(train.y[3:6], labels)
    assert train.classes[0] == "airplane" and train.y.dtype == np.int64


def test_load_cifar10_binary_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        data, labels = cifar_batch(2, i)
        (folder / f"{name}.bin").write_bytes(np.column_stack([np.array(labels, np.uint8), data]).tobytes())
    test = D.load_cifar10(tmp_path, "test")
    data, labels = cifar_batch(2, 5)
    np.testing.assert_array_equal(test.y, labels)
    np.testing.assert_allclose(test.X.reshape(2, -1) * 255, data, atol=1e-3)
    (folder / "test_batch.bin").write_bytes(b"\0" * 3000)
    with pytest.raises(D.DataError, match=r"records of 1 \+ 3072 bytes; the file has 3000 bytes"):
        D.load_cifar10(tmp_path, "test")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_load_cifar10_never_runs_code_from_the_file(tmp_path):
    write_cifar_python(tmp_path)
    marker = str(tmp_path / "pwned")
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": _Exploit(marker), "labels": [0]}, f, protocol=2)
    with pytest.raises(D.DataError, match=r"test_batch: not a CIFAR-10 Python batch file \(refusing to load the "
                                          r"global posix.mkdir\)"):
        D.load_cifar10(tmp_path, "test")
    assert not os.path.exists(marker)
    # numpy's own globals are answered with stand-ins: an object array is refused, not built
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": np.array([None, 1], dtype=object), "labels": [0]}, f, protocol=2)
    with pytest.raises(D.DataError, match=r"refusing dtype 'O8'|refusing"):
        D.load_cifar10(tmp_path, "test")


def test_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load_cifar10: no data_batch_1 \(Python batches\) or "
                                                r"data_batch_1.bin \(binary batches\) in"):
        D.load_cifar10(tmp_path)
    write_cifar_python(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}, f, protocol=2)
    with pytest.raises(D.DataError, match=r"'data' must be a uint8 array \(N, 3072\); got uint8 \(2, 10\)"):
        D.load_cifar10(tmp_path, "test")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02}q\x00")  # truncated
    with pytest.raises(D.DataError, match=r"not a CIFAR-10 Python batch file"):
        D.load_cifar10(tmp_path, "test")


# -- .npz ------------------------------------------------------------------------------------------


def test_load_npz_plain_arrays(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (6, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", X=X, y=np.arange(6) % 3, X_test=X[:2], y_test=[0, 1], classes=["a", "b", "c"])
    parts = D.load_npz(tmp_path / "mine.npz")
    assert parts["train"].X.shape == (6, 1, 5, 5) and parts["test"].classes == ["a", "b", "c"]
    np.testing.assert_allclose(parts["train"].X[:, 0] * 255, X, atol=1e-4)
    np.savez(tmp_path / "bad.npz", images=X)
    with pytest.raises(D.DataError, match=r"must hold arrays 'X' and 'y'; it has \['images'\]"):
        D.load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", X=np.array([{"a": 1}], dtype=object), y=[0])
    with pytest.raises(D.DataError, match=r"is not a .npz of plain arrays"):
        D.load_npz(tmp_path / "obj.npz")
    with pytest.raises(FileNotFoundError, match=r"load_npz: no such file"):
        D.load_npz(tmp_path / "missing.npz")
