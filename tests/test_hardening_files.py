"""Hostile files cost no more than their size: crafted datasets and checkpoints, each
opened in a child process under RLIMIT_AS 1.5 GiB and a time limit (tests/limited.py).

Every case must end in its clear one-line error (or load, where the file is
valid), with a peak RSS under 300 MB and within a generous time, though each
file (under 10 MB on disk) declares gigabytes or billions of elements: the
unfixed loaders used 3-6 GiB or ran for minutes on them. The children run a
few at a time, so the module takes some seconds.

``FASTCONV_HOSTILE_LONG=1`` makes the bombs as large as in the report (a 3 GiB
IDX inflation, a 5 GiB sparse tensor, a header of a million keys) and lets
hypothesis try many more headers.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import io
import json
import os
import pickle
import shutil
import struct
import sys
import tempfile
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limited import CALL, CLI, address_space_limit, run_limited

import fastconv.data as D
from fastconv.train import checkpoint as ckpt

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and wait4 rusage: Linux")

LONG = bool(os.environ.get("FASTCONV_HOSTILE_LONG"))
PEAK_RSS = 300 * 2**20
SECONDS = 30  # CPU seconds of the child (wall time varies with the host's load); the unfixed loaders took minutes or died


@dataclasses.dataclass
class Case:
    name: str
    build: object           # build(folder) writes the crafted files
    args: list              # the child's argv after `python`
    code: int = 1           # expected exit code
    expect: tuple = ()      # substrings of the one error line (or of stdout when code is 0)


# -- builders ---------------------------------------------------------------------------------


def _npz(folder, name, **arrays):
    np.savez(folder / name, **arrays)


def _images(n=2):
    return np.zeros((n, 1, 4, 4), np.float32)


def _npz_header_only(folder, name, shape, dtype="<f4", body=64):
    """An .npz whose X member's header declares `shape` but which holds `body` bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    labels = io.BytesIO()
    np.save(labels, np.array([0, 1]))
    with zipfile.ZipFile(folder / name, "w") as z:
        z.writestr("X.npy", header.getvalue() + bytes(body))
        z.writestr("y.npy", labels.getvalue())


def _npz_lying_sizes(folder, name):
    """A stored X member whose central directory claims 4 GiB uncompressed."""
    _npz(folder, name, X=_images(), y=np.array([0, 1]))
    raw = bytearray((folder / name).read_bytes())
    at = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"y.npy"))  # X's central directory entry
    raw[at + 24:at + 28] = struct.pack("<I", 2**32 - 1)     # its uncompressed size
    (folder / name).write_bytes(bytes(raw))


def _cifar(folder, batch: dict, protocol=2):
    """A cifar-10-batches-py folder whose test_batch pickles `batch` (or is raw bytes)."""
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    (d / "test_batch").write_bytes(batch if isinstance(batch, bytes) else pickle.dumps(batch, protocol=protocol))


def _shared_filenames(folder):
    # 342 bytes of pickle; 2**30 paths if each shared reference is followed.
    nested = []
    for _ in range(30):
        nested = [nested, nested]
    _cifar(folder / "shared", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"filenames": nested})


def _deep_nesting(folder):
    k = 200_000
    _cifar(folder / "deep", b"\x80\x02}(C\x04dataC\x00C\x06labels" + b"]" * k + b"a" * (k - 1) + b"u.")


def _huge_bytes(folder):
    # BINBYTES8 declaring 2**40 bytes: the unpickler allocates before it reads.
    _cifar(folder / "bytes8", b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"abc")


def _many_elements(folder):
    n = 4_200_000  # over the 4M element budget, 8.4 MB of pickle
    _cifar(folder / "many", b"\x80\x02}(C\x04dataC\x00C\x06labels](" + b"K\x00" * n + b"eu.")


def _gzip_bomb(path, header: bytes, inflated: int):
    """A valid gzip file of `header` and then `inflated` zero bytes, built from one
    repeated fully-flushed deflate block (cheap however large it claims to be)."""
    chunk = bytes(1 << 24)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    count = inflated // len(chunk)
    crc = zlib.crc32(header)
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    size = len(header) + count * len(chunk)
    path.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + first + block * count + c.flush()
                     + struct.pack("<II", crc, size & 0xFFFFFFFF))


def _idx_bomb(folder):
    # The header says 1x28x28; the stream inflates to 0.5 GiB more (3 GiB in long mode).
    _gzip_bomb(folder / "bomb-idx.gz", struct.pack(">IIII", 2051, 1, 28, 28) + bytes(784),
               (3 << 30) if LONG else (1 << 29))


def _idx_claims(folder):
    (folder / "claims-idx.gz").write_bytes(gzip.compress(struct.pack(">IIII", 2051, 60000, 2800, 2800) + bytes(1000)))
    (folder / "claims-idx").write_bytes(struct.pack(">IIII", 2051, 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(1000))
    (folder / "truncated-idx.gz").write_bytes(gzip.compress(struct.pack(">IIII", 2051, 10, 28, 28) + bytes(100))[:-12])


def _run(folder):
    """A real run folder (fastconv train, 1 epoch) to spoil copies of; built once."""
    out = folder / "run"
    if not out.exists():
        result = run_limited(["-c", CLI, "train", "--arch", "fc8-relu-fc10", "--epochs", "2", "--threads", "1",
                              "--no-plots", "--out", out], folder)
        assert result.returncode == 0, result.stderr
    return out


def _spoiled_run(name, spoil):
    def build(folder):
        target = folder / name
        shutil.copytree(_run(folder), target)
        spoil(target)
    return build


def _edit_json(path, change):
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


def _safetensors_parts(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_safetensors(path, header, body, size=None):
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + body)
        if size is not None:
            f.truncate(8 + len(text) + size)  # sparse: the file declares it, the disk holds nothing


def _extra_tensor(run):
    """One more tensor of 3 GiB (5 GiB in long mode) in a sparse file of a few KB."""
    path = run / "best" / "model.safetensors"
    header, body = _safetensors_parts(path)
    nbytes = (5 << 30) if LONG else (3 << 30)
    header["evil"] = {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [len(body), len(body) + nbytes]}
    _write_safetensors(path, header, body, len(body) + nbytes)


def _many_keys(run):
    path = run / "best" / "model.safetensors"
    header, body = _safetensors_parts(path)
    for i in range(10**6 if LONG else 10**5):
        header[f"k{i}"] = {"dtype": "F32", "shape": [0], "data_offsets": [len(body), len(body)]}
    _write_safetensors(path, header, body)


def _wrong_best_shape(run):
    """best/ of another model (a resumed run must refuse it before its first epoch)."""
    path = run / "best" / "model.safetensors"
    header, body = _safetensors_parts(path)
    header["1.weight"]["shape"] = header["1.weight"]["shape"][::-1]
    _write_safetensors(path, header, body)


def _junk_optimizer_keys(run):
    path = run / "last" / "optimizer.safetensors"
    header, body = _safetensors_parts(path)
    key = next(k for k in header if k != "__metadata__")
    header["junk"] = header.pop(key)
    _write_safetensors(path, header, body)


def _meta(run, folder, change):
    _edit_json(run / folder / "checkpoint.json", change)


def _symlinked_best(run):
    shutil.move(run / "best", run / "real-best")
    os.symlink("real-best", run / "best")


def _special(folder):
    os.mkfifo(folder / "fifo.toml")
    os.mkfifo(folder / "fifo.npz")
    (folder / "huge.toml").write_text("# padding\n" * 200_000)


RESUME = ["-c", CLI, "train", "--resume", "--epochs", "4", "--no-plots", "--threads", "1", "--out"]
CASES = [
    # .npz
    Case("npz-label-2**40", lambda f: _npz(f, "y40.npz", X=_images(), y=np.array([0, 2**40])),
         ["-c", CALL, "D.load_npz('y40.npz')"], expect=("DataError", "y40.npz", "`y`", "1099511627776")),
    Case("npz-label-2**30", lambda f: _npz(f, "y30.npz", X=_images(), y=np.array([0, 2**30])),
         ["-c", CALL, "D.load_npz('y30.npz')"], expect=("DataError", "1,073,741,825 classes", "2 examples")),
    Case("npz-huge-shape", lambda f: _npz_header_only(f, "shape.npz", (2**20, 1, 1024, 1024)),
         ["-c", CLI, "train", "--data", "shape.npz"], expect=("shape.npz", "`X`", "(1048576, 1, 1024, 1024)")),
    Case("npz-lying-sizes", lambda f: _npz_lying_sizes(f, "lying.npz"),
         ["-c", CALL, "D.load_npz('lying.npz')"], expect=("DataError", "lying.npz", "4,294,967,295")),
    Case("npy-renamed", lambda f: np.save(f / "one.npy", np.zeros(3)) or os.replace(f / "one.npy", f / "one.npz"),
         ["-c", CLI, "train", "--data", "one.npz"], expect=("one.npz is a .npy file",)),
    Case("npz-complex", lambda f: _npz(f, "complex.npz", X=_images().astype(np.complex64), y=np.array([0, 1])),
         ["-c", CALL, "D.load_npz('complex.npz')"], expect=("`X` must hold real numbers", "complex64")),
    Case("npz-beyond-float32", lambda f: _npz(f, "big.npz", X=np.full((2, 1, 4, 4), 1e300), y=np.array([0, 1])),
         ["-c", CALL, "D.load_npz('big.npz')"], expect=("`X` values must fit float32", "1e+300")),
    Case("npz-uint64-labels", lambda f: _npz(f, "u64.npz", X=_images(), y=np.array([0, 2**63], np.uint64)),
         ["-c", CALL, "D.load_npz('u64.npz')"], expect=("`y` must be class indices", "9223372036854775808")),
    Case("npz-fifo", _special, ["-c", CLI, "train", "--data", "fifo.npz"],
         expect=("fifo.npz must be a regular file; it is a FIFO",)),
    # CIFAR-10 Python batches
    Case("cifar-shared-references", _shared_filenames, ["-c", CALL, "D.load_cifar10('shared', 'test')"], code=0,
         expect=("ok Dataset",)),
    Case("cifar-deep-nesting", _deep_nesting, ["-c", CALL, "D.load_cifar10('deep', 'test')"],
         expect=("DataError", "test_batch", "nested more than 32 deep")),
    Case("cifar-huge-bytes", _huge_bytes, ["-c", CALL, "D.load_cifar10('bytes8', 'test')"],
         expect=("DataError", "larger than memory")),
    Case("cifar-many-elements", _many_elements, ["-c", CALL, "D.load_cifar10('many', 'test')"],
         expect=("DataError", "more than 4,194,304 elements")),
    # IDX (MNIST)
    Case("idx-gzip-bomb", _idx_bomb, ["-c", CALL, "D.read_idx('bomb-idx.gz')"],
         expect=("DataError", "bomb-idx.gz", "holds more than the 800 bytes", "(1, 28, 28)")),
    Case("idx-gzip-claims", _idx_claims, ["-c", CALL, "D.read_idx('claims-idx.gz')"],
         expect=("claims-idx.gz", "470400000000 bytes", "cannot hold more than")),
    Case("idx-claims", _idx_claims, ["-c", CALL, "D.read_idx('claims-idx')"],
         expect=("claims-idx", "(4294967295, 4294967295, 4294967295) has more than 2**48 elements")),
    Case("idx-truncated-gzip", _idx_claims, ["-c", CALL, "D.read_idx('truncated-idx.gz')"],
         expect=("truncated-idx.gz", "gzip")),
    # safetensors checkpoints
    Case("ckpt-extra-3GiB-tensor", _spoiled_run("extra", _extra_tensor), ["-c", CLI, "evaluate", "extra"],
         expect=("model.safetensors does not fit", "unexpected keys ['evil']")),
    Case("ckpt-extra-tensor-load_weights", _spoiled_run("extra2", _extra_tensor),
         ["-c", CALL, "C.load_weights('extra2/best', __import__('fastconv').models.load_model('run/best')[0])"],
         expect=("unexpected keys ['evil']",)),
    Case("ckpt-many-keys", _spoiled_run("keys", _many_keys), ["-c", CLI, "evaluate", "keys"],
         expect=("model.safetensors is not a valid safetensors file", "that the tensors it may hold need")),
    Case("ckpt-best-wrong-shape-on-resume", _spoiled_run("shape", _wrong_best_shape), RESUME + ["shape"],
         expect=("best", "`1.weight` must be float32 with shape")),
    Case("ckpt-optimizer-junk-keys", _spoiled_run("junk", _junk_optimizer_keys), RESUME + ["junk"],
         expect=("optimizer.safetensors does not fit", "'junk'")),
    # tampered metadata
    Case("meta-best-epoch-out-of-range", _spoiled_run(
        "best99", lambda r: _meta(r, "last", lambda j: j["meta"].update(best_epoch=99))),
        ["-c", CLI, "train", "--resume", "--epochs", "2", "--no-plots", "--out", "best99"],
        expect=("`meta.best_epoch` must be null or an int in [1, 2]; got 99",)),
    Case("meta-user-data-7", _spoiled_run("data7", lambda r: _meta(r, "best", lambda j: j["meta"]["user"].update(data=7))),
         ["-c", CLI, "evaluate", "data7"], expect=("`meta.user.data` must be a data set name or path; got 7",)),
    Case("meta-lr-negative", _spoiled_run(
        "lr", lambda r: _meta(r, "last", lambda j: j["optimizer"]["param_groups"][0].update(lr=-1))),
        RESUME + ["lr"], expect=("last", "optimizer state does not fit", "`lr` must be a finite number >= 0; got -1")),
    Case("meta-step-not-a-number", _spoiled_run(
        "step", lambda r: _meta(r, "last", lambda j: j["optimizer"]["scalars"]["0"].update(step="x"))),
        RESUME + ["step"], expect=("'step' of parameter 0 must be a finite number >= 0",)),
    Case("meta-scheduler-state", _spoiled_run(
        "sched", lambda r: _meta(r, "last", lambda j: j["scheduler"]["state"].update(last_epoch=[1]))),
        RESUME + ["sched"], expect=("scheduler state does not fit", "`last_epoch`")),
    Case("meta-history-length", _spoiled_run(
        "hist", lambda r: _edit_json(r / "last" / "history.json", lambda j: j.update(val_loss=[1.0]))),
        RESUME + ["hist"], expect=("history.json `val_loss` must be a list of 2 numbers",)),
    Case("ckpt-symlinked-best", _spoiled_run("link", _symlinked_best), RESUME + ["link"],
         expect=("link/best is a symbolic link",)),
    # special files
    Case("config-dev-zero", lambda f: None, ["-c", CLI, "train", "--config", "/dev/zero"],
         expect=("/dev/zero must be a regular file; it is a device",)),
    Case("config-fifo", _special, ["-c", CLI, "train", "--config", "fifo.toml"], expect=("it is a FIFO",)),
    Case("config-too-big", _special, ["-c", CLI, "train", "--config", "huge.toml"],
         expect=("huge.toml must be at most 1,048,576 bytes",)),
    # the memory guard
    Case("weights-of-9.5GiB", lambda f: None, ["-c", CLI, "train", "--arch", "fc40000000-fc10", "--out", "w"],
         expect=("Linear: `weight`", "(40000000, 64)", "RLIMIT_AS")),
    Case("conv-output-of-1.9GiB", lambda f: None,
         ["-c", CLI, "train", "--arch", "conv8x3p700-pool700-fc10", "--threads", "1", "--no-plots", "--out", "c"],
         expect=("conv2d", "(32, 8, 1406, 1406)", "RLIMIT_AS")),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Build every case's files, then run the children a few at a time."""
    folder = tmp_path_factory.mktemp("hostile")
    built = set()
    for case in CASES:
        if case.build not in built:
            case.build(folder)
            built.add(case.build)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = {c.name: pool.submit(run_limited, c.args, folder) for c in CASES}
        return {name: f.result() for name, f in futures.items()}, folder


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_file_gives_its_error_in_bounded_memory_and_time(outcomes, case):
    results, folder = outcomes
    r = results[case.name]
    assert not r.timed_out, f"{case.name}: killed after {r.seconds:.0f} s"
    assert r.returncode == case.code, (case.name, r.returncode, r.stderr[-2000:])
    text = r.stdout if case.code == 0 else r.error_line()
    assert len(text) < 1000, text
    for part in case.expect:
        assert part in text, (case.name, part, text)
    assert r.peak_rss < PEAK_RSS, f"{case.name}: peak RSS {r.peak_rss / 2**20:.0f} MiB"
    assert r.cpu_seconds < SECONDS, f"{case.name}: {r.cpu_seconds:.1f} s of CPU ({r.seconds:.1f} s wall)"


def test_the_crafted_files_are_small(outcomes):
    """What the bounds are relative to: each crafted file is under 10 MB on disk
    (the long mode's million-key header excepted)."""
    _, folder = outcomes
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert os.stat(path).st_blocks * 512 < (100 if LONG else 10) * 2**20, path


def test_the_resumed_run_with_a_bad_best_stops_before_its_first_epoch(outcomes):
    results, _ = outcomes
    assert "epoch 3/4" not in results["ckpt-best-wrong-shape-on-resume"].stdout


# -- hypothesis: any header, in-process, bounded allocation ------------------------------------------

EXAMPLES = 400 if LONG else 40
_fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALLOCATED = 16 * 2**20  # what a loader may allocate for any of these files of a few hundred bytes


def _bounded(load, errors):
    """Call load(); it returns or raises one of `errors`, allocating under ALLOCATED
    (and under an address-space limit, should it try far more)."""
    tracemalloc.start()
    try:
        with address_space_limit(2**30):
            load()
    except errors as e:
        assert "\n" not in str(e) and len(str(e)) < 1000, str(e)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < ALLOCATED, peak


@_fuzz
@given(code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]), dims=st.lists(
    st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)), min_size=0, max_size=5),
    body=st.binary(max_size=300), gz=st.booleans(), trailing=st.binary(max_size=20))
def test_any_idx_header_is_bounded(code, dims, body, gz, trailing):
    raw = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x-idx")
        with open(path, "wb") as f:
            f.write((gzip.compress(raw) + trailing) if gz else raw)
        _bounded(lambda: D.read_idx(path), D.DataError)


@_fuzz
@given(shape=st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**40)), min_size=0, max_size=4),
       dtype=st.sampled_from(["<f4", "<f8", "|u1", "<i8", "<c8", "|b1", ">f4", "<U3", "<f4,<i4", "('<f4', (1000000,))"]),
       body=st.integers(0, 400), labels=st.lists(st.integers(-3, 2**62), min_size=0, max_size=6))
def test_any_npz_member_header_is_bounded(shape, dtype, body, labels):
    header = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype(eval(dtype) if dtype.startswith("(") else dtype))
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    y = io.BytesIO()
    np.save(y, np.array(labels, np.int64))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.npz")
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("X.npy", header.getvalue() + bytes(body))
            z.writestr("y.npy", y.getvalue())
        _bounded(lambda: D.load_npz(path), D.DataError)


@_fuzz
@given(entries=st.dictionaries(st.sampled_from(["0.weight", "0.bias", "x", "__metadata__"]), st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F64", "I64", "BF16", 3]),
    "shape": st.lists(st.one_of(st.integers(0, 8), st.integers(-1, 2**50)), max_size=3),
    "data_offsets": st.lists(st.one_of(st.integers(0, 200), st.integers(-5, 2**50)), min_size=0, max_size=3)})),
    body=st.integers(0, 256), length=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_any_safetensors_header_is_bounded(entries, body, length):
    import fastconv as fc

    model = fc.Sequential(fc.Linear(4, 2))
    with tempfile.TemporaryDirectory() as d:
        ckpt.save_checkpoint(os.path.join(d, "c"), model)
        text = json.dumps(entries).encode()
        with open(os.path.join(d, "c", "model.safetensors"), "wb") as f:
            f.write(struct.pack("<Q", len(text) if length is None else length) + text + bytes(body))
        _bounded(lambda: ckpt.load_checkpoint(os.path.join(d, "c"), model), ckpt.CheckpointError)
        _bounded(lambda: ckpt.load_weights(os.path.join(d, "c")), ckpt.CheckpointError)
