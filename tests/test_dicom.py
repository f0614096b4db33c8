"""DICOM input (dicom: source) and deep (16-bit) images kept deep until windowing. Files are built with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, SecondaryCaptureImageStorage, generate_uid

from synthmed.cli import main
from synthmed.data.config import DataConfig
from synthmed.data.dicom import read_dicom
from synthmed.data.info import describe_source
from synthmed.data.load import load_data
from synthmed.errors import DataError


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", window: tuple | None = None,
                slope: float | None = None, intercept: float | None = None, bits: int = 12,
                compressed: bool = False, frames: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGLSLossless if compressed else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if compressed:
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not really jpeg-ls"])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_slice(hu: list[int]) -> np.ndarray:
    """4x4 stored values (int16) for Hounsfield units with RescaleIntercept -1024."""
    arr = np.array(hu * (16 // len(hu)), dtype=np.int32).reshape(4, 4) + 1024
    return arr.astype(np.int16)


def ct_folder(root: Path, n: int = 5, **kw) -> Path:
    for c in ("lesion", "normal"):
        for i in range(n):
            write_dicom(root / c / f"{i}.dcm", ct_slice([-160, 40, 240, 40 + 10 * i]), slope=1.0, intercept=-1024.0,
                        window=(40, 400), **kw)
    return root


def test_ct_rescale_and_header_window(tmp_path: Path) -> None:
    d = read_dicom(ct_folder(tmp_path) / "lesion" / "0.dcm")
    assert d.window == (40.0, 400.0) and d.mode == "DICOM MONOCHROME2 12-bit"
    assert d.array[0, :3, 0].tolist() == [-160, 40, 240]  # RescaleIntercept applied: Hounsfield units
    data = load_data(DataConfig(source=f"dicom:{tmp_path}"), echo_warnings=False)
    assert data.channels == 1 and data.size == (4, 4) and data.classes == ["lesion", "normal"]
    img = data.train_pool.images[0, 0, :3, 0].tolist()
    assert img == [0, 128, 255]  # -160 = center - width/2 -> 0, 40 -> middle, 240 -> 255


def test_config_window_overrides_header_and_monochrome1_inverts(tmp_path: Path) -> None:
    ct_folder(tmp_path / "m2")
    wide = load_data(DataConfig(source=f"dicom:{tmp_path / 'm2'}", window=(40, 800)), echo_warnings=False)
    assert wide.train_pool.images[0, 0, :3, 0].tolist() == [64, 128, 191]
    ct_folder(tmp_path / "m1", photometric="MONOCHROME1")
    inv = load_data(DataConfig(source=f"dicom:{tmp_path / 'm1'}"), echo_warnings=False)
    assert inv.train_pool.images[0, 0, :3, 0].tolist() == [255, 127, 0]


def test_no_window_uses_intensity(tmp_path: Path) -> None:
    stored = np.array([0, 1024, 2048, 4095] * 4, dtype=np.uint16).reshape(4, 4)
    for c in ("a", "b"):
        for i in range(4):
            write_dicom(tmp_path / c / f"{i}.dcm", stored, bits=12)
    full = load_data(DataConfig(source=f"dicom:{tmp_path}"), echo_warnings=False)
    assert full.train_pool.images[0, 0, :, 0].tolist() == [0, 64, 128, 255]  # the 12-bit range, not 16-bit
    pct = load_data(DataConfig(source=f"dicom:{tmp_path}", intensity="minmax"), echo_warnings=False)
    assert pct.train_pool.images[0, 0, :, 0].tolist() == [0, 64, 128, 255]


def test_csv_of_dicom_paths_with_resize(tmp_path: Path) -> None:
    ct_folder(tmp_path / "img", n=6)
    lines = ["path,label"] + [f"img/{c}/{i}.dcm,{c}" for c in ("lesion", "normal") for i in range(6)]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    data = load_data(DataConfig(source=f"dicom:{tmp_path / 'list.csv'}", size=8), echo_warnings=False)
    assert data.size == (8, 8) and data.train_pool.images.dtype == np.uint8
    assert len(data.train_pool) + len(data.val) + len(data.test) == 12
    info = describe_source(DataConfig(source=f"dicom:{tmp_path / 'list.csv'}"))
    assert info["images"]["modes"] == {"DICOM MONOCHROME2 12-bit": 12}


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_compressed_without_decoder_names_file_and_syntax(tmp_path: Path, capsys) -> None:
    ct_folder(tmp_path)
    bad = write_dicom(tmp_path / "lesion" / "zz.dcm", ct_slice([0]), compressed=True)
    with pytest.raises(DataError) as err:
        read_dicom(bad)
    msg = str(err.value)
    assert str(bad) in msg and "JPEG-LS Lossless" in msg and JPEGLSLossless in msg and "decoder" in msg
    err_line = one_line_error(capsys, ["data", "info", f"dicom:{tmp_path}"])
    assert "zz.dcm" in err_line and "JPEG-LS" in err_line


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bad_dicom_inputs(tmp_path: Path, capsys) -> None:
    ct_folder(tmp_path)
    (tmp_path / "normal" / "notes.txt").write_text("hello")
    data = load_data(DataConfig(source=f"dicom:{tmp_path}"), echo_warnings=False)
    assert any("notes.txt" in w and "not a DICOM file" in w for w in data.warnings)
    (tmp_path / "normal" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    assert "broken.dcm" in one_line_error(capsys, ["data", "info", f"dicom:{tmp_path}"])
    (tmp_path / "normal" / "broken.dcm").unlink()
    write_dicom(tmp_path / "normal" / "cine.dcm", np.zeros((2, 4, 4), np.uint16), frames=2)
    assert "multi-frame" in one_line_error(capsys, ["data", "info", f"dicom:{tmp_path}"])


def test_16bit_png_keeps_depth_until_windowing(tmp_path: Path) -> None:
    ramp = np.array([0, 1024, 2048, 4095] * 4, dtype=np.uint16).reshape(4, 4)  # 12-bit values in a 16-bit PNG
    for c in ("a", "b"):
        for i in range(4):
            (tmp_path / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ramp).save(tmp_path / c / f"{i}.png")
    dark = load_data(DataConfig(source=f"folder:{tmp_path}"), echo_warnings=False).train_pool.images[0, 0, :, 0]
    assert dark.tolist() == [0, 4, 8, 16]  # intensity: range = 0..65535 (read_image's /257)
    mm = load_data(DataConfig(source=f"folder:{tmp_path}", intensity="minmax"), echo_warnings=False)
    assert mm.train_pool.images[0, 0, :, 0].tolist() == [0, 64, 128, 255]
    win = load_data(DataConfig(source=f"folder:{tmp_path}", window=(1024, 2048)), echo_warnings=False)
    assert win.train_pool.images[0, 0, :, 0].tolist() == [0, 128, 255, 255]
    # resized in float before quantizing: a 2x upscale of the windowed ramp keeps distinct in-between values
    up = load_data(DataConfig(source=f"folder:{tmp_path}", intensity="minmax", size=8, resize="resize"),
                   echo_warnings=False).train_pool.images[0, 0, :, 0]
    assert up.dtype == np.uint8 and up[0] == 0 and len(set(up.tolist())) >= 6


def test_bad_window_and_percentile(tmp_path: Path, capsys) -> None:
    ct_folder(tmp_path)
    err = one_line_error(capsys, ["data", "info", f"dicom:{tmp_path}", "--set", "data.window=[40, 0]"])
    assert "data.window" in err and "width > 0" in err
    hot = np.tile(np.linspace(100, 300, 32).astype(np.uint16), (32, 1))  # a 100..300 ramp ...
    hot[-1, -1] = 4000  # ... with one hot pixel
    for c in ("a", "b"):
        for i in range(3):
            write_dicom(tmp_path / "hot" / c / f"{i}.dcm", hot)
    mm = load_data(DataConfig(source=f"dicom:{tmp_path / 'hot'}", intensity="minmax"), echo_warnings=False)
    pc = load_data(DataConfig(source=f"dicom:{tmp_path / 'hot'}", intensity="percentile"), echo_warnings=False)
    # the hot pixel squeezes min-max into a few grey levels; the 99.5th percentile clips it instead
    assert mm.train_pool.images[0, 0, :, 0].max() < 20 and pc.train_pool.images[0, 0, :, 0].max() > 240
