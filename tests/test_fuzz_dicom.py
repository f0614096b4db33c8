"""Fuzzed DICOM input (issue 17 part 4; harness in fuzz_common.py): valid files with mutated headers (odd values,
garbage text in IS/DS elements, wrong pixel-data sizes, compressed syntaxes) and damaged bytes, through
``read_dicom`` and the file collector. Ends with the total case count of all fuzz modules.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fuzz_common import (CASES, FUZZ_TESTS, KNOWN_HITS, OUTCOMES, cfg_kw_st, count, data_cfg, fuzz, load_one,
                         read_or_error)
from hypothesis import given
from hypothesis import strategies as st

from synthmed.data.dicom import read_dicom
from synthmed.errors import DataError


# ------------------------------------------------------------------------------------------------ DICOM

ds_text_st = st.sampled_from(["1", "0", "-1", "2.5", "abc", "", "1e400", "nan", "1\\2", "40\\400", "-0", " 7 ",
                              "99999999999999"])


@st.composite
def dicom_files(draw: st.DrawFn) -> bytes:
    """A valid 16-bit (or RGB) DICOM file, then 0-3 header mutations (odd values, garbage text, wrong sizes)."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                             JPEGBaseline8Bit, RLELossless, SecondaryCaptureImageStorage)

    rgb = draw(st.booleans())
    h = {"Rows": draw(st.integers(1, 8)), "Columns": draw(st.integers(1, 8)), "SamplesPerPixel": 3 if rgb else 1,
         "BitsAllocated": 8 if rgb else 16, "BitsStored": 8 if rgb else 12, "HighBit": 7 if rgb else 11,
         "PixelRepresentation": 0, "PhotometricInterpretation": "RGB" if rgb else "MONOCHROME2"}
    if rgb:
        h["PlanarConfiguration"] = 0
    text: dict[str, str] = {}
    syntax, pixels = ExplicitVRLittleEndian, "exact"
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored",
                                     "PixelRepresentation", "PhotometricInterpretation", "text", "syntax", "pixels"]))
        if what == "text":
            name = draw(st.sampled_from(["NumberOfFrames", "RescaleSlope", "RescaleIntercept", "WindowCenter",
                                         "WindowWidth"]))
            text[name] = draw(ds_text_st)
        elif what == "syntax":
            syntax = draw(st.sampled_from([ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit,
                                           RLELossless]))
        elif what == "pixels":
            pixels = draw(st.sampled_from(["short", "long", "random", "none"]))
        elif what == "PhotometricInterpretation":
            h[what] = draw(st.sampled_from(["MONOCHROME1", "RGB", "YBR_FULL", "PALETTE COLOR", "YBR_FULL_422",
                                            "monochrome2", "", "ZZZ"]))
        else:
            h[what] = draw(st.sampled_from([0, 1, 2, 3, 4, 8, 12, 16, 32, 40, 64, 255]))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = syntax
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    for name, value in h.items():
        setattr(ds, name, value)
    for name, value in text.items():
        ds.add_new(tag_for_keyword(name), "LO", value)  # any text, valid for IS/DS or not
    size = h["Rows"] * h["Columns"] * max(h["SamplesPerPixel"], 1) * max(h["BitsAllocated"], 8) // 8
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    exact = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    if not rgb and h["BitsAllocated"] == 16:
        exact = (np.frombuffer(exact, np.uint16) & 0x0FFF).astype("<u2").tobytes()  # within BitsStored=12
    if pixels != "none":
        payload = {"exact": exact, "short": exact[: size // 2], "long": exact + bytes(7),
                   "random": draw(st.binary(max_size=64))}[pixels]
        if syntax.is_compressed:
            ds.PixelData = encapsulate([payload or b"\0\0"])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = payload + (b"\0" if len(payload) % 2 else b"")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def _dicom_case(blob: bytes, name: str, kw: dict, facts_only: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(blob)
        read_or_error(read_dicom, path, 1_000_000)
        load_one(path, data_cfg(**kw), facts_only)


@fuzz(150)
@given(blob=dicom_files(), kw=cfg_kw_st, facts_only=st.booleans())
def test_dicom_headers(blob: bytes, kw: dict, facts_only: bool) -> None:
    count("dicom_headers")
    _dicom_case(blob, "x.dcm", kw, facts_only)


@fuzz(100)
@given(blob=dicom_files(), damage=st.sampled_from(["truncate", "flip", "splice"]), where=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8),
       name=st.sampled_from(["x.dcm", "x", "x.DICOM"]), kw=cfg_kw_st)
def test_dicom_damaged(blob: bytes, damage: str, where: float, flips: list, name: str, kw: dict) -> None:
    count("dicom_damaged")
    data = bytearray(blob)
    cut = int(len(data) * where)
    if damage == "truncate":
        data = data[: max(cut, 132)]
    elif damage == "flip":
        for pos, val in flips:
            data[min(132 + int(pos * (len(data) - 132)), len(data) - 1)] = val
    else:
        data = data[:cut] + bytes(v for _, v in flips) + data[cut:]
    _dicom_case(bytes(data), name, kw, False)


# ------------------------------------------------------------------------------------------------ regressions


@pytest.mark.parametrize(("element", "value", "needle"), [
    ("NumberOfFrames", "2.5", "NumberOfFrames='2.5' is not an integer"),
    ("NumberOfFrames", "abc", "NumberOfFrames='abc' is not an integer"),
    ("BitsStored", None, "BitsStored=255 is outside 1..64"),
])
def test_dicom_bad_header_values(tmp_path: Path, element: str, value: str | None, needle: str) -> None:
    """Found by test_dicom_headers: a non-integer NumberOfFrames gave ValueError outside the DataError mapping."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, "1.2.3"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, 4, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(16, dtype=np.uint16).tobytes()
    path = tmp_path / "x.dcm"
    if value is None:
        ds.BitsStored = 255
    else:
        ds.add_new(tag_for_keyword(element), "LO", value)
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DataError) as err:
        read_dicom(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_zz_case_count() -> None:
    """At least 1000 generated cases in total when the whole module ran (pytest runs tests in file order)."""
    if set(CASES) != FUZZ_TESTS:
        pytest.skip(f"only part of the fuzz module ran ({sorted(CASES)})")
    total = sum(CASES.values())
    print(f"\nfuzz cases: {total} {dict(sorted(CASES.items()))}; readers: {OUTCOMES}; known config bugs met: {KNOWN_HITS}")
    assert total >= 1000
    for name, per in OUTCOMES.items():  # the structured reader fuzzes reach both outcomes: not all hopeless inputs
        if name not in ("random_bytes", "huge_dims"):
            assert per["loaded"] > 0 and per["DataError"] > 0, (name, per)
