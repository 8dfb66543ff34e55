"""fc.data.read_image and load_image_folder: folders and archives written here with
Pillow, hostile archives, and the real CIFAR-10 JPEGs when they are beside the repo."""

import gzip
import io
import os
import struct
import tarfile
import zlib

import numpy as np
import pytest

from fastconv import data as D

Image = pytest.importorskip("PIL.Image", reason="Pillow is the optional extra fastconv[images]")

HERE = os.path.dirname(os.path.abspath(__file__))
CIFAR_CANDIDATES = ["/work/shared/data/cifar10-jpg.tar.gz",
                    os.path.join(HERE, "..", "..", "shared", "data", "cifar10-jpg.tar.gz")]
CIFAR = next((p for p in CIFAR_CANDIDATES if os.path.isfile(p)), None)


def pixels(seed, h=6, w=5, c=3):
    a = np.random.default_rng(seed).integers(0, 256, (h, w, c) if c == 3 else (h, w), dtype=np.uint8)
    return a


def encode(array, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_folder(root, layout, fmt="PNG", h=6, w=5, c=3):
    """layout: {relative folder: number of images}; returns {relative path: the pixels (C, H, W)}."""
    written = {}
    for folder, n in layout.items():
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for i in range(n):
            a = pixels(len(written), h, w, c)
            name = f"{folder}/{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}"
            with open(os.path.join(root, name), "wb") as f:
                f.write(encode(a, fmt))
            written[name] = a[None] if c == 1 else a.transpose(2, 0, 1)
    return written


def add(tf: tarfile.TarFile, name, data=b"", **fields):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in fields.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data) if info.isreg() else None)


# -- read_image --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [1, 3])
def test_read_image_decodes_png_exactly_as_c_h_w_uint8(tmp_path, c):
    a = pixels(0, 7, 4, c)
    path = tmp_path / "x.png"
    path.write_bytes(encode(a))
    want = a[None] if c == 1 else a.transpose(2, 0, 1)
    for source in (path, str(path), path.read_bytes()):
        got = D.read_image(source, "x.png")
        assert got.dtype == np.uint8 and got.shape == (c, 7, 4)
        np.testing.assert_array_equal(got, want)


def test_read_image_converts_channels_on_request():
    rgb, gray = pixels(1), pixels(2, c=1)
    np.testing.assert_array_equal(D.read_image(encode(gray), channels=3), np.stack([gray] * 3))
    expected = np.asarray(Image.fromarray(rgb).convert("L"))[None]
    np.testing.assert_array_equal(D.read_image(encode(rgb), channels=1), expected)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(D.read_image(encode(rgba)), rgb.transpose(2, 0, 1))  # alpha dropped
    with pytest.raises(ValueError, match="`channels` must be None, 1 or 3; got 2"):
        D.read_image(encode(rgb), channels=2)


def test_read_image_decodes_jpeg_as_pillow_does():
    ramp = np.arange(16, dtype=np.uint8) * 15
    # smooth: JPEG keeps it
    a = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 255 - ramp[:, None]), axis=-1)
    data = encode(np.ascontiguousarray(a), "JPEG", quality=90)
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(D.read_image(data), want)
    assert np.abs(want.astype(int) - a.transpose(2, 0, 1)).max() < 20  # it is the image, lossily


def test_read_image_refuses_bad_files_in_one_line(tmp_path):
    jpeg = encode(pixels(4, 32, 32), "JPEG")
    cases = [
        (jpeg[:len(jpeg) // 2], "truncated or corrupt JPEG image"),
        (jpeg[:len(jpeg) * 9 // 10], "truncated or corrupt JPEG image"),
        (jpeg[:100], "truncated or corrupt JPEG image"),
        (encode(pixels(4, 32, 32))[:-30], "truncated or corrupt PNG image"),
        (b"GIF89a" + bytes(100), "not a PNG or JPEG image"),
        (b"hello, world\n", "not a PNG or JPEG image"),
        (b"", "not a PNG or JPEG image"),
        (encode(pixels(5, 64, 64)), "at most 2,000 pixels; this one has 64x64 pixels"),
        (encode(np.zeros((4, 4), np.uint16) + 300), "mode I;16"),
    ]
    for data, message in cases:
        with pytest.raises(D.DataError, match=message) as e:
            D.read_image(data, "bad.img", max_pixels=2000)
        assert "\n" not in str(e.value) and str(e.value).startswith("bad.img: ")
    with pytest.raises(D.DataError, match="at most 100 bytes; it has"):
        D.read_image(jpeg, "big.jpg", max_bytes=100)
    (tmp_path / "big.jpg").write_bytes(jpeg)
    with pytest.raises(D.DataError, match="must be at most 100 bytes"):
        D.read_image(tmp_path / "big.jpg", max_bytes=100)
    with pytest.raises(D.DataError, match="must be a regular file; it is a folder"):
        D.read_image(tmp_path)


def png_header_only(width, height) -> bytes:
    """A PNG that declares width x height gray pixels and holds none: what a bomb's header says."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, before ours refuses
def test_a_decompression_bomb_is_refused_from_its_header():
    with pytest.raises(D.DataError, match="at most 1,000,000 pixels; this one has 3000x2000 pixels"):
        D.read_image(png_header_only(3000, 2000), "bomb.png", max_pixels=10**6)
    with pytest.raises(D.DataError, match="at most 67,108,864 pixels; this one has 10000x10000 pixels"):
        D.read_image(png_header_only(10000, 10000), "bomb.png")
    with pytest.raises(D.DataError, match=r"bomb.png: an image may have at most 67,108,864 pixels; this one has "
                                          r"more \(.*900000000 pixels"):
        D.read_image(png_header_only(30000, 30000), "bomb.png")  # beyond Pillow's own limit too


# -- folders ---------------------------------------------------------------------------------------------------


def test_a_folder_with_splits_gives_train_and_test(tmp_path):
    written = write_folder(tmp_path, {"train/dog": 3, "train/cat": 2, "test/cat": 1, "test/dog": 2})
    (tmp_path / "README.txt").write_text("ignored: beside the split folders")
    (tmp_path / "train" / "cat" / ".DS_Store").write_bytes(b"\0junk")
    parts = D.load_image_folder(tmp_path, threads=2)
    assert sorted(parts) == ["test", "train"]
    train, test = parts["train"], parts["test"]
    assert train.classes == test.classes == ["cat", "dog"]
    assert (len(train), len(test)) == (5, 3)
    assert train.X.dtype == np.float32 and train.input_shape == (3, 6, 5)
    order = ["train/cat/000.png", "train/cat/001.png", "train/dog/000.png", "train/dog/001.png", "train/dog/002.png"]
    np.testing.assert_array_equal(train.y, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(train.X, np.stack([written[n] for n in order]) / np.float32(255))
    np.testing.assert_array_equal(test.y, [0, 1, 1])
    assert D.load_image_folder(tmp_path, split="test").y.tolist() == [0, 1, 1]


def test_a_folder_without_splits_is_all_train_and_grayscale_stays_one_channel(tmp_path):
    write_folder(tmp_path, {"b": 2, "a": 3, "c": 1}, c=1)
    parts = D.load_image_folder(tmp_path)
    assert list(parts) == ["train"]
    ds = parts["train"]
    assert ds.classes == ["a", "b", "c"] and ds.input_shape == (1, 6, 5)
    assert ds.y.tolist() == [0, 0, 0, 1, 1, 2]
    assert D.load_image_folder(tmp_path, split="train", channels=3).input_shape == (3, 6, 5)


def test_the_decoding_threads_change_nothing(tmp_path):
    write_folder(tmp_path, {"a": 300, "b": 250}, fmt="JPEG", h=8, w=8)
    one = D.load_image_folder(tmp_path, split="train", threads=1)
    two = D.load_image_folder(tmp_path, split="train", threads=3)
    np.testing.assert_array_equal(one.X, two.X)
    np.testing.assert_array_equal(one.y, two.y)
    for name in ("b/100.jpg", "b/200.jpg"):  # in the last chunks; the first in order is named
        (tmp_path / name).write_bytes(b"junk")
    with pytest.raises(D.DataError, match="b/100.jpg: not a PNG or JPEG image"):
        D.load_image_folder(tmp_path, threads=3)


def test_images_of_another_size_or_channel_count_are_named(tmp_path):
    write_folder(tmp_path, {"a": 2, "b": 2})
    odd = tmp_path / "b" / "001.png"
    odd.write_bytes(encode(pixels(9, 7, 5)))
    (tmp_path / "b" / "002.png").write_bytes(encode(pixels(9, 9, 9)))  # later: not the one named
    with pytest.raises(D.DataError, match=r"b/001.png is 5x7 RGB; the images must all be 5x6 RGB like "
                                          r".*a/000.png$") as e:
        D.load_image_folder(tmp_path)
    assert "\n" not in str(e.value)
    odd.write_bytes(encode(pixels(9, 6, 5, c=1)))
    (tmp_path / "b" / "002.png").unlink()
    with pytest.raises(D.DataError, match="b/001.png is 5x6 grayscale; .* pass channels=3 to convert them all"):
        D.load_image_folder(tmp_path)
    assert D.load_image_folder(tmp_path, split="train", channels=3).input_shape == (3, 6, 5)


def test_the_test_split_must_match_the_training_images(tmp_path):
    write_folder(tmp_path, {"train/a": 2, "train/b": 1})
    write_folder(tmp_path / "more", {"a": 1}, h=4)
    os.rename(tmp_path / "more", tmp_path / "test")
    with pytest.raises(D.DataError, match="test/a/000.png is 5x4 RGB; the images must all be 5x6 RGB like "
                                          "train/a/000.png"):
        D.load_image_folder(tmp_path)


def test_bad_folder_layouts_are_refused_in_one_line(tmp_path):
    cases = {
        "notes": ({"a": 1}, "a/notes.txt", b"hi", "a/notes.txt: not a .png, .jpg or .jpeg file"),
        "truncated": ({"a": 2}, "a/001.jpg", encode(pixels(1, 32, 32), "JPEG")[:300],
                      "a/001.jpg: truncated or corrupt JPEG image"),
        "nonimage": ({"a": 1}, "a/fake.png", b"not a png at all", "a/fake.png: not a PNG or JPEG image"),
        "nested": ({"a": 1}, "a/deeper/x.png", encode(pixels(1)),
                   "a/deeper/x.png: image files must be in class folders"),
        "loose": ({"train/a": 1}, "train/x.png", encode(pixels(1)), "train/x.png: image files must be in class"),
        "extra": ({"train/a": 1, "val/a": 1}, None, None, r"beside train/ and test/ .* \['val'\]"),
        "testonly": ({"test/a": 1}, None, None, "has a test/ folder but no train/"),
        "newclass": ({"train/a": 1, "test/z": 1}, None, None, r"test/ has classes that train/ has not: \['z'\]"),
        "empty": ({"a": 0}, None, None, "has no images"),
    }
    for case, (layout, extra, data, message) in cases.items():
        root = tmp_path / case
        write_folder(root, layout)
        if extra:
            os.makedirs(os.path.dirname(root / extra), exist_ok=True)
            (root / extra).write_bytes(data)
        with pytest.raises(D.DataError, match=message) as e:
            D.load_image_folder(root)
        assert "\n" not in str(e.value), case
    with pytest.raises(FileNotFoundError, match="no such folder or archive"):
        D.load_image_folder(tmp_path / "missing")
    os.makedirs(tmp_path / "nested" / "a" / "deeper" / "still")
    (tmp_path / "nested" / "a" / "deeper" / "x.png").unlink()
    with pytest.raises(D.DataError, match="nested: a/deeper: a folder inside a class folder"):
        D.load_image_folder(tmp_path / "nested")
    write_folder(tmp_path / "many", {"a": 5})
    with pytest.raises(D.DataError, match="at most 3 files and folders"):
        D.load_image_folder(tmp_path / "many", max_files=3)


def test_without_pillow_the_error_says_what_to_install(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_pil(name, *args, **kw):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("No module named 'PIL'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(ImportError, match=r'pip install "fastconv\[images\]"'):
        D.load_image_folder(tmp_path)
    with pytest.raises(ImportError, match=r'pip install "fastconv\[images\]"'):
        D.read_image(b"")


# -- archives ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
@pytest.mark.parametrize("wrapped", [False, True])
def test_an_archive_reads_as_its_folder(tmp_path, mode, suffix, wrapped):
    root = tmp_path / "set"
    write_folder(root, {"train/cat": 2, "train/dog": 3, "test/cat": 2, "test/dog": 1}, fmt="JPEG", h=8, w=8)
    archive = tmp_path / f"set{suffix}"
    with tarfile.open(archive, mode) as tf:
        tf.add(root, arcname="set" if wrapped else ".")
    folder, packed = D.load_image_folder(root), D.load_image_folder(archive)
    for split in ("train", "test"):
        np.testing.assert_array_equal(folder[split].X, packed[split].X)
        np.testing.assert_array_equal(folder[split].y, packed[split].y)
        assert packed[split].classes == ["cat", "dog"] and packed[split].name == "set"


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_member_names_in_every_tar_format(tmp_path, fmt):
    long = "c" * 120  # longer than the 100 bytes of a ustar name field
    archive = tmp_path / "long.tar"
    with tarfile.open(archive, "w", format=fmt) as tf:
        add(tf, f"{long}/{'f' * 60}.png", encode(pixels(0)))
        add(tf, "é/ü.png", encode(pixels(1)))
    ds = D.load_image_folder(archive, split="train")
    assert ds.classes == [long, "é"] and len(ds) == 2


def hostile(tmp_path, name, build, mode="w:gz"):
    archive = tmp_path / name
    with tarfile.open(archive, mode, format=tarfile.GNU_FORMAT) as tf:
        add(tf, "a/0.png", encode(pixels(0)))
        build(tf)
    return archive


def test_hostile_archives_are_refused_in_one_line(tmp_path):
    png = encode(pixels(0))
    cases = [
        ("abs", lambda tf: add(tf, "/etc/a/1.png", png), "refusing the tar member '/etc/a/1.png'.*relative"),
        ("dotdot", lambda tf: add(tf, "a/../../x/1.png", png), r"'a/../../x/1.png'.*without '\.\.'"),
        ("symlink", lambda tf: add(tf, "a/1.png", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
         "'a/1.png': it is a symbolic link"),
        ("hardlink", lambda tf: add(tf, "a/1.png", type=tarfile.LNKTYPE, linkname="a/0.png"),
         "it is a hard link"),
        ("fifo", lambda tf: add(tf, "a/1.png", type=tarfile.FIFOTYPE), "it is a FIFO"),
        ("device", lambda tf: add(tf, "a/1.png", type=tarfile.CHRTYPE), "it is a character device"),
        ("big", lambda tf: add(tf, "a/1.png", bytes(5000)), "a/1.png: an image file must be at most 4,000 bytes"),
        ("many", lambda tf: [add(tf, f"a/{i}.png", png) for i in range(1, 30)], "at most 20 members"),
    ]
    for name, build, message in cases:
        with pytest.raises(D.DataError, match=message) as e:
            D.load_image_folder(hostile(tmp_path, name + ".tar.gz", build), max_files=20, max_bytes=4000)
        assert "\n" not in str(e.value), name


def test_a_huge_extended_header_is_refused_before_it_is_read(tmp_path):
    # a GNU long-name header declaring 1 GiB, then nothing: a few hundred bytes of gzip
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = tarfile.GNUTYPE_LONGNAME, 2**30
    archive = tmp_path / "longname.tar.gz"
    archive.write_bytes(gzip.compress(header.tobuf(tarfile.GNU_FORMAT) + bytes(4096)))
    with pytest.raises(D.DataError, match="extended header may have at most 1,048,576 bytes; member 1 declares "
                                          "1,073,741,824"):
        D.load_image_folder(archive)


def test_broken_archives_are_refused_in_one_line(tmp_path):
    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tf:
        add(tf, "a/0.png", encode(pixels(0)))
        add(tf, "a/1.png", encode(pixels(1)))
    raw = good.read_bytes()
    cases = {"cut.tar": (raw[:700], "truncated"), "text.tar": (b"x" * 2000, "not a tar archive"),
             "cutgz.tar.gz": (gzip.compress(raw)[:300], "not a valid .tar.gz archive"),
             "short.tar": (raw[:100], "truncated")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(D.DataError, match=message) as e:
            D.load_image_folder(tmp_path / name)
        assert "\n" not in str(e.value), name


# -- the real CIFAR-10 JPEGs -------------------------------------------------------------------------------------


@pytest.mark.skipif(CIFAR is None, reason="needs ../shared/data/cifar10-jpg.tar.gz beside the repo (CI has it)")
def test_the_cifar10_jpeg_archive_test_split():
    test = D.load_image_folder(CIFAR, split="test")
    assert test.classes == list(D.CIFAR10_CLASSES)
    assert test.X.shape == (10000, 3, 32, 32) and test.X.dtype == np.float32
    assert np.bincount(test.y).tolist() == [1000] * 10
    assert 0.0 <= test.X.min() and test.X.max() <= 1.0
    # natural photographs: mid-grey on average, every channel used; not a stack of blanks
    assert 0.35 < float(test.X.mean()) < 0.6 and float(test.X.std(axis=(0, 2, 3)).min()) > 0.15
