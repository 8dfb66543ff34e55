"""``fastconv predict CHECKPOINT IMAGE...``: the top classes of a trained model on image files.

Images are read by :mod:`fastconv.data.images`, scaled to [0, 1] and normalized
with the checkpoint's statistics, exactly as the training data was; they go
through the model in batches. Output: a table with one row per file (the top
k classes and their softmax probabilities), or ``--json``. The first file that
cannot be read stops the command, or with ``--skip-errors`` is reported on
stderr and skipped.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row maximum so nothing overflows."""
    z = np.asarray(scores, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predict_files(model, paths, input_shape, normalizer, resize: bool = False, batch_size: int = 64,
                  progress: bool = False, on_error=None):
    """Yield (path, class probabilities) for each of ``paths``, in order, ``batch_size`` files
    at a time. A file that cannot be read or decoded raises :class:`fastconv.data.DataError`
    (or OSError) naming it, or, when ``on_error`` is given, is passed to ``on_error(path,
    error)`` and left out."""
    from tqdm.auto import tqdm

    from fastconv.data import DataError
    from fastconv.data.images import read_model_input

    with tqdm(total=len(paths), unit="image", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            read = []
            for path in paths[start:start + batch_size]:
                try:
                    read.append((path, read_model_input(path, input_shape, resize, name=f"image {path}")))
                except (DataError, OSError) as e:
                    if on_error is None:
                        raise
                    on_error(path, e)
            if read:
                names, X = zip(*read)
                yield from zip(names, softmax(model(normalizer(np.stack(X)))))
            bar.update(min(batch_size, len(paths) - start))


def _reason(path, error) -> str:
    """One line saying why ``path`` was not predicted."""
    if isinstance(error, OSError) and error.strerror:  # permission denied, gone since listed, ...
        return f"image {path}: {error.strerror}"
    return " ".join(str(error).split())


def _top(probs: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-probs, kind="stable")[:k]  # ties: the lower class index first


def run(checkpoint: str, sources, top_k: int = 3, batch_size: int = 64, resize: bool = False,
        as_json: bool = False, progress: bool | None = None, skip_errors: bool = False, out=None, err=None,
        stdin=None) -> int:
    """The command: predict on the images of ``sources`` (files, folders, "-") and print to ``out``.
    With ``skip_errors`` a missing or unreadable file is reported on ``err`` and skipped, and a
    count of them ends the output; if every file fails, ValueError."""
    from tqdm.auto import tqdm

    from fastconv.data import Normalizer
    from fastconv.data.images import IMAGE_EXTENSIONS, list_images
    from fastconv.models import load_model

    out, err = out or sys.stdout, err or sys.stderr
    model, meta = load_model(checkpoint)
    user = meta["user"]
    if "normalization" not in user:
        raise ValueError(f"checkpoint {checkpoint} does not record the data's normalization; predict in Python")
    shape, classes = tuple(user["input_shape"]), user["classes"]
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"fastconv predict reads grayscale or RGB images; the checkpoint's model takes input of "
                         f"shape {shape}, not (1, H, W) or (3, H, W)")
    skipped = []

    def skip(path, error):
        skipped.append(path)
        tqdm.write(f"fastconv predict: skipped {_reason(path, error)}", file=err)  # above a progress bar

    on_error = skip if skip_errors else None
    paths = list_images(sources, stdin if stdin is not None else sys.stdin, on_missing=on_error)
    total = len(paths) + len(skipped)  # the missing ones are not listed
    if not paths and not skipped:
        patterns = ", ".join("*" + e for e in IMAGE_EXTENSIONS)
        raise ValueError(f"no images found in {', '.join(sources)} (a folder is searched for {patterns})")
    if progress is None:
        progress = err.isatty() and len(paths) > batch_size
    k = min(top_k, len(classes))
    rows = predict_files(model, paths, shape, Normalizer.from_dict(user["normalization"]), resize, batch_size,
                         progress, on_error)
    if as_json:
        result = [{"file": path, "top": [{"class": classes[i], "index": int(i), "probability": float(p[i])}
                                         for i in _top(p, k)]} for path, p in rows]
    else:
        width = min(max(len(c) for c in classes), 24)
        result = []
        for path, p in rows:
            if not result:  # after the first batch is read: an unreadable first file prints only its error
                print("   ".join(f"{f'top-{j + 1}':{width + 8}}" for j in range(k)) + "   file", file=out)
            cells = (f"{classes[i][:width]:{width}} {100 * p[i]:6.2f}%" for i in _top(p, k))
            print("   ".join(cells) + f"   {path}", file=out, flush=True)
            result.append(path)
    if skipped and not result:
        raise ValueError(f"every image failed: {len(skipped)} of {total} skipped (reasons above)")
    if as_json:
        print(json.dumps(result, indent=1), file=out)
    if skipped:
        print(f"fastconv predict: {len(skipped)} of {total} images skipped, {len(result)} predicted", file=err)
    return 0
