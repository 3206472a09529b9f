"""Reading Part 10 headers: the facts of good files, and a clear reason (without PHI) for each bad one."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import MRImageStorage

from fhir_gateway.ingest.dicom.part10 import Part10Error, read_header

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about odd sample files


def data(name: str) -> bytes:
    return (TEST_FILES / name).read_bytes()


def patched(name: str, old: bytes, new: bytes) -> bytes:
    """The file with the first occurrence of `old` replaced by `new` of the same length."""
    raw = data(name)
    assert old in raw and len(old) == len(new)
    return raw.replace(old, new, 1)


def rewritten(name: str, edit: object) -> bytes:
    ds = pydicom.dcmread(TEST_FILES / name)
    edit(ds)  # type: ignore[operator]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def failure(raw: bytes) -> Part10Error:
    with pytest.raises(Part10Error) as caught:
        read_header(raw)
    return caught.value


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
        "image_dfl.dcm",  # deflated
        "SC_rgb_jpeg.dcm",  # implicit VR data set under an explicit VR transfer syntax
        "dicomdirtests/98892003/MR700/4467",
    ],
)
def test_good_files_give_their_uids(name: str) -> None:
    ds = pydicom.dcmread(TEST_FILES / name, stop_before_pixels=True)
    h = read_header(data(name))
    assert h.study_instance_uid == ds.StudyInstanceUID
    assert h.series_instance_uid == ds.SeriesInstanceUID
    assert h.sop_instance_uid == ds.SOPInstanceUID
    assert h.sop_class_uid == ds.SOPClassUID
    assert h.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID


def test_ct_small_header_facts() -> None:
    h = read_header(data("CT_small.dcm"))
    assert (h.patient_id, h.patient_name, h.patient_sex) == ("1CT1", "CompressedSamples^CT1", "O")
    assert (h.study_date, h.study_time, h.timezone_offset) == ("20040119", "072730", "-0500")
    assert (h.modality, h.series_number, h.instance_number) == ("CT", 1, 1)
    assert h.issuer_of_patient_id is None and h.accession_number is None


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("no_meta.dcm", "not-dicom"),
        ("ExplVR_LitEndNoMeta.dcm", "no-meta"),
        ("ExplVR_BigEndNoMeta.dcm", "no-meta"),
        ("meta_missing_tsyntax.dcm", "no-meta"),
        ("MR_truncated.dcm", "truncated"),
        ("rtplan_truncated.dcm", "truncated"),
        ("badVR.dcm", "bad-vr"),
        ("JPEGLSNearLossless_08.dcm", "missing-uid"),
        ("dicomdirtests/DICOMDIR", "dicomdir"),
        ("dicomdirtests/README.txt", "not-dicom"),
    ],
)
def test_broken_sample_files_fail_with_their_reason(name: str, kind: str) -> None:
    assert failure(data(name)).kind == kind


def test_reasons_name_the_element_but_never_the_value() -> None:
    bad = failure(data("badVR.dcm"))
    assert bad.reason == "bad VR: the value of NumberOfFrames is not a valid IS"
    assert "1A" not in bad.reason
    missing = failure(data("JPEGLSNearLossless_08.dcm"))
    assert missing.reason == "missing StudyInstanceUID, SeriesInstanceUID"


def test_unknown_vr_code_is_a_bad_vr() -> None:
    raw = patched("CT_small.dcm", b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00ZZ")
    assert failure(raw).reason == "bad VR: Modality has an unknown Value Representation"


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("SeriesInstanceUID", "1.2.abc"), ("StudyInstanceUID", "1." + "2" * 70), ("PatientAge", "42 years")],
)
def test_values_that_break_their_vr(keyword: str, value: str) -> None:
    raw = rewritten("CT_small.dcm", lambda ds: setattr(ds, keyword, value))
    err = failure(raw)
    assert err.kind == "bad-vr" and keyword in err.reason and value not in err.reason


def test_uid_with_leading_zero_components_is_tolerated() -> None:
    raw = rewritten("CT_small.dcm", lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.04.5"))
    assert read_header(raw).series_instance_uid == "1.2.04.5"


@pytest.mark.parametrize("keep", [150, 200, 500, 6000, 6290])
def test_cut_anywhere_is_truncated(keep: int) -> None:
    assert failure(data("CT_small.dcm")[:keep]).kind == "truncated"


def test_cut_encapsulated_pixel_data_is_truncated() -> None:
    raw = data("JPEG2000.dcm")
    assert failure(raw[:-100]).reason == "truncated: the encapsulated Pixel Data has no end"
    assert failure(raw[:-2]).kind == "truncated"
    assert failure(raw[:-8]).kind == "truncated"  # the Sequence Delimiter is missing


def test_missing_uid_and_sop_class_mismatch() -> None:
    no_series = rewritten("CT_small.dcm", lambda ds: delattr(ds, "SeriesInstanceUID"))
    assert failure(no_series).reason == "missing SeriesInstanceUID"

    ct, mr = b"1.2.840.10008.5.1.4.1.1.2\x00", f"{MRImageStorage}\x00".encode()
    other_class = patched("CT_small.dcm", ct, mr)  # the File Meta comes first
    assert failure(other_class).kind == "sop-class-mismatch"


def test_unreadable_file_meta_and_unknown_transfer_syntax() -> None:
    bad_meta_vr = patched("CT_small.dcm", b"\x02\x00\x02\x00UI", b"\x02\x00\x02\x00ZZ")
    assert failure(bad_meta_vr).kind == "unparseable"
    unknown_syntax = patched("CT_small.dcm", b"1.2.840.10008.1.2.1\x00", b"1.2.840.99999.1.2.1\x00")
    assert failure(unknown_syntax).reason == "the Transfer Syntax UID is not one this server can read"


TRAILING_PADDING = b"\xfc\xff\xfc\xffOB\x00\x00" + (16).to_bytes(4, "little") + b"\x00" * 16
PRIVATE_TEXT = b"\xe1\x7f\x10\x00LO\x04\x00ABC "
OPEN_SEQUENCE = b"\xfa\xff\xfa\xffSQ\x00\x00\xff\xff\xff\xff"


def test_elements_after_the_pixel_data_must_be_whole() -> None:
    raw = data("CT_small.dcm")
    assert read_header(raw + PRIVATE_TEXT + TRAILING_PADDING).sop_instance_uid
    assert read_header(raw + OPEN_SEQUENCE).sop_instance_uid  # sequences after the pixels are not walked
    cut = failure(raw + PRIVATE_TEXT + TRAILING_PADDING[:-4])
    assert cut.reason == "truncated: the value of DataSetTrailingPadding runs past the end of the data"
    assert failure(raw + TRAILING_PADDING[:10]).reason == "truncated: the data ends inside an element header"
    assert failure(raw + PRIVATE_TEXT[:5]).kind == "truncated"


@pytest.mark.parametrize("vr", [b"US", b"FL"])
def test_a_value_sent_with_the_wrong_vr_is_absent_not_garbage(vr: bytes) -> None:
    raw = patched("CT_small.dcm", b"\x10\x00\x10\x00PN", b"\x10\x00\x10\x00" + vr)
    h = read_header(raw)
    assert h.patient_name is None and h.patient_id == "1CT1"


def test_garbage_and_empty_input() -> None:
    assert failure(b"").kind == "not-dicom"
    assert failure(b"\x00" * 128 + b"DICM" + b"\xff" * 64).kind in ("unparseable", "no-meta")
    assert failure(b"\x08\x00\x05\x00CS").kind == "no-meta"
