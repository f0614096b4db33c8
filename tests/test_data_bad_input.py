"""Every bad data input gives exit code 2 and one stderr line naming the culprit (and good odd inputs load)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthmed.cli import main
from synthmed.data.config import DataConfig
from synthmed.data.load import load_data
from synthmed.data.policy import read_image


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(["data", "info", *args])
    captured = capsys.readouterr()
    return code, captured.err.strip()


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


def make_folder(root: Path, classes=("a", "b"), n=4, mode="RGB", size=(16, 16)) -> Path:
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            colour = ci * 50 + i * 9
            Image.new(mode, size, colour if mode == "L" else (colour, 30, 60)).save(root / c / f"{i}.png")
    return root


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ paths / files


@pytest.mark.parametrize("spec", ["folder:{t}/nope", "npz:{t}/nope.npz", "csv:{t}/nope.csv"])
def test_missing_path(tmp_path: Path, capsys, spec: str) -> None:
    code, err = run(capsys, spec.format(t=tmp_path))
    assert_one_line_error(code, err, "not found", str(tmp_path / "nope"))


def test_bad_spec(capsys) -> None:
    assert_one_line_error(*run(capsys, "zip:foo"), "zip:foo")
    assert_one_line_error(*run(capsys, "phantom:bones"), "phantom:bones")
    assert_one_line_error(*run(capsys, "medmnist:bloodmnst"), "bloodmnst", "bloodmnist")


def test_corrupt_image(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path)
    (root / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert_one_line_error(*run(capsys, f"folder:{root}"), "bad.png")


def test_truncated_image(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path)
    rng = np.random.default_rng(0)
    data = png_bytes(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    (root / "b" / "cut.png").write_bytes(data[: len(data) // 2])
    assert_one_line_error(*run(capsys, f"folder:{root}"), "cut.png", "truncated")


def test_zero_byte_file(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path)
    (root / "a" / "empty.jpg").write_bytes(b"")
    assert_one_line_error(*run(capsys, f"folder:{root}"), "empty.jpg", "0 bytes")


def test_non_image_file_warns_or_fails_under_strict(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path)
    (root / "a" / "notes.txt").write_text("hello")
    (root / "a" / ".DS_Store").write_bytes(b"\0\0")  # hidden files are ignored silently
    code, err = run(capsys, f"folder:{root}")
    assert code == 0 and err.count("warning:") == 1 and "notes.txt" in err and ".DS_Store" not in err
    assert_one_line_error(*run(capsys, f"folder:{root}", "--strict"), "notes.txt")


def test_empty_class_folder(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path)
    (root / "c").mkdir()
    assert_one_line_error(*run(capsys, f"folder:{root}"), str(root / "c"), "empty class folder")


def test_single_class_dataset(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path, classes=("only",))
    assert_one_line_error(*run(capsys, f"folder:{root}"), "only one class", "only")


def test_different_native_sizes_need_size(tmp_path: Path, capsys) -> None:
    """A stage that stacks images (here `data show`) needs data.size; `data info` does not (test_data_info.py)."""
    root = make_folder(tmp_path / "src")
    Image.new("RGB", (30, 20)).save(root / "a" / "wide.png")
    grid = tmp_path / "grid.png"
    code = main(["data", "show", f"folder:{root}", "-o", str(grid)])
    assert_one_line_error(code, capsys.readouterr().err.strip(), "different sizes", "data.size", "--set data.size=")
    assert not grid.exists()
    assert run(capsys, f"folder:{root}", "--set", "data.size=16")[0] == 0


def test_decompression_bomb(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path)
    Image.new("RGB", (100, 100)).save(root / "b" / "big.png")
    code, err = run(capsys, f"folder:{root}", "--set", "data.max_image_pixels=1000", "--set", "data.size=16")
    assert_one_line_error(code, err, "big.png", "max_image_pixels")
    code, err = run(capsys, f"folder:{root}", "--set", "data.max_image_pixels=9000", "--set", "data.size=16")
    assert_one_line_error(code, err, "big.png")  # PIL's warning zone (limit < pixels < 2 x limit) is refused too


# ------------------------------------------------------------------------------------------------ image modes


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1040).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    arr = read_image(path)
    assert arr.shape == (8, 8, 1) and arr.dtype == np.uint8
    assert np.array_equal(arr[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    assert len(np.unique(arr)) == 64  # clipping would have collapsed everything above 255 to one value


def test_palette_alpha_cmyk_conversions(tmp_path: Path) -> None:
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png")[0, 0].tolist() == [200, 10, 20]
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert read_image(tmp_path / "clear.png")[0, 0].tolist() == [255, 255, 255]  # alpha over white
    Image.new("RGBA", (4, 4), (0, 0, 0, 255)).save(tmp_path / "opaque.png")
    assert read_image(tmp_path / "opaque.png")[0, 0].tolist() == [0, 0, 0]
    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").shape == (4, 4, 1) and read_image(tmp_path / "la.png")[0, 0, 0] == 255
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    r, g, b = read_image(tmp_path / "cmyk.jpg")[0, 0].tolist()
    assert r > 200 and g < 60 and b < 60  # cyan-free, full magenta + yellow = red


def test_mixed_grayscale_and_rgb_promoted_with_warning(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path)
    Image.new("L", (16, 16), 77).save(root / "a" / "gray.png")
    code, err = run(capsys, f"folder:{root}")
    assert code == 0 and "grayscale" in err and "RGB" in err
    d = load_data(DataConfig(source=f"folder:{root}"), echo_warnings=False)
    assert d.channels == 3


# ------------------------------------------------------------------------------------------------ csv


def make_csv(tmp_path: Path, lines: list[str]) -> Path:
    make_folder(tmp_path / "img")
    p = tmp_path / "data.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def good_rows() -> list[str]:
    return [f"img/{c}/{i}.png,{c},train" for c in "ab" for i in range(3)] + ["img/a/3.png,a,val", "img/b/3.png,b,test"]


def test_csv_unknown_label_in_test(tmp_path: Path, capsys) -> None:
    rows = good_rows()
    rows[-1] = "img/b/3.png,zebra,test"
    p = make_csv(tmp_path, ["path,label,split", *rows])
    assert_one_line_error(*run(capsys, f"csv:{p}"), "zebra", "line 9")


def test_csv_label_outside_fixed_classes(tmp_path: Path, capsys) -> None:
    p = make_csv(tmp_path, ["path,label,split", *good_rows()])
    assert run(capsys, f"csv:{p}")[0] == 0
    assert_one_line_error(*run(capsys, f"csv:{p}", "--set", "data.classes=[a, c]"), "unknown label 'b'")


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "img/../../x.png"])
def test_csv_path_traversal(tmp_path: Path, capsys, bad: str) -> None:
    p = make_csv(tmp_path, ["path,label", *[r.rsplit(",", 1)[0] for r in good_rows()], f"{bad},a"])
    assert_one_line_error(*run(capsys, f"csv:{p}"), bad, "line 10")


def test_csv_duplicate_path_missing_column_missing_image(tmp_path: Path, capsys) -> None:
    rows = good_rows()
    p = make_csv(tmp_path, ["path,label,split", *rows, rows[0]])
    assert_one_line_error(*run(capsys, f"csv:{p}"), "duplicate path", "img/a/0.png")
    p.write_text("file,label\nimg/a/0.png,a\n")
    assert_one_line_error(*run(capsys, f"csv:{p}"), "missing column 'path'")
    p.write_text("path,label\nimg/a/0.png,a\nimg/b/9.png,b\n")
    assert_one_line_error(*run(capsys, f"csv:{p}"), "img/b/9.png")


# ------------------------------------------------------------------------------------------------ npz


def write_npz(path: Path, **override) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for s, k in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{s}_images"] = rng.integers(0, 256, (k, 8, 8, 3), dtype=np.uint8)
        arrays[f"{s}_labels"] = (np.arange(k) % 2).reshape(-1, 1)
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_npz_length_mismatch(tmp_path: Path, capsys) -> None:
    p = write_npz(tmp_path / "x.npz", val_labels=np.zeros((3, 1), np.int64))
    assert_one_line_error(*run(capsys, f"npz:{p}"), "x.npz", "val_labels", "length mismatch")


def test_npz_labels_out_of_range(tmp_path: Path, capsys) -> None:
    p = write_npz(tmp_path / "x.npz", test_labels=np.array([0, 1, -1, 0]))
    assert_one_line_error(*run(capsys, f"npz:{p}"), "test_labels", "negative")
    p = write_npz(tmp_path / "bloodmnist.npz", test_labels=np.array([0, 1, 9, 0]))
    assert_one_line_error(*run(capsys, f"npz:{p}"), "label 9 out of range")


def test_npz_nan_and_bad_dtype(tmp_path: Path, capsys) -> None:
    imgs = np.zeros((12, 8, 8), np.float32)
    imgs[3, 2, 2] = np.nan
    p = write_npz(tmp_path / "x.npz", train_images=imgs)
    assert_one_line_error(*run(capsys, f"npz:{p}"), "train_images", "NaN")
    p = write_npz(tmp_path / "x.npz", val_labels=np.array([0.0, np.inf, 1.0, 0.0]))
    assert_one_line_error(*run(capsys, f"npz:{p}"), "val_labels", "NaN or inf")
    p = write_npz(tmp_path / "x.npz", val_images=np.full((4, 8, 8), 300, np.int32))
    assert_one_line_error(*run(capsys, f"npz:{p}"), "val_images", "uint8")


def test_npz_missing_key_and_not_a_zip(tmp_path: Path, capsys) -> None:
    p = write_npz(tmp_path / "x.npz", test_images=None)
    assert_one_line_error(*run(capsys, f"npz:{p}"), "test_images")
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    assert_one_line_error(*run(capsys, f"npz:{tmp_path / 'junk.npz'}"), "junk.npz")
