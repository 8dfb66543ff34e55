"""Checkpoints: safetensors for arrays, JSON for the rest, no pickle, written atomically.

A checkpoint is a folder::

    best/
      model.safetensors       model.state_dict(): PyTorch's keys ("0.weight") and layouts
      optimizer.safetensors   optimizer buffers, keyed "state.<param index>.<buffer name>"
      checkpoint.json         optimizer hyperparameters and step counts, scheduler state,
                              and the caller's metadata (epoch, best metric, RNG states, ...)
      (more files the caller adds, e.g. history.json)

so a PyTorch model with the same layers loads the weights directly::

    from safetensors.torch import load_file
    torch_model.load_state_dict(load_file("runs/digits/best/model.safetensors"))

Writing is atomic: the files go to a temporary folder beside the target and
are fsynced with it; then the old folder is renamed to ``<name>.old``, the new
one to ``<name>``, the parent folder is fsynced and ``<name>.old`` removed. A
crash at any point leaves either the old or the new checkpoint complete; a
crash between the two renames leaves only ``<name>.old``, which
:func:`load_checkpoint` and the next :func:`save_checkpoint` use as ``<name>``.
"""

from __future__ import annotations

import copy
import glob
import json
import math
import os
import shutil
import tempfile

import numpy as np

from fastconv import _guard
from fastconv.nn.module import StateDictKeyError

FORMAT = "fastconv.train.checkpoint"
VERSION = 1
MODEL_FILE, OPTIMIZER_FILE, META_FILE = "model.safetensors", "optimizer.safetensors", "checkpoint.json"

__all__ = [
    "atomic_write",
    "atomic_write_json",
    "dumps_json",
    "load_checkpoint",
    "load_weights",
    "loads_json",
    "read_json",
    "read_metadata",
    "refuse_symlink",
    "require",
    "save_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, or does not fit the objects it is loaded into."""


class CheckpointKeyError(CheckpointError, StateDictKeyError):
    """A tensor file whose keys differ from the model's (a KeyError too, as ``load_state_dict`` raises)."""

    def __str__(self):  # not KeyError's quoted repr
        return str(self.args[0]) if self.args else ""


# -- atomic files -----------------------------------------------------------------------


def fsync_dir(path: str) -> None:
    """Make a rename or a new file in folder ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    A temporary file in the same folder is written and fsynced, renamed over
    ``path`` with ``os.replace``, and the folder fsynced.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    for stale in glob.glob(os.path.join(glob.escape(folder), glob.escape(os.path.basename(path)) + ".tmp-*")):
        try:  # left by a writer that was killed
            os.unlink(stale)
        except OSError:
            pass
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def _encode(obj):
    """JSON-ready: non-finite floats become {"__float__": "inf"}; tuples lists; numpy scalars Python."""
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _encode(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    return obj


def _decode(d: dict):
    if len(d) == 1 and "__float__" in d:
        return float(d["__float__"])
    return d


def dumps_json(obj, indent: int | None = None) -> str:
    """Strict JSON (no NaN/Infinity literals; those are tagged and restored by :func:`loads_json`)."""
    try:  # the fast path: plain Python data, finite floats
        return json.dumps(obj, indent=indent, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_encode(obj), indent=indent, allow_nan=False)


def loads_json(text: str):
    return json.loads(text, object_hook=_decode)


def atomic_write_json(path, obj, indent: int | None = 1) -> None:
    atomic_write(path, dumps_json(obj, indent).encode())


# -- checkpoints ------------------------------------------------------------------------


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:  # a runtime dependency; only a broken install lacks it
        raise ImportError("fastconv checkpoints need safetensors: pip install safetensors") from None
    return safetensors.numpy


def _existing(path: str) -> str | None:
    """The folder holding the checkpoint ``path``: itself, or ``path.old`` after an interrupted swap."""
    if os.path.isfile(os.path.join(path, META_FILE)):
        return path
    if not os.path.exists(path) and os.path.isfile(os.path.join(path + ".old", META_FILE)):
        return path + ".old"
    return None


def _split_optimizer_state(state: dict):
    tensors, scalars = {}, {}
    for i, buffers in state["state"].items():
        for name, value in buffers.items():
            if isinstance(value, np.ndarray) and value.ndim > 0:
                tensors[f"state.{i}.{name}"] = np.asarray(value, order="C")
            else:
                scalars.setdefault(str(i), {})[name] = value
    return tensors, scalars


def refuse_symlink(path) -> None:
    """Raise CheckpointError if checkpoint folder ``path`` is a symbolic link.

    Saving replaces the folder by renames, which would replace the link itself,
    not write through it; so a linked folder is refused before any work."""
    path = os.fspath(path).rstrip("/\\") or "."
    if os.path.islink(path):
        raise CheckpointError(f"checkpoint folder {_guard.short(path, 300)} is a symbolic link (to "
                              f"{_guard.short(os.readlink(path), 200)}); checkpoints are replaced by renaming, "
                              "which would not write through it: remove the link or write to the real folder")


def _remove(path: str, ignore_errors: bool = False) -> None:
    """Remove a folder, or only the link when it is a symbolic link (never what it points to)."""
    if os.path.islink(path):
        try:
            os.unlink(path)
        except OSError:
            if not ignore_errors:
                raise
    else:
        shutil.rmtree(path, ignore_errors=ignore_errors)


def save_checkpoint(path, model, optimizer=None, scheduler=None, meta: dict | None = None,
                    files: dict | None = None) -> str:
    """Write a complete checkpoint folder at ``path`` atomically; returns the path.

    ``meta`` (JSON-able: numbers, strings, lists, dicts; tuples become lists)
    is stored in checkpoint.json and returned by :func:`load_checkpoint`.
    ``files`` maps extra file names to bytes written into the same folder.
    """
    st = _safetensors()
    path = os.fspath(path).rstrip("/\\") or "."
    parent, base = os.path.dirname(path) or ".", os.path.basename(path)
    refuse_symlink(path)
    os.makedirs(parent, exist_ok=True)
    payload = {MODEL_FILE: st.save({k: np.asarray(v, order="C") for k, v in model.state_dict().items()},
                                   metadata={"format": "pt"})}
    info = {"format": FORMAT, "version": VERSION, "model_keys": list(model.state_dict().keys()),
            "optimizer": None, "scheduler": None, "meta": meta or {}}
    if optimizer is not None:
        state = optimizer.state_dict()
        tensors, scalars = _split_optimizer_state(state)
        payload[OPTIMIZER_FILE] = st.save(tensors)
        info["optimizer"] = {"type": type(optimizer).__name__, "param_groups": state["param_groups"],
                             "scalars": scalars}
    if scheduler is not None:
        info["scheduler"] = {"type": type(scheduler).__name__, "state": scheduler.state_dict()}
    payload[META_FILE] = dumps_json(info, indent=1).encode()
    for name, data in (files or {}).items():
        if os.path.basename(name) != name or name in payload:
            raise ValueError(f"save_checkpoint: extra file name {name!r} must be a plain file name, not a reserved one")
        payload[name] = data

    for stale in glob.glob(os.path.join(glob.escape(parent), glob.escape(base) + ".tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=base + ".tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        for name, data in payload.items():
            _write_synced(os.path.join(tmp, name), data)
        fsync_dir(tmp)
        old = path + ".old"
        if os.path.islink(old):  # not a folder this function made
            os.unlink(old)
        if not os.path.exists(path) and os.path.isdir(old):
            os.rename(old, path)  # finish a swap a crash interrupted: old is the last complete one
        if os.path.exists(path):
            if os.path.exists(old):
                _remove(old)
            os.rename(path, old)
            fsync_dir(parent)
        os.rename(tmp, path)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove(path + ".old", ignore_errors=True)
    return path


def read_metadata(path) -> dict:
    """The whole checkpoint.json of checkpoint ``path`` (with the caller's data under "meta")."""
    path = os.fspath(path)
    folder = _existing(path)
    if folder is None:
        what = "is not a checkpoint folder (no checkpoint.json in it)" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"checkpoint {path} {what}")
    info = read_json(path, folder, META_FILE, _MAX_HEADER)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: checkpoint.json is not a fastconv checkpoint")
    version = info.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"checkpoint {path}: checkpoint.json `version` must be an int; got {version!r}")
    if version > VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {info['version']} is newer than this "
                              f"fastconv reads ({VERSION}); upgrade fastconv")
    _check_structure(path, info)
    info["folder"] = folder
    return info


def require(path, where: str, value, ok: bool, expected: str) -> None:
    """Raise CheckpointError "checkpoint PATH: WHERE must be EXPECTED; got VALUE" unless ``ok``."""
    if not ok:
        raise CheckpointError(f"checkpoint {path}: {where} must be {expected}; got {_guard.short(repr(value), 120)}")


def read_json(path, folder: str, name: str, max_bytes: int | None = None):
    """A JSON file of checkpoint ``path`` (in ``folder``), e.g. history.json."""
    file = os.path.join(folder, name)
    try:
        f = _guard.open_regular(file, CheckpointError, f"checkpoint {path}", max_bytes)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: {name} is missing") from None
    with f:
        try:
            return loads_json(f.read().decode("utf-8"))
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise CheckpointError(f"checkpoint {path}: {name} is not valid UTF-8 JSON "
                                  f"({type(e).__name__}: {str(e)[:200]})") from None


def _check_structure(path, info: dict) -> None:
    """The parts of checkpoint.json the loaders index into have the types they expect."""
    def need(ok, what, value):
        if not ok:
            raise CheckpointError(f"checkpoint {path}: checkpoint.json `{what}` is malformed; got {str(value)[:200]}")

    keys = info.get("model_keys")
    need(isinstance(keys, list) and all(isinstance(k, str) for k in keys), "model_keys", keys)
    need(isinstance(info.get("meta"), dict), "meta", info.get("meta"))
    opt = info.get("optimizer")
    if opt is not None:
        need(isinstance(opt, dict) and isinstance(opt.get("type"), str), "optimizer", opt)
        groups, scalars = opt.get("param_groups"), opt.get("scalars")
        need(isinstance(groups, list) and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                              for g in groups), "optimizer.param_groups", groups)
        need(isinstance(scalars, dict) and all(k.isdigit() and isinstance(v, dict) for k, v in scalars.items()),
             "optimizer.scalars", scalars)
    sched = info.get("scheduler")
    if sched is not None:
        need(isinstance(sched, dict) and isinstance(sched.get("type"), str) and isinstance(sched.get("state"), dict),
             "scheduler", sched)


# safetensors dtype names and the NumPy dtypes fastconv checkpoints hold.
_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def _read_header(file: str, folder: str, name: str, max_header: int = _MAX_HEADER) -> tuple[int, dict]:
    """(header length, {key: (dtype, shape, start, end)}) of a safetensors file, each
    entry checked against the format and the file's size, without building any array."""
    def bad(why):
        return CheckpointError(f"checkpoint {folder}: {name} is not a valid safetensors file ({why})")

    with _guard.open_regular(file, CheckpointError, f"checkpoint {folder}") as f:
        size = os.fstat(f.fileno()).st_size
        raw = f.read(8)
        if len(raw) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(raw, "little")
        if n > min(size - 8, max_header):
            raise bad(f"header length {n} exceeds the file ({size} bytes) or the {max_header} bytes "
                      "that the tensors it may hold need")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise bad(f"header is not JSON: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise bad("__metadata__ must map names to strings")
    data, out = size - 8 - n, {}
    for key, entry in header.items():
        try:
            dtype, shape, (start, end) = _DTYPES[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"]
            ok = (entry.keys() == _ENTRY_KEYS and all(type(d) is int and 0 <= d < 2**48 for d in shape)
                  and type(start) is int and type(end) is int and 0 <= start <= end <= data
                  and end - start == np.dtype(dtype).itemsize * math.prod(shape))
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise bad(f"tensor {_guard.short(key, 60)!r} has a bad dtype, shape or offsets: "
                      f"{_guard.short(entry, 200)}")
        out[key] = (np.dtype(dtype), shape, start, end)
    position = 0
    for key, (_, _, start, end) in sorted(out.items(), key=lambda item: item[1][2:]):
        if start != position:  # the format's own rule: tensors tile the data, no gaps, no overlaps
            raise bad(f"tensor {_guard.short(key, 60)!r} starts at byte {start}; the one before ends at {position}")
        position = end
    if position != data:
        raise bad(f"the tensors hold {position} bytes; the data part of the file has {data}")
    return n, out


def _check_tensors(folder: str, name: str, found: dict, expected: dict) -> None:
    """Keys, dtypes and shapes of a tensor file against what the objects it loads into hold."""
    if found.keys() != expected.keys():
        missing = [k for k in expected if k not in found]
        unexpected = [k for k in found if k not in expected]
        raise CheckpointKeyError(f"checkpoint {folder}: {name} does not fit: missing keys {_guard.few(missing)}; "
                              f"unexpected keys {_guard.few(unexpected)}")
    for key in found:
        (dtype, shape, _, _), (want_dtype, want_shape) = found[key], expected[key]
        if (dtype, shape) != (want_dtype, want_shape):
            raise CheckpointError(f"checkpoint {folder}: {name} `{key}` must be {want_dtype} with shape "
                                  f"{want_shape}; got {dtype} with shape {shape}")


def _header_bound(names) -> int:
    """The longest header that tensors of these names can need (an entry is its name and < 256 bytes);
    a longer one is refused before it is parsed."""
    return 2**16 + sum(len(k) + 256 for k in names)


def _load_tensors(folder: str, name: str, expected=None, order=(), max_header: int = _MAX_HEADER) -> dict:
    """The arrays of a tensor file; with ``expected`` ({key: (dtype, shape)} or a function
    of the header giving it), keys, dtypes and shapes are checked from the header first.

    The arrays are read with plain reads at the offsets the checked header gives,
    so what a file costs is what its tensors need."""
    file = os.path.join(folder, name)
    if not os.path.isfile(file):
        raise CheckpointError(f"checkpoint {folder}: {name} is missing")
    n, found = _read_header(file, folder, name, max_header)
    found = {**{k: found[k] for k in order if k in found}, **found}  # messages list keys in the model's order
    if expected is not None:
        _check_tensors(folder, name, found, expected(found) if callable(expected) else expected)
    _guard.check_memory(sum(end - start for _, _, start, end in found.values()), f"checkpoint {folder}: {name}")
    out = {}
    with _guard.open_regular(file, CheckpointError, f"checkpoint {folder}") as f:
        for key, (dtype, shape, start, end) in found.items():
            f.seek(8 + n + start)
            buf = bytearray(end - start)
            if f.readinto(buf) != len(buf):
                raise CheckpointError(f"checkpoint {folder}: {name} changed while it was read")
            out[key] = np.frombuffer(buf, dtype.newbyteorder("<")).reshape(shape).astype(dtype, copy=False)
    return out


def _in_model_order(info: dict, weights: dict) -> dict:
    """safetensors sorts its keys; give them back in the model's order (as ``state_dict()``)."""
    order = [k for k in info.get("model_keys", []) if k in weights]
    return {**{k: weights[k] for k in order}, **{k: v for k, v in weights.items() if k not in order}}


def _model_tensors(info: dict, model=None) -> dict:
    """The model file's arrays in the model's order; with ``model``, checked against its state dict."""
    expected, bound = None, _MAX_HEADER
    if model is not None:
        expected = {k: (np.asarray(v).dtype, np.shape(v)) for k, v in model.state_dict().items()}
        bound = _header_bound(expected)
    return _in_model_order(info, _load_tensors(info["folder"], MODEL_FILE, expected, info["model_keys"], bound))


def load_weights(path, model=None) -> dict:
    """The model weights of checkpoint ``path`` as {PyTorch key: numpy array}, in the model's order.

    With ``model``, the file's keys, dtypes and shapes are checked against the
    model's state dict (from the header, before any tensor is read); the model
    itself is not changed."""
    return _model_tensors(read_metadata(path), model)


def load_checkpoint(path, model=None, optimizer=None, scheduler=None) -> dict:
    """Load checkpoint ``path`` into the given objects (those given); returns its metadata.

    All files are read, and the optimizer's and scheduler's types checked,
    before anything changes; each object's ``load_state_dict`` then checks
    keys and shapes (a mismatch raises naming the key).
    """
    info = read_metadata(path)
    folder = info["folder"]
    weights = None
    if model is not None:
        weights = _model_tensors(info, model)
    opt_state = None
    if optimizer is not None:
        saved = info.get("optimizer")
        if saved is None:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state")
        if saved["type"] != type(optimizer).__name__:
            raise CheckpointError(f"checkpoint {path} holds {saved['type']} state; the optimizer is "
                                  f"{type(optimizer).__name__}")
        shapes = [p.data.shape for g in optimizer.param_groups for p in g["params"]]

        def expected(found):  # any buffer name, for an existing parameter, of its shape
            want = {}
            for key, (dtype, shape, _, _) in found.items():
                parts = key.split(".", 2)
                if len(parts) == 3 and parts[0] == "state" and parts[1].isdigit() and int(parts[1]) < len(shapes):
                    want[key] = (np.dtype(np.float32) if dtype.kind == "f" else dtype, shapes[int(parts[1])])
            return want

        state: dict = {}
        bound = _header_bound(f"state.{i}.max_exp_avg_sq" for i in range(len(shapes)) for _ in range(4))
        for key, value in _load_tensors(folder, OPTIMIZER_FILE, expected, max_header=bound).items():
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = value
        for i, scalars in saved["scalars"].items():
            state.setdefault(int(i), {}).update(scalars)
        groups = []
        for g, mine in zip(saved["param_groups"], optimizer.param_groups):
            # JSON has no tuples: give back the types the optimizer uses (Adam's betas).
            groups.append({k: tuple(v) if isinstance(mine.get(k), tuple) else v for k, v in g.items()})
        groups += saved["param_groups"][len(groups):]
        opt_state = {"state": state, "param_groups": groups}
    if scheduler is not None:
        saved = info.get("scheduler")
        if saved is None or saved["type"] != type(scheduler).__name__:
            have = saved["type"] if saved else "no scheduler"
            raise CheckpointError(f"checkpoint {path} holds {have} state; the scheduler is {type(scheduler).__name__}")
    # Each load_state_dict checks everything before it changes anything; the scheduler's
    # is tried on a copy first, so a refusal anywhere leaves every object as it was.
    if scheduler is not None:
        _load_into(path, "scheduler", copy.copy(scheduler).load_state_dict, info["scheduler"]["state"])
    if optimizer is not None:
        _load_into(path, "optimizer", optimizer.load_state_dict, opt_state)
    if scheduler is not None:
        scheduler.load_state_dict(info["scheduler"]["state"])
    if model is not None:
        model.load_state_dict(weights)
    return info["meta"]


def _load_into(path, what: str, load, state) -> None:
    try:
        load(state)
    except (ValueError, TypeError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise CheckpointError(f"checkpoint {path}: the saved {what} state does not fit: "
                              f"{_guard.short(message, 400)}") from None
