"""Readers for the shipped digits, MNIST (IDX files), CIFAR-10 batches and .npz files.

Nothing is downloaded: :func:`load_digits` reads a copy shipped inside the
package, :func:`load_mnist` and :func:`load_cifar10` read files you already
have. Images come out as float32 (N, C, H, W) scaled to [0, 1], labels as
int64 (N,). Every reader bounds what a file may make it allocate.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Sequence
from importlib import resources

import numpy as np

from fastconv import _guard
from fastconv.data.dataset import DataError, Dataset

DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# -- the shipped digits ------------------------------------------------------------


def load_digits() -> Dataset:
    """The UCI handwritten digits shipped with fastconv: 1,797 images, 8x8, 10 classes.

    Returns X float32 (1797, 1, 8, 8) with pixels scaled from 0..16 to [0, 1]
    and y int64 in 0..9. Source: E. Alpaydin and C. Kaynak, "Optical
    Recognition of Handwritten Digits", UCI Machine Learning Repository
    (1998), CC BY 4.0; the copy scikit-learn distributes.
    """
    raw = resources.files("fastconv.data").joinpath("digits.csv.gz").read_bytes()
    if hashlib.sha256(raw).hexdigest() != DIGITS_SHA256:
        raise DataError("load_digits: the packaged digits.csv.gz is corrupt (sha256 mismatch); reinstall fastconv")
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    X = (table[:, :64].astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return Dataset(X, table[:, 64], name="digits")


# -- MNIST (IDX files) -------------------------------------------------------------

# deflate cannot expand data more than 1032-fold: a size that says more is a lie.
_DEFLATE_RATIO = 1032
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_exactly(stream, nbytes: int, path: str, what: str) -> bytearray:
    out = bytearray()
    while len(out) < nbytes:  # in pieces: a header that lies about the size costs what the file holds
        piece = stream.read(min(nbytes - len(out), 1 << 22))
        if not piece:
            raise DataError(f"{path}: IDX {what} truncated: needs {nbytes} bytes; the file has {len(out)}")
        out += piece
    return out


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into an array.

    Header: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the rank, then each dimension
    as a big-endian uint32; the data follow in row-major order.

    The header is read first; of a gzipped file only the bytes it declares are
    inflated, and the stream must end there.
    """
    path = os.fspath(path)
    with _guard.open_regular(path, DataError) as f:
        size = os.fstat(f.fileno()).st_size
        gzipped = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f, mode="rb") if gzipped else f
        try:
            magic = bytes(stream.read(4))
            if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES or magic[3] == 0:
                raise DataError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty'})")
            ndim, dtype = magic[3], _IDX_DTYPES[magic[2]]
            header = 4 + 4 * ndim
            dims = struct.unpack(f">{ndim}I", _read_exactly(stream, 4 * ndim, path, "header"))
            expected = math.prod(dims) * dtype.itemsize
            if math.prod(max(d, 1) for d in dims) >= 2**48:  # numpy refuses such a shape even when a dim is 0
                raise DataError(f"{path}: IDX shape {dims} has more than 2**48 elements")
            if not gzipped and size - header != expected:
                raise DataError(f"{path}: IDX data of shape {dims} needs {expected} bytes; "
                                f"the file has {size - header}")
            if gzipped and expected > _DEFLATE_RATIO * size:
                raise DataError(f"{path}: IDX data of shape {dims} needs {expected} bytes; a gzip file of "
                                f"{size} bytes cannot hold more than {_DEFLATE_RATIO * size}")
            _guard.check_memory(expected, f"{path}: IDX data of shape {dims}")
            raw = _read_exactly(stream, expected, path, f"data of shape {dims}")
            if gzipped and stream.read(1):
                raise DataError(f"{path}: the gzip stream holds more than the {header + expected} bytes "
                                f"its IDX header declares (shape {dims})")
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{path}: not a valid gzip file ({_guard.short(e, 200)})") from None
    return np.frombuffer(raw, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find(folder: str, names: Sequence[str], what: str) -> str:
    for name in names:
        for candidate in (name, name + ".gz"):
            p = os.path.join(folder, candidate)
            if os.path.isfile(p):
                return p
    raise FileNotFoundError(f"{what}: no {names[0]}[.gz] in {folder}")


def load_mnist(path, split: str = "train") -> Dataset:
    """MNIST (or Fashion-MNIST) from the four IDX files in folder ``path``.

    Files (each may be gzipped, ``.gz``): ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte`` (``train-images.idx3-ubyte`` spellings also
    work). ``split`` is "train" (60,000) or "test" (10,000). Returns X
    float32 (N, 1, 28, 28) in [0, 1] and y int64.
    """
    path = os.fspath(path)
    if split not in ("train", "test"):
        raise ValueError(f"load_mnist: `split` must be 'train' or 'test'; got {split!r}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"load_mnist: {path} is not a folder (expected the MNIST IDX files in it)")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(path, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"], "load_mnist"))
    labels = read_idx(_find(path, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"], "load_mnist"))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"load_mnist: {prefix} images must be a uint8 array (N, H, W); "
                        f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"load_mnist: {prefix} labels must have shape ({images.shape[0]},); got {labels.shape}")
    if labels.size and labels.max() > 9:
        raise DataError(f"load_mnist: {prefix} labels must be digits 0..9; got {labels.max()}")
    X = (images.astype(np.float32) / 255.0)[:, None]
    return Dataset(X, labels.astype(np.int64), [str(i) for i in range(10)], name="mnist")


# -- CIFAR-10 (Python batches, read without running pickle's globals; or the binary batches)


class _Ndarray:
    """Stands for numpy.ndarray in a pickle: a marker, never called."""


class _DtypeStub:
    """Stands for numpy.dtype(name) in a pickle; only simple numeric dtypes are accepted."""

    _ALLOWED = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8", "b1"})

    def __init__(self, name, align=False, copy=True):
        name = name.decode("latin1") if isinstance(name, bytes) else name
        if name not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing dtype {name!r}")
        self.name, self.order = name, "|"

    def __setstate__(self, state):
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        order = order.decode("latin1") if isinstance(order, bytes) else order
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"refusing dtype byte order {order!r}")
        self.order = order

    def dtype(self) -> np.dtype:
        return np.dtype(self.name).newbyteorder(self.order) if self.order in "<>" else np.dtype(self.name)


def _array_from(raw, dtype, shape, order="C") -> np.ndarray:
    if not isinstance(dtype, _DtypeStub):
        raise pickle.UnpicklingError("array without a plain dtype")
    if (not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(raw, (bytes, bytearray))):
        raise pickle.UnpicklingError("malformed array state")
    dt = dtype.dtype()
    if len(raw) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
        raise pickle.UnpicklingError(f"array of shape {shape} and dtype {dt} with {len(raw)} bytes of data")
    return np.frombuffer(bytes(raw), dt).reshape(shape, order="F" if order in ("F", True) else "C")


class _ArrayStub:
    """Stands for numpy's ``_reconstruct(ndarray, (0,), b'b')``; its state becomes the array."""

    def __init__(self, subtype, shape, typecode):
        if subtype is not _Ndarray:
            raise pickle.UnpicklingError("only plain numpy arrays are accepted")
        self.array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5:
            raise pickle.UnpicklingError("malformed array state")
        _, shape, dtype, fortran, raw = state
        self.array = _array_from(raw, dtype, shape, "F" if fortran else "C")


def _frombuffer(buf, dtype, shape, order):
    return _array_from(bytes(buf), dtype, shape, order)


def _codecs_encode(text, encoding):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode with these arguments")
    return text.encode("latin1")


class _DataUnpickler(pickle.Unpickler):
    """Unpickle plain containers and numpy arrays only.

    ``find_class`` never imports anything: the few globals that a pickled
    NumPy array names are answered with local stand-ins that check their
    arguments and build the array with ``np.frombuffer``; every other global
    is refused. So loading a file runs no code that the file chooses (the
    "restricting globals" recipe of the pickle documentation).
    """

    _STANDINS = {
        ("numpy.core.multiarray", "_reconstruct"): _ArrayStub,
        ("numpy._core.multiarray", "_reconstruct"): _ArrayStub,
        ("numpy", "ndarray"): _Ndarray,
        ("numpy", "dtype"): _DtypeStub,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("_codecs", "encode"): _codecs_encode,
    }

    def find_class(self, module, name):
        try:
            return self._STANDINS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id")


# A CIFAR batch is a dict of lists and arrays, 2 levels deep and ~20,000 elements;
# anything far beyond is not one.
_MAX_PICKLE_DEPTH, _MAX_PICKLE_ELEMENTS = 32, 1 << 22


def _unstub(obj, memo=None, depth=0, budget=None):
    """Replace the array stand-ins in dicts and lists by their arrays.

    Each container is visited once (``memo``, by identity), so shared
    references (``l = [l, l]`` 30 times over) cost their number of objects,
    not 2**30; nesting deeper than _MAX_PICKLE_DEPTH or more than
    _MAX_PICKLE_ELEMENTS elements in all are refused."""
    if memo is None:
        memo, budget = {}, [_MAX_PICKLE_ELEMENTS]
    if isinstance(obj, _ArrayStub):
        if obj.array is None:
            raise pickle.UnpicklingError("array without data")
        return obj.array
    if not isinstance(obj, (dict, list)):
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    if depth >= _MAX_PICKLE_DEPTH:
        raise pickle.UnpicklingError(f"containers nested more than {_MAX_PICKLE_DEPTH} deep")
    budget[0] -= len(obj)
    if budget[0] < 0:
        raise pickle.UnpicklingError(f"more than {_MAX_PICKLE_ELEMENTS:,} elements in all")
    if isinstance(obj, dict):
        out = memo[id(obj)] = {}
        for k, v in obj.items():
            out[k.decode("latin1") if isinstance(k, bytes) else k] = _unstub(v, memo, depth + 1, budget)
    else:
        out = memo[id(obj)] = []
        out.extend(_unstub(v, memo, depth + 1, budget) for v in obj)
    return out


def _read_python_batch(path: str):
    with _guard.open_regular(path, DataError) as f:
        raw = f.read()
    try:
        batch = _unstub(_DataUnpickler(io.BytesIO(raw), encoding="bytes").load())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, struct.error) as e:
        raise DataError(f"{path}: not a CIFAR-10 Python batch file ({_guard.short(e, 200)})") from None
    except MemoryError:  # a counted string longer than memory: the unpickler allocates before it reads
        raise DataError(f"{path}: not a CIFAR-10 Python batch file (it declares an object larger than memory)") \
            from None
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: a CIFAR-10 batch must be a dict with 'data' and 'labels'")
    labels = batch["labels"]
    if isinstance(labels, list) and not all(isinstance(v, int) for v in labels):
        raise DataError(f"{path}: 'labels' must be a list of integers")
    data, labels = batch["data"], np.asarray(labels)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be a uint8 array (N, 3072); got "
                        f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be {data.shape[0]} integers; got {labels.dtype} {labels.shape}")
    return data, labels


def _read_binary_batch(path: str):
    with _guard.open_regular(path, DataError) as f:
        raw = f.read()
    if len(raw) == 0 or len(raw) % 3073:
        raise DataError(f"{path}: a CIFAR-10 binary batch is records of 1 + 3072 bytes; the file has {len(raw)} bytes")
    records = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
    return records[:, 1:], records[:, 0].astype(np.int64)


def load_cifar10(path, split: str = "train") -> Dataset:
    """CIFAR-10 from a local copy: the Python batches or the binary batches.

    ``path`` is the folder ``cifar-10-batches-py`` (``data_batch_1`` ..
    ``data_batch_5``, ``test_batch``), or ``cifar-10-batches-bin``
    (``data_batch_1.bin`` .., ``test_batch.bin``), or a folder holding one of
    them. ``split`` is "train" (50,000) or "test" (10,000). Returns X float32
    (N, 3, 32, 32) in [0, 1] and y int64.

    The Python batches are pickles. They are read by an unpickler that
    refuses every global except the few a plain NumPy array names, and those
    it answers with local stand-ins (see ``_DataUnpickler``): a crafted file
    cannot run code. The binary batches are plain bytes.
    """
    path = os.fspath(path)
    if split not in ("train", "test"):
        raise ValueError(f"load_cifar10: `split` must be 'train' or 'test'; got {split!r}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"load_cifar10: {path} is not a folder (expected cifar-10-batches-py or -bin)")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    folders = [path, os.path.join(path, "cifar-10-batches-py"), os.path.join(path, "cifar-10-batches-bin")]
    for folder in folders:
        if all(os.path.isfile(os.path.join(folder, n)) for n in names):
            batches = [_read_python_batch(os.path.join(folder, n)) for n in names]
            break
        if all(os.path.isfile(os.path.join(folder, n + ".bin")) for n in names):
            batches = [_read_binary_batch(os.path.join(folder, n + ".bin")) for n in names]
            break
    else:
        raise FileNotFoundError(
            f"load_cifar10: no {names[0]} (Python batches) or {names[0]}.bin (binary batches) in {path}, "
            f"nor in its cifar-10-batches-py/ or cifar-10-batches-bin/")
    data = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches]).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"load_cifar10: labels must be 0..9; got values in [{labels.min()}, {labels.max()}]")
    X = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return Dataset(X, labels, CIFAR10_CLASSES, name="cifar10")


# -- your own arrays ---------------------------------------------------------------------


_NPZ_KEYS = ("X", "y", "X_test", "y_test", "classes")


def _npz_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    """One .npy member, its header checked against the member's declared size (and
    that against the compressed size) before the array is allocated."""
    if info.compress_type == zipfile.ZIP_STORED:
        plausible = info.file_size == info.compress_size
    else:
        plausible = info.file_size <= _DEFLATE_RATIO * info.compress_size + 1024
    if not plausible:
        raise DataError(f"{where}: the archive says it inflates {info.compress_size:,} bytes to "
                        f"{info.file_size:,}, more than compression allows")
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"npy format version {version} is not supported")
            shape, fortran, dtype = read_header(f)
        except (ValueError, SyntaxError, TypeError, EOFError) as e:
            raise DataError(f"{where}: not a .npy array ({_guard.short(e, 200)})") from None
        if dtype.hasobject:
            raise DataError(f"{where}: is not a .npz of plain arrays (it holds Python objects, a pickle)")
        if dtype.kind not in "biufcSU":  # records and sub-arrays: not images, labels or names
            raise DataError(f"{where}: must be a plain array of numbers or strings; got dtype {dtype}")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes != info.file_size - f.tell():
            raise DataError(f"{where}: the header declares shape {shape} of {dtype} ({nbytes:,} bytes); "
                            f"the member holds {info.file_size - f.tell():,}")
        _guard.check_memory(nbytes, where)
        array = np.empty(count, dtype)
        view, done = memoryview(array.view(np.uint8).reshape(-1)), 0
        while done < nbytes:  # in pieces: no second copy of the data
            piece = f.read(min(nbytes - done, 1 << 22))
            if not piece:
                raise DataError(f"{where}: truncated ({done:,} of {nbytes:,} bytes)")
            view[done:done + len(piece)] = piece
            done += len(piece)
    return array.reshape(shape, order="F" if fortran else "C")


def _read_npz(path: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays of _NPZ_KEYS in a .npz file (other members are never read), and all member names."""
    try:
        f = _guard.open_regular(path, DataError, "load_npz")
    except FileNotFoundError:
        raise FileNotFoundError(f"load_npz: no such file: {path}") from None
    with f:
        if f.read(6) == b"\x93NUMPY":
            raise DataError(f"load_npz: {path} is a .npy file (one array), not a .npz archive; "
                            "save X and y with np.savez(path, X=X, y=y)")
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as zf:
                names = [i.filename.removesuffix(".npy") for i in zf.infolist()]
                members = {i.filename[:-4]: i for i in zf.infolist() if i.filename[:-4] in _NPZ_KEYS
                           and i.filename.endswith(".npy")}
                return {k: _npz_member(zf, info, f"load_npz: {path} `{k}`") for k, info in members.items()}, names
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError,
                ValueError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"load_npz: {path} is not a .npz of plain arrays ({_guard.short(e, 200)})") from None


def _checked_images(X: np.ndarray, where: str) -> np.ndarray:
    """Images as float32 (N, C, H, W); values that are not real numbers or do not fit float32 are refused."""
    if X.ndim == 3:
        X = X[:, None]
    if X.ndim != 4:
        raise DataError(f"load_npz: images must be (N, C, H, W) or (N, H, W); got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{where} must hold real numbers (bool, int, uint or float); got dtype {X.dtype}")
    if X.dtype.kind == "f":
        big = max(abs(float(X.max(initial=0))), abs(float(X.min(initial=0))))  # NaN propagates; no copy
        if not math.isfinite(big):
            raise DataError(f"{where} must hold finite numbers; it holds NaN or infinity")
        if big > float(np.finfo(np.float32).max):
            raise DataError(f"{where} values must fit float32 (|x| <= {np.finfo(np.float32).max:.4g}); got {big:.4g}")
    return X.astype(np.float32) / 255.0 if X.dtype == np.uint8 else X.astype(np.float32)


def _checked_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise DataError(f"{where} must hold integer class indices; got dtype {y.dtype}")
    if y.shape != (n,):
        raise DataError(f"{where} must have shape ({n},) to match the images; got {y.shape}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= 2**31):
        raise DataError(f"{where} must be class indices in [0, 2**31); got values in [{int(y.min())}, {int(y.max())}]")
    return y.astype(np.int64)


def load_npz(path) -> dict[str, Dataset]:
    """Datasets from a ``.npz`` file of plain arrays (no pickles).

    Keys: ``X`` (N, C, H, W) or (N, H, W) images, ``y`` (N,) integer labels;
    optionally ``X_test``/``y_test``, and ``classes`` (an array of names).
    uint8 images are scaled by 1/255. Returns {"train": ..., "test": ...}
    (``test`` only when present).

    The file is untrusted: each member's header is checked against the sizes
    the archive declares before its array is allocated, images must be real,
    finite and fit float32, and without ``classes`` the number of classes
    (largest label + 1) may not exceed the number of examples.
    """
    path = os.fspath(path)
    arrays, names = _read_npz(path)
    if "X" not in arrays or "y" not in arrays:
        raise DataError(f"load_npz: {path} must hold arrays 'X' and 'y'; it has {_guard.short(sorted(names), 200)}")
    parts = {"train": ("X", "y")}
    if "X_test" in arrays and "y_test" in arrays:
        parts["test"] = ("X_test", "y_test")
    splits = {}
    for part, (xk, yk) in parts.items():
        X = _checked_images(arrays[xk], f"load_npz: {path} `{xk}`")
        splits[part] = (X, _checked_labels(arrays[yk], X.shape[0], f"load_npz: {path} `{yk}`"))
    top = max(int(y.max(initial=-1)) for _, y in splits.values()) + 1
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "USiu":
            raise DataError(f"load_npz: {path} `classes` must be a 1-d array of names; got {names.dtype} {names.shape}")
        classes = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in names.tolist()]
        if top > len(classes):
            raise DataError(f"load_npz: {path} has labels up to {top - 1}; `classes` names {len(classes)}")
    else:
        examples = sum(len(y) for _, y in splits.values())
        if top > examples:
            raise DataError(f"load_npz: {path} has labels up to {top - 1}, so {top:,} classes, more than its "
                            f"{examples:,} examples; labels must be class indices 0..K-1 (add a `classes` array "
                            "naming the K classes when some have no examples)")
        classes = [str(i) for i in range(top)]
    name = os.path.splitext(os.path.basename(path))[0]
    return {part: Dataset(X, y, classes, name=name) for part, (X, y) in splits.items()}
