"""fastconv predict on real PNG and JPEG files written here: the probabilities are the model's on
the normalized pixels; bad files (truncated, not an image, wrong size, a decompression bomb)
each give a one-line error naming the file. Skipped without Pillow."""

import io
import json
import struct
import sys
import zlib

import numpy as np
import pytest

from fastconv.data import images
from fastconv.tools import cli
from fastconv.data import Normalizer
from fastconv.tools.predict import softmax
from fastconv.models import load_model

Image = pytest.importorskip("PIL.Image", reason="fastconv predict reads images with Pillow: "
                            "pip install 'fastconv[images]'")


def expected(run, pixels):
    """The class probabilities of the run's model on (N, C, H, W) pixels in [0, 1]."""
    model, meta = load_model(run / "best")
    norm = Normalizer.from_dict(meta["user"]["normalization"])
    return softmax(model(norm(np.asarray(pixels, np.float32))))


def save(path, array, **options):
    """Write a (C, H, W) uint8 (or (H, W) uint16) array as an image file; returns the path as str."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(array)
    img = Image.fromarray(a[0] if a.ndim == 3 and a.shape[0] == 1 else a.transpose(1, 2, 0) if a.ndim == 3 else a)
    img.save(path, **options)
    return str(path)


def predict_json(capsys, *args):
    assert cli.main(["predict", *map(str, args), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def probabilities(result, classes):
    """(N, classes) probabilities from --json output with every class shown."""
    out = np.zeros((len(result), len(classes)))
    for row, item in zip(out, result):
        for entry in item["top"]:
            assert classes[entry["index"]] == entry["class"]
            row[entry["index"]] = entry["probability"]
    return out


def one_line_error(capsys, args, *fragments):
    assert cli.main(["predict", *map(str, args)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    if len(args) == 2:  # the one image failed: not even the table's header was printed
        assert captured.out == ""
    return lines[0]


@pytest.fixture
def rgb_pixels():
    return np.random.default_rng(11).integers(0, 256, (4, 3, 6, 5), dtype=np.uint8)


def test_png_probabilities_are_the_models_on_the_normalized_pixels(rgb_run, rgb_pixels, tmp_path, capsys):
    files = [save(tmp_path / f"img{i}.png", x) for i, x in enumerate(rgb_pixels)]
    result = predict_json(capsys, rgb_run, *files, "--top-k", "9")  # more than the 3 classes: all 3
    assert [r["file"] for r in result] == files
    assert all(len(r["top"]) == 3 for r in result)
    got = probabilities(result, ["cat", "dog", "bird"])
    np.testing.assert_allclose(got, expected(rgb_run, rgb_pixels / 255.0), rtol=1e-5, atol=1e-7)
    for r in result:  # most probable first
        p = [e["probability"] for e in r["top"]]
        assert p == sorted(p, reverse=True)


def test_jpeg_grayscale_rgba_and_16_bit_png(rgb_run, digits_run, rgb_pixels, tmp_path, capsys):
    jpeg = save(tmp_path / "a.jpg", rgb_pixels[0], quality=95)
    decoded = np.asarray(Image.open(jpeg).convert("RGB"), np.float32).transpose(2, 0, 1) / 255
    assert np.abs(decoded - rgb_pixels[0] / 255).max() > 0  # lossy: the decoded pixels are the input
    rgba = save(tmp_path / "b.png", np.concatenate([rgb_pixels[1], np.zeros((1, 6, 5), np.uint8)]))
    gray = save(tmp_path / "c.png", rgb_pixels[2][:1])
    want = expected(rgb_run, [decoded, rgb_pixels[1] / 255, np.repeat(rgb_pixels[2][:1], 3, 0) / 255])
    got = probabilities(predict_json(capsys, rgb_run, jpeg, rgba, gray, "--top-k", "3"), ["cat", "dog", "bird"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

    deep = np.random.default_rng(2).integers(0, 65536, (8, 8), dtype=np.uint16)
    got = probabilities(predict_json(capsys, digits_run, save(tmp_path / "d.png", deep), "--top-k", "10"),
                        [str(d) for d in range(10)])
    np.testing.assert_allclose(got, expected(digits_run, deep[None, None] / 65535.0), rtol=1e-5, atol=1e-7)


def test_exif_orientation_is_applied(rgb_run, rgb_pixels, tmp_path, capsys):
    upright = rgb_pixels[0].transpose(1, 2, 0)  # 6 high, 5 wide, as the model takes
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # turned a quarter left: 5 high, 6 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    path = tmp_path / "turned.png"
    Image.fromarray(stored).save(path, exif=exif)
    got = probabilities(predict_json(capsys, rgb_run, path, "--top-k", "3"), ["cat", "dog", "bird"])
    np.testing.assert_allclose(got, expected(rgb_run, rgb_pixels[:1] / 255.0), rtol=1e-5, atol=1e-7)


def test_table_lists_each_file_with_its_top_classes(rgb_run, rgb_pixels, tmp_path, capsys):
    files = [save(tmp_path / f"img{i}.png", x) for i, x in enumerate(rgb_pixels)]
    assert cli.main(["predict", str(rgb_run), *files, "--top-k", "2"]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["top-1", "top-2", "file"]
    probs = expected(rgb_run, rgb_pixels / 255.0)
    assert len(rows) == len(files)
    for row, path, p in zip(rows, files, probs):
        first, second = np.argsort(-p)[:2]
        names = ["cat", "dog", "bird"]
        assert row.split() == [names[first], f"{100 * p[first]:.2f}%", names[second], f"{100 * p[second]:.2f}%",
                               path]


def test_folders_recursively_in_sorted_order_and_a_list_on_stdin(rgb_run, rgb_pixels, tmp_path, capsys,
                                                                  monkeypatch):
    root = tmp_path / "imgs"
    made = [save(root / "b.png", rgb_pixels[0]), save(root / "a" / "z.JPG", rgb_pixels[1]),
            save(root / "a" / "c.png", rgb_pixels[2]), save(root / "a" / "d" / "e.jpeg", rgb_pixels[3])]
    (root / "notes.txt").write_text("not an image")
    (root / "._b.png").write_bytes(b"\0\5\26\7")  # a macOS resource fork: hidden, skipped
    save(root / ".thumbs" / "t.png", rgb_pixels[0])
    want = [made[2], str(root / "a" / "d" / "e.jpeg"), made[1], made[0]]
    assert [r["file"] for r in predict_json(capsys, rgb_run, root)] == want
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{made[0]}\n\n{root / 'a' / 'd'}\n"))
    assert [r["file"] for r in predict_json(capsys, rgb_run, made[1], "-")] == [made[1], made[0], want[1]]


def test_batches_give_the_same_results_and_progress_goes_to_stderr(rgb_run, rgb_pixels, tmp_path, capsys):
    files = [save(tmp_path / f"img{i}.png", rgb_pixels[i % 4]) for i in range(5)]
    whole = predict_json(capsys, rgb_run, *files)
    assert cli.main(["predict", str(rgb_run), *files, "--json", "--batch-size", "2", "--progress"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == whole
    assert "5/5" in captured.err
    assert cli.main(["predict", str(rgb_run), *files, "--batch-size", "2"]) == 0
    assert capsys.readouterr().err == ""  # not a terminal: no bar by default


def test_wrong_size_is_refused_unless_resize(rgb_run, tmp_path, capsys):
    path = save(tmp_path / "big.png", np.full((3, 12, 7), 200, np.uint8))
    one_line_error(capsys, [rgb_run, path], f"image {path} is 7x12 (width x height); the model takes 5x6 images",
                   "--resize")
    got = probabilities(predict_json(capsys, rgb_run, path, "--resize", "--top-k", "3"), ["cat", "dog", "bird"])
    np.testing.assert_allclose(got, expected(rgb_run, np.full((1, 3, 6, 5), 200 / 255)), rtol=1e-5, atol=1e-7)


def test_truncated_jpeg(rgb_run, tmp_path, capsys):
    photo = np.random.default_rng(3).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    data = open(save(tmp_path / "full.jpg", photo), "rb").read()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:len(data) * 2 // 3])
    line = one_line_error(capsys, [rgb_run, tmp_path / "full.jpg", path, "--resize"], f"image {path}:")
    assert "truncated or corrupt JPEG" in line


@pytest.mark.parametrize("content", [b"just some text\n", b"GIF89a" + bytes(40)])
def test_a_file_that_is_not_a_png_or_jpeg(rgb_run, tmp_path, capsys, content):
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    one_line_error(capsys, [rgb_run, path], f"image {path}: not a PNG or JPEG image")


def test_a_gif_is_refused_even_when_pillow_reads_it(rgb_run, tmp_path, capsys):
    path = tmp_path / "anim.png"
    Image.new("RGB", (5, 6)).save(path, format="GIF")
    one_line_error(capsys, [rgb_run, path], f"image {path}: not a PNG or JPEG image")


def _declare_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its header claiming width x height (the pixel data stays tiny)."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


@pytest.mark.parametrize("width, height", [(9000, 9000), (100_000, 100_000)])  # past ours; past Pillow's too
def test_a_decompression_bomb_is_refused_before_decoding(rgb_run, tmp_path, capsys, width, height):
    small = open(save(tmp_path / "small.png", np.zeros((3, 6, 5), np.uint8)), "rb").read()
    path = tmp_path / "bomb.png"
    path.write_bytes(_declare_size(small, width, height))
    assert width > 50_000 or Image.open(path).size == (width, height)
    line = one_line_error(capsys, [rgb_run, path, "--resize"], f"image {path}:")
    assert "pixels" in line


def test_a_file_larger_than_the_bound(rgb_run, tmp_path, capsys, monkeypatch):
    path = save(tmp_path / "a.png", np.zeros((3, 6, 5), np.uint8))
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 10)
    one_line_error(capsys, [rgb_run, path], f"{path} must be at most 10 bytes")


def test_missing_paths_and_empty_folders(rgb_run, tmp_path, capsys):
    one_line_error(capsys, [rgb_run, tmp_path / "nope.png"], f"image {tmp_path / 'nope.png'} does not exist")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, [rgb_run, tmp_path / "empty"], "no images found in", "*.png")


def test_without_pillow_says_how_to_install_it(rgb_run, tmp_path, capsys, monkeypatch):
    path = save(tmp_path / "a.png", np.zeros((3, 6, 5), np.uint8))
    monkeypatch.setitem(sys.modules, "PIL", None)
    one_line_error(capsys, [rgb_run, path], 'fastconv[images]')


def test_read_image_checks_its_shape(tmp_path):
    path = save(tmp_path / "a.png", np.zeros((3, 6, 5), np.uint8))
    with pytest.raises(ValueError, match=r"`shape` must be \(C, H, W\) with C = 1 .* got \(4, 6, 5\)"):
        images.read_model_input(path, (4, 6, 5))
    x = images.read_model_input(path, (1, 6, 5))
    assert x.dtype == np.float32 and x.shape == (1, 6, 5) and x.flags.c_contiguous


# -- --skip-errors -----------------------------------------------------------------------------------

def _bad_files(tmp_path, rgb_pixels):
    """{reason fragment: path} of files predict cannot use, beside good ones."""
    photo = np.random.default_rng(3).integers(0, 256, (3, 6, 5), dtype=np.uint8)
    data = open(save(tmp_path / "whole.jpg", photo, quality=95), "rb").read()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    (tmp_path / "text.png").write_bytes(b"just some text\n")
    return {"truncated or corrupt JPEG": str(tmp_path / "cut.jpg"),
            "not a PNG or JPEG image": str(tmp_path / "text.png"),
            "the model takes 5x6 images": save(tmp_path / "big.png", np.zeros((3, 12, 7), np.uint8)),
            "does not exist": str(tmp_path / "gone.png")}


def test_skip_errors_reports_each_bad_file_and_predicts_the_others(rgb_run, rgb_pixels, tmp_path, capsys):
    bad = _bad_files(tmp_path, rgb_pixels)
    good = [save(tmp_path / f"img{i}.png", x) for i, x in enumerate(rgb_pixels[:2])]
    files = [*bad.values(), good[0], bad["does not exist"], good[1]]  # the first batch of 2 fails whole
    args = ["predict", str(rgb_run), *files, "--skip-errors", "--batch-size", "2", "--top-k", "3"]
    assert cli.main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert [r["file"] for r in result] == good
    np.testing.assert_allclose(probabilities(result, ["cat", "dog", "bird"]), expected(rgb_run, rgb_pixels[:2] / 255),
                               rtol=1e-5, atol=1e-7)
    *skips, summary = captured.err.strip().splitlines()
    assert summary == "fastconv predict: 5 of 7 images skipped, 2 predicted"
    # the missing ones when the sources are listed, then the others as their batches are read
    want = [bad["does not exist"]] * 2 + [bad[k] for k in bad if k != "does not exist"]
    assert len(skips) == len(want)
    for line, path in zip(skips, want):
        reason = next(k for k, p in bad.items() if p == path)
        assert line.startswith(f"fastconv predict: skipped image {path}") and reason in line, line

    assert cli.main(args) == 0  # the table: the header once, before the first row
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].split() == ["top-1", "top-2", "top-3", "file"] and [r.split()[-1] for r in out[1:]] == good


def test_skip_errors_in_folders_and_stdin_lists(rgb_run, rgb_pixels, tmp_path, capsys, monkeypatch):
    root = tmp_path / "imgs"
    good = save(root / "a.png", rgb_pixels[0])
    (root / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 and then nothing")
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{root}\n{tmp_path / 'nope.jpg'}\n"))
    assert cli.main(["predict", str(rgb_run), "-", "--skip-errors", "--json"]) == 0
    captured = capsys.readouterr()
    assert [r["file"] for r in json.loads(captured.out)] == [good]
    assert captured.err.splitlines() == [
        f"fastconv predict: skipped image {tmp_path / 'nope.jpg'} does not exist",
        next(line for line in captured.err.splitlines() if str(root / "b.jpg") in line),
        "fastconv predict: 2 of 3 images skipped, 1 predicted"]
    assert "truncated or corrupt JPEG" in captured.err


def test_skip_errors_fails_when_every_file_fails(rgb_run, rgb_pixels, tmp_path, capsys):
    bad = _bad_files(tmp_path, rgb_pixels)
    for as_json in ([], ["--json"]):
        assert cli.main(["predict", str(rgb_run), *bad.values(), "--skip-errors", *as_json]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        *skips, last = captured.err.strip().splitlines()
        assert len(skips) == 4 and all(line.startswith("fastconv predict: skipped image ") for line in skips)
        assert last == "fastconv predict: error: every image failed: 4 of 4 skipped (reasons above)"


def test_skip_errors_names_an_os_error_by_its_reason(rgb_run, rgb_pixels, tmp_path, capsys, monkeypatch):
    files = [save(tmp_path / f"img{i}.png", x) for i, x in enumerate(rgb_pixels[:2])]
    read = images.read_model_input

    def locked(path, *args, **kwargs):
        if path == files[0]:
            raise PermissionError(13, "Permission denied", path)
        return read(path, *args, **kwargs)

    monkeypatch.setattr(images, "read_model_input", locked)
    assert cli.main(["predict", str(rgb_run), *files, "--skip-errors"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"fastconv predict: skipped image {files[0]}: Permission denied",
                   "fastconv predict: 1 of 2 images skipped, 1 predicted"]
    one_line_error(capsys, [rgb_run, *files], f"{files[0]}: Permission denied")  # without: the first stops it
