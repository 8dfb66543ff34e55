"""Image files: :func:`read_image` (one PNG or JPEG), :func:`load_image_folder`
(class subfolders of them, a folder or a ``.tar``/``.tar.gz`` of one), and for
``fastconv predict`` :func:`read_model_input` (one file as a model's input) and
:func:`list_images` (files, folders and "-" for paths on stdin).

Decoding goes through Pillow, an optional extra: ``pip install "fastconv[images]"``.

Layout, as torchvision's ImageFolder and most image sets ship::

    root/train/cat/0001.jpg        root/cat/0001.jpg
    root/train/dog/0002.png        root/dog/0002.png
    root/test/cat/0003.jpg         (no splits: everything is "train")

Class names are the folder names, sorted; labels are their indices. An
archive may wrap all of it in one top folder (``cifar10/train/...``). Names
starting with "." (``.DS_Store``, macOS ``._x.jpg``) are skipped, and so are
files beside the class folders; every other file in a class folder must be
a .png, .jpg or .jpeg image.

Every file and archive is untrusted: image files are bounded in bytes and in
pixels (a decompression bomb is refused before it is decoded), tar members
are read in place, never extracted, and an archive with absolute or ``..``
member names, links, device files, FIFOs or more than ``max_files`` members
is refused, each with a one-line :class:`DataError`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import io
import os
import zlib

import numpy as np

from fastconv import _guard
from fastconv.data.dataset import DataError, Dataset

__all__ = ["IMAGE_EXTENSIONS", "MAX_FILE_BYTES", "MAX_PIXELS", "list_images", "load_image_folder", "read_image",
           "read_model_input"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MAX_FILE_BYTES = 64 * 2**20   # one image file; a 8192x8192 RGB PNG stored uncompressed is 192 MiB
MAX_PIXELS = 2**26            # 8192 x 8192; Pillow's own warning starts at ~89 M pixels
MAX_FILES = 2_000_000         # ImageNet's training set is 1.28 M files
INSTALL_HINT = 'pip install "fastconv[images]"'

_GRAY_MODES = {"1", "L", "LA", "La"}
_SIXTEEN_BIT = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # how Pillow opens a 16-bit grayscale PNG
_COLOR_MODES = {"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}  # what PNG and JPEG decode to
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"))
_CHUNK = 256  # images per task of the decoding threads: one task each is too fine for 32x32 JPEGs


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(f"reading PNG/JPEG images needs Pillow: {INSTALL_HINT}") from None
    return Image


@contextlib.contextmanager
def _opened(source, name: str | None, max_pixels: int, max_bytes: int):
    """(the decoded Pillow image, the name errors use) of a PNG or JPEG path or bytes, after
    every check that does not depend on what the caller wants of it."""
    Image = _pillow()
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "image"
        data = bytes(source)
        if len(data) > max_bytes:
            raise DataError(f"{_guard.short(name, 300)}: an image file must be at most {max_bytes:,} bytes; "
                            f"it has {len(data):,}")
    else:
        name = name or os.fspath(source)
        with _guard.open_regular(source, DataError, max_bytes=max_bytes) as f:
            data = f.read(max_bytes + 1)
    where = _guard.short(name, 300)
    try:
        img = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
    except Image.DecompressionBombError as e:  # Pillow's own limit, above ours
        raise DataError(f"{where}: an image may have at most {max_pixels:,} pixels; this one has more "
                        f"({_guard.short(e, 150)}; a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # UnidentifiedImageError is an OSError
        kind = next((k for magic, k in _MAGIC if data.startswith(magic)), None)
        if kind:
            raise DataError(f"{where}: truncated or corrupt {kind} image ({_guard.short(e, 150)})") from None
        raise DataError(f"{where}: not a PNG or JPEG image") from None
    if img.width * img.height > max_pixels:
        raise DataError(f"{where}: an image may have at most {max_pixels:,} pixels; this one has "
                        f"{img.width}x{img.height} pixels (a decompression bomb?)")
    with img:
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as e:
            raise DataError(f"{where}: truncated or corrupt {img.format} image ({_guard.short(e, 150)})") from None
        yield img, where


def _pixels(img, channels: int) -> np.ndarray:
    """A loaded 8-bit Pillow image as uint8 (C, H, W) with `channels` 1 (L) or 3 (RGB)."""
    target = "L" if channels == 1 else "RGB"
    pixels = np.asarray(img if img.mode == target else img.convert(target))
    return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def read_image(source, name: str | None = None, channels: int | None = None, max_pixels: int = MAX_PIXELS,
               max_bytes: int = MAX_FILE_BYTES) -> np.ndarray:
    """One PNG or JPEG image as a uint8 array (C, H, W).

    ``source`` is a path or the file's bytes; ``name`` is what error messages
    call it (default: the path, or "image"). ``channels`` None keeps the
    image's own: 1 for grayscale (alpha dropped), 3 for everything else
    (palette, RGBA and CMYK become RGB); 1 or 3 converts to that.

    Refused with a one-line :class:`DataError`: a file larger than
    ``max_bytes``, one that is not a PNG or JPEG, an image of more than
    ``max_pixels`` pixels (judged from its header, before decoding), a
    truncated or corrupt one, and 16-bit or float images.
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"read_image: `channels` must be None, 1 or 3; got {channels!r}")
    with _opened(source, name, max_pixels, max_bytes) as (img, where):
        if img.mode not in _GRAY_MODES and img.mode not in _COLOR_MODES:
            raise DataError(f"{where}: {img.format} images of mode {img.mode} (16-bit or float pixels) are not "
                            "supported; save it with 8 bits per channel")
        return _pixels(img, channels or (1 if img.mode in _GRAY_MODES else 3))


def read_model_input(path, shape, resize: bool = False, name: str | None = None) -> np.ndarray:
    """The PNG or JPEG file ``path`` as a model's input: float32 of ``shape`` (C, H, W) in [0, 1]
    (pixels / 255, or / 65535 for a 16-bit grayscale PNG), as the loaders scale images.

    Grayscale for C = 1, RGB for C = 3 (an alpha channel is dropped); the EXIF
    orientation is applied (a photo is classified the way it is viewed). An
    image whose width and height differ from (W, H) raises DataError, or with
    ``resize`` is scaled to it (bilinear, antialiased; the aspect ratio is not
    kept). The checks of :func:`read_image` apply.
    """
    Image = _pillow()
    from PIL import ImageOps

    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"read_model_input: `shape` must be (C, H, W) with C = 1 (grayscale) or 3 (RGB); "
                         f"got {shape}")
    c, h, w = shape
    with _opened(path, name, MAX_PIXELS, MAX_FILE_BYTES) as (img, where):
        img = ImageOps.exif_transpose(img)
        if img.size != (w, h):
            if not resize:
                raise DataError(f"{where} is {img.size[0]}x{img.size[1]} (width x height); the model takes "
                                f"{w}x{h} images (pass --resize to scale it)")
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        if img.mode in _SIXTEEN_BIT:
            gray = np.asarray(img, np.float32) / np.float32(65535)
            return np.ascontiguousarray(np.broadcast_to(gray, (c, h, w)))
        if img.mode not in _GRAY_MODES and img.mode not in _COLOR_MODES:
            raise DataError(f"{where}: {img.format} images of mode {img.mode} are not supported")
        return _pixels(img, c).astype(np.float32) / np.float32(255)


def list_images(sources, stdin=None, on_missing=None) -> list[str]:
    """The image paths of ``sources``: files as given, folders searched recursively for
    *.png, *.jpg, *.jpeg (sorted), and "-" replaced by the paths on ``stdin`` (one a line,
    each a file or a folder). Hidden files and folders (names starting with ".") are skipped.
    A source that does not exist raises FileNotFoundError, or is passed to
    ``on_missing(source, error)`` and left out when that is given."""
    paths = []
    for source in sources:
        if source == "-":
            if stdin is None:
                raise ValueError("list_images: '-' reads paths from stdin, but no `stdin` was given")
            paths += list_images([line.rstrip("\r\n") for line in stdin if line.strip()], on_missing=on_missing)
        elif os.path.isdir(source):
            found = []
            for folder, subfolders, files in os.walk(source):
                subfolders[:] = [d for d in subfolders if not d.startswith(".")]
                found += [os.path.join(folder, f) for f in files
                          if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
            paths += sorted(found)
        elif os.path.exists(source):
            paths.append(source)
        else:
            missing = FileNotFoundError(f"image {_guard.short(source, 300)} does not exist")
            if on_missing is None:
                raise missing
            on_missing(source, missing)
    return paths


# -- folders and archives ---------------------------------------------------------------------


_TAR_BLOCK = 512
_MAX_TAR_HEADER = 2**20  # a pax or GNU long-name header: path names, not data
_TAR_KINDS = {b"1": "a hard link", b"2": "a symbolic link", b"3": "a character device", b"4": "a block device",
              b"6": "a FIFO", b"K": "a link (GNU long link name)", b"S": "a GNU sparse file"}


def _octal(field: bytes, where: str) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256, for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise DataError(f"{where}: not a tar archive (a header field holds {text[:20]!r}, not an octal number)") \
            from None


def _read_block(stream, n: int, where: str, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise DataError(f"{where}: the archive is truncated ({what} needs {n:,} bytes; {len(data):,} remain)")
    return data


def _tar_members(stream, where: str, max_files: int, max_bytes: int):
    """(name, is_folder, data or None) of each member of a tar stream, in order.

    A small reader of its own rather than :mod:`tarfile`: it knows only what an image
    archive needs (ustar, pax and GNU long names; folders and regular files), bounds
    every header before reading it, and is several times faster per member (a tar
    of 60,000 thumbnails spends most of tarfile's time parsing headers). Data of
    skipped files (hidden names) is read past, never kept."""
    count, long_name = 0, None
    while True:
        header = stream.read(_TAR_BLOCK)
        if not header or header == bytes(_TAR_BLOCK):
            return  # the end-of-archive blocks, or a tar that ends without them
        if len(header) < _TAR_BLOCK:
            raise DataError(f"{where}: the archive is truncated (a header of {len(header)} bytes)")
        stored = _octal(header[148:156], where)
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise DataError(f"{where}: not a tar archive, or a corrupt one (header checksum mismatch"
                            f"{' at member ' + format(count + 1, ',') if count else ''})")
        count += 1
        if count > max_files:
            raise DataError(f"{where}: an archive may hold at most {max_files:,} members; this one has more "
                            "(pass max_files= to allow more)")
        kind, size = header[156:157], _octal(header[124:136], where)
        name = header[:100].split(b"\0", 1)[0]
        if header[257:263] == b"ustar\0" and header[345:346] != b"\0":  # POSIX: a prefix for long names
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        padded = -(-size // _TAR_BLOCK) * _TAR_BLOCK
        if kind in (b"x", b"g", b"L"):
            if size > _MAX_TAR_HEADER:
                raise DataError(f"{where}: a tar extended header may have at most {_MAX_TAR_HEADER:,} bytes; "
                                f"member {count:,} declares {size:,}")
            body = _read_block(stream, padded, where, "an extended header")[:size]
            if kind == b"L":
                long_name = body.split(b"\0", 1)[0]
            elif kind == b"x":
                long_name = _pax_path(body, where) or long_name
            continue  # a global header (g) sets defaults this reader has no use for
        name = (long_name or name).decode("utf-8", "surrogateescape")
        long_name = None
        shown = _guard.short(name, 200)
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if not parts and kind == b"5" and not name.startswith("/"):
            continue  # "./": the archive's root folder (a folder member has no data)
        if name.startswith("/") or ".." in parts or not parts:
            raise DataError(f"{where}: refusing the tar member {shown!r}: member names must be relative paths "
                            "without '..'")
        if kind in _TAR_KINDS or kind not in (b"0", b"\0", b"7", b"5"):
            what = _TAR_KINDS.get(kind, f"of tar type {kind!r}")
            raise DataError(f"{where}: refusing the tar member {shown!r}: it is {what}; image archives hold "
                            "folders and regular files only")
        if kind == b"5":
            _read_block(stream, padded, where, f"member {shown!r}")
            yield parts, True, None
            continue
        if _hidden(parts):
            while padded:  # read past in pieces: its size is not bounded
                padded -= len(_read_block(stream, min(padded, 2**22), where, f"member {shown!r}"))
            continue
        if size > max_bytes:
            raise DataError(f"{where}: {shown}: an image file must be at most {max_bytes:,} bytes; it has {size:,}")
        yield parts, False, _read_block(stream, padded, where, f"member {shown!r}")[:size]


def _pax_path(body: bytes, where: str) -> bytes | None:
    """The ``path`` record of a pax header ("LEN path=VALUE\\n" records), if any."""
    found, i = None, 0
    while i < len(body) and body[i:i + 1] != b"\0":
        space = body.find(b" ", i)
        length = int(body[i:space]) if space > i and body[i:space].isdigit() else 0
        if length <= space - i or i + length > len(body):
            raise DataError(f"{where}: not a tar archive (a malformed pax header record)")
        key, _, value = body[space + 1:i + length - 1].partition(b"=")
        if key == b"path":
            found = value
        elif key == b"size":
            raise DataError(f"{where}: a pax header sets a member's size (files of 8 GiB and more); image archives "
                            "do not need that")
        i += length
    return found


def _tar_entries(path: str, max_files: int, max_bytes: int):
    """(files [(parts, bytes)], folders [parts]) of a .tar or .tar.gz, read in order, nothing extracted."""
    files, dirs = [], []
    with _guard.open_regular(path, DataError, "load_image_folder") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f, mode="rb") if gzipped else f
        try:
            for parts, is_dir, data in _tar_members(stream, path, max_files, max_bytes):
                if is_dir:
                    dirs.append(parts)
                else:
                    files.append((parts, data))
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{path}: not a valid .tar.gz archive ({_guard.short(e, 200)})") from None
    return files, dirs


def _hidden(parts) -> bool:
    return any(p.startswith(".") for p in parts)


def _folder_entries(root: str, max_files: int):
    """(files [(parts, path)], folders [parts]) below ``root``, four levels deep at most
    (wrapper/split/class/file): deeper files are not part of any layout."""
    files, dirs, count = [], [], 0

    def walk(folder, parts):
        nonlocal count
        with os.scandir(folder) as it:
            entries = [e for e in it if not e.name.startswith(".")]
        count += len(entries)
        if count > max_files:
            raise DataError(f"{root}: an image folder may hold at most {max_files:,} files and folders; this one "
                            "has more (pass max_files= to allow more)")
        for e in entries:
            p = parts + (e.name,)
            if e.is_dir():
                dirs.append(p)
                if len(p) < 4:
                    walk(e.path, p)
            else:
                files.append((p, e.path))

    walk(root, ())
    return files, dirs


def _unwrap(files, dirs) -> int:
    """How many leading path components every entry shares as mere wrapper folders
    (``cifar10/`` in ``cifar10/train/cat/1.jpg``)."""
    depth = 0
    while True:
        firsts = {p[depth] for p, _ in files if len(p) > depth} | {p[depth] for p in dirs if len(p) > depth}
        deep = all(len(p) >= depth + 3 for p, _ in files)
        if len(firsts) != 1 or firsts & {"train", "test"} or not files or not deep:
            return depth
        depth += 1


def _layout(files, dirs, where: str):
    """(classes, {split: [(label, name, source)]}) of the entries, sorted by class then file name."""
    depth = _unwrap(files, dirs)
    top = {p[depth] for p in dirs if len(p) == depth + 1} | {p[depth] for p, _ in files if len(p) > depth + 1}
    if "train" in top:
        if top - {"train", "test"}:
            raise DataError(f"{where}: beside train/ and test/ there may be no other folders; found "
                            f"{_guard.few(sorted(top - {'train', 'test'}))}")
        splits = {s: depth + 1 for s in ("train", "test") if s in top}
    elif "test" in top:
        raise DataError(f"{where}: has a test/ folder but no train/")
    else:
        splits = {"train": depth}
    found = {}
    for split, base in splits.items():
        inside = (lambda p: p[depth] == split) if base > depth else (lambda p: True)
        folders = {p[base] for p in dirs if len(p) == base + 1 and inside(p)}
        items = []
        for parts, source in files:
            if len(parts) <= depth + 1 or not inside(parts):
                continue  # a README beside the class or split folders
            shown = "/".join(parts)
            if len(parts) != base + 2:
                raise DataError(f"{where}: {_guard.short(shown, 200)}: image files must be in class folders "
                                f"({'SPLIT/' if base > depth else ''}CLASS/FILE), no deeper and no higher")
            if not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
                raise DataError(f"{where}: {_guard.short(shown, 200)}: not a .png, .jpg or .jpeg file; class "
                                "folders hold images only")
            folders.add(parts[base])
            items.append((parts[base], parts[-1], shown, source))
        nested = [p for p in dirs if len(p) > base + 1 and inside(p)]
        if nested:
            raise DataError(f"{where}: {_guard.short('/'.join(nested[0]), 200)}: a folder inside a class folder; "
                            "class folders hold image files only")
        found[split] = (sorted(folders), items)
    classes = found["train"][0]
    if "test" in found and set(found["test"][0]) - set(classes):
        raise DataError(f"{where}: test/ has classes that train/ has not: "
                        f"{_guard.few(sorted(set(found['test'][0]) - set(classes)))}")
    index = {c: i for i, c in enumerate(classes)}
    return classes, {split: sorted((index[c], f, shown, src) for c, f, shown, src in items)
                     for split, (_, items) in found.items()}


def _describe(shape) -> str:
    c, h, w = shape
    return f"{w}x{h} {'grayscale' if c == 1 else 'RGB'}"


def _decode(items, where: str, channels, threads: int, max_pixels: int, max_bytes: int, like=None) -> np.ndarray:
    """The images of ``items`` as one uint8 array (N, C, H, W), decoded ``_CHUNK`` at a time by
    ``threads`` threads (Pillow releases the GIL while it decodes). Each must have the shape of
    ``like`` ((shape, name) of another split's first image), else of the first one; errors name
    the first bad file in order."""
    def read(i):
        _, _, shown, source = items[i]
        img = read_image(source, f"{where}: {shown}" if isinstance(source, bytes) else source, channels,
                         max_pixels, max_bytes)
        if like is not None and img.shape != like[0]:
            hint = f"; pass channels={like[0][0]} to convert them all" if img.shape[0] != like[0][0] else ""
            raise DataError(f"{where}: {_guard.short(shown, 200)} is {_describe(img.shape)}; the images must all "
                            f"be {_describe(like[0])} like {_guard.short(like[1], 200)}{hint}")
        return img

    first = read(0)
    like = like or (first.shape, items[0][2])
    n = len(items)
    _guard.check_memory(n * first.size * 5, f"load_image_folder: {n:,} images of {_describe(first.shape)} "
                        "(uint8, then float32)")
    X = np.empty((n,) + first.shape, np.uint8)
    X[0] = first

    def chunk(start):
        for i in range(start, min(start + _CHUNK, n)):
            X[i] = read(i)

    starts = range(1, n, _CHUNK)
    if threads <= 1 or n <= _CHUNK:
        for s in starts:
            chunk(s)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            try:
                for _ in pool.map(chunk, starts):  # in order: the first failing chunk raises first
                    pass
            except BaseException:
                pool.shutdown(cancel_futures=True)  # not decode all the rest before saying so
                raise
    return X


def load_image_folder(path, split: str | None = None, channels: int | None = None, threads: int | None = None,
                      max_files: int = MAX_FILES, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES):
    """Datasets from class subfolders of PNG/JPEG images: a folder, or a .tar/.tar.gz of one.

    With ``train/`` and ``test/`` folders (``test/`` optional) the splits
    are theirs; without, everything is "train". ``split`` None returns
    ``{"train": Dataset, "test": Dataset}`` (``test`` only when present), as
    :func:`load_npz` does; "train" or "test" returns that Dataset alone and
    decodes only its images. Images come out as float32 (N, C, H, W) in [0, 1]
    (decoded as uint8, scaled by 1/255), labels int64, ``classes`` the sorted
    class-folder names of ``train/``.

    All images must have one size and one channel count: ``channels`` None
    takes the first image's (1 grayscale, 3 colour), 1 or 3 converts each
    image. ``threads`` decode at once (default: the CPUs, at most 8). An
    archive is read as a stream, never extracted; see the module docstring
    for what is refused. Needs Pillow: ``pip install "fastconv[images]"``.
    """
    _pillow()
    path = os.fspath(path)
    if split not in (None, "train", "test"):
        raise ValueError(f"load_image_folder: `split` must be None, 'train' or 'test'; got {split!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"load_image_folder: `channels` must be None, 1 or 3; got {channels!r}")
    for key, value in (("threads", threads), ("max_files", max_files), ("max_pixels", max_pixels),
                       ("max_bytes", max_bytes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"load_image_folder: `{key}` must be an int >= 1; got {_guard.plain(value)!r}")
    threads = threads or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                             os.cpu_count() or 1)
    if os.path.isdir(path):
        files, dirs = _folder_entries(path, max_files)
    elif os.path.exists(path) or os.path.islink(path):
        files, dirs = _tar_entries(path, max_files, max_bytes)
    else:
        raise FileNotFoundError(f"load_image_folder: no such folder or archive: {path}")
    classes, splits = _layout(files, dirs, path)
    if split is not None and split not in splits:
        raise DataError(f"load_image_folder: {path} has no {split}/ folder")
    name = os.path.basename(os.path.normpath(path))
    for ext in (".tar.gz", ".tgz", ".tar"):
        name = name.removesuffix(ext)
    out, like = {}, None
    for part in [split] if split else list(splits):
        items = splits[part]
        if not items:
            raise DataError(f"load_image_folder: {path}: {part + '/ has' if len(splits) > 1 else 'has'} no images")
        X = _decode(items, path, channels, threads, max_pixels, max_bytes, like)
        like = (X.shape[1:], items[0][2])  # the test split must match the training split
        y = np.fromiter((label for label, *_ in items), np.int64, len(items))
        out[part] = Dataset(np.divide(X, np.float32(255), dtype=np.float32), y, classes, name=name)
    return out[split] if split else out
