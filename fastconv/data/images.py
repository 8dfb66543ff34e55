"""PNG and JPEG files as model inputs, read with bounds.

:func:`read_image` decodes one file into a float32 (C, H, W) array in [0, 1],
the scale fastconv's loaders give (pixels / 255), for a model that takes
(C, H, W) images with C = 1 (grayscale) or 3 (RGB). :func:`list_images` turns
files, folders (searched recursively, in sorted order, hidden entries
skipped) and "-" (paths read from stdin, one a line) into a list of paths.

Every failure is an :class:`ImageError` (a ValueError) of one line naming
the file: not a PNG or JPEG, truncated or corrupt data, a size other than
the model's (unless resizing), more than MAX_PIXELS pixels (a decompression
bomb: a small file that declares a huge image), more than MAX_BYTES bytes.

Needs Pillow: ``pip install "fastconv[images]"``.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib

import numpy as np

from fastconv import _guard

EXTENSIONS = (".png", ".jpg", ".jpeg")  # what a folder search picks up; files named directly may be called anything
FORMATS = ("PNG", "JPEG")
MAX_BYTES = 256 * 2**20
MAX_PIXELS = 2**26  # 8192 x 8192; below Pillow's own bomb limit, so this check speaks first
SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # how Pillow opens a 16-bit grayscale PNG
INSTALL_HINT = 'pip install "fastconv[images]"'


class ImageError(ValueError):
    """An image file fastconv cannot use; the message is one line that names the file."""


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError(f"reading images needs Pillow: {INSTALL_HINT}") from None
    return Image, ImageOps


def list_images(sources, stdin=None) -> list[str]:
    """The image paths of ``sources``: files as given, folders searched recursively for
    *.png, *.jpg, *.jpeg (sorted), and "-" replaced by the paths on ``stdin`` (one a line,
    each a file or a folder). Hidden files and folders (names starting with ".") are skipped.
    A source that does not exist raises FileNotFoundError."""
    paths = []
    for source in sources:
        if source == "-":
            if stdin is None:
                raise ValueError("list_images: '-' reads paths from stdin, but no `stdin` was given")
            paths += list_images([line.rstrip("\r\n") for line in stdin if line.strip()])
        elif os.path.isdir(source):
            found = []
            for folder, subfolders, files in os.walk(source):
                # hidden entries are skipped: macOS's ._name.jpg files, .thumbnails/ and the like are no images
                subfolders[:] = [d for d in subfolders if not d.startswith(".")]
                found += [os.path.join(folder, f) for f in files
                          if f.lower().endswith(EXTENSIONS) and not f.startswith(".")]
            paths += sorted(found)
        elif os.path.exists(source):
            paths.append(source)
        else:
            raise FileNotFoundError(f"image {_guard.short(source, 300)} does not exist")
    return paths


def _check_shape(shape) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"read_image: `shape` must be (C, H, W) with C = 1 (grayscale) or 3 (RGB); got {shape}")
    return shape


def read_image(path, shape, resize: bool = False) -> np.ndarray:
    """The PNG or JPEG file ``path`` as a float32 array of ``shape`` (C, H, W), values in [0, 1].

    Grayscale for C = 1, RGB for C = 3 (an alpha channel is dropped); the
    EXIF orientation is applied. An image whose width and height differ from
    (W, H) raises ImageError, or with ``resize`` is scaled to it (bilinear,
    antialiased; the aspect ratio is not kept).
    """
    Image, ImageOps = _pil()
    c, h, w = _check_shape(shape)
    name = _guard.short(os.fspath(path), 300)
    with _guard.open_regular(path, ImageError, "image", MAX_BYTES) as f:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(f, formats=FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"image {name}: refused, too many pixels ({e})") from None
        except Image.UnidentifiedImageError:
            raise ImageError(f"image {name}: not a PNG or JPEG image") from None
        except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as e:
            raise ImageError(f"image {name}: a corrupt {' or '.join(FORMATS)} header ({e})") from None
        with img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"image {name}: {width}x{height} is more than the {MAX_PIXELS:,} pixels fastconv "
                                 "reads (a decompression bomb?)")
            try:
                img.load()
                img = ImageOps.exif_transpose(img)
            except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as e:
                raise ImageError(f"image {name}: truncated or corrupt {img.format} data ({e})") from None
            if img.size != (w, h):
                if not resize:
                    raise ImageError(f"image {name} is {img.size[0]}x{img.size[1]} (width x height); the model "
                                     f"takes {w}x{h} images (pass --resize to scale it)")
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            if img.mode in SIXTEEN_BIT:
                gray = np.asarray(img, np.float32) / np.float32(65535)
                return np.ascontiguousarray(np.broadcast_to(gray, (c, h, w)))
            pixels = np.asarray(img.convert("L" if c == 1 else "RGB"), np.float32).reshape(h, w, c)
            return np.ascontiguousarray(pixels.transpose(2, 0, 1)) / np.float32(255)
