"""ACK construction: original and enhanced modes, MSA-2, ERR layout per version, mirroring."""

from __future__ import annotations

from fhir_gateway.ingest.hl7v2.ack import Outcome, acknowledgements, build_ack, escape
from fhir_gateway.ingest.hl7v2.er7 import parse
from fhir_gateway.ingest.hl7v2.mapping.context import MapIssue

ISSUE = MapIssue("E", "101", "PID-3 (patient identifier list) is required", "PID", 1, 3)


def _msg(version: str = "2.5.1", accept: str = "", app: str = "", enc: str = "^~\\&") -> str:
    return f"MSH|{enc}|SND|SFAC|RCV|RFAC|20240101||ADT^A01^ADT_A01|CTRL-1|P|{version}|||{accept}|{app}\r"


def _segments(ack: str) -> list[list[str]]:
    return [s.split("|") for s in ack.split("\r")]


def test_original_mode_aa_echoes_control_id_and_mirrors_header() -> None:
    [ack] = acknowledgements(parse(_msg()), Outcome.ACCEPTED)
    msh, msa = _segments(ack)
    assert msh[1] == "^~\\&" and msh[2] == "RCV" and msh[3] == "RFAC" and msh[4] == "SND" and msh[5] == "SFAC"
    assert msh[8] == "ACK^A01^ACK" and msh[10] == "P" and msh[11] == "2.5.1"
    assert msa == ["MSA", "AA", "CTRL-1"]


def test_original_mode_error_has_err_with_location_and_table_0357() -> None:
    [ack] = acknowledgements(parse(_msg()), Outcome.ERROR, [ISSUE])
    segs = _segments(ack)
    assert segs[1][:3] == ["MSA", "AE", "CTRL-1"]
    err = segs[2]
    assert (
        err[0] == "ERR" and err[2] == "PID^1^3" and err[3].startswith("101^") and err[3].endswith("^HL70357")
    )
    assert err[4] == "E"


def test_rejected_and_unavailable_are_ar() -> None:
    for outcome in (Outcome.REJECTED, Outcome.UNAVAILABLE):
        [ack] = acknowledgements(parse(_msg()), outcome, [ISSUE])
        assert _segments(ack)[1][1] == "AR"


def test_old_versions_get_the_eld_form_of_err() -> None:
    [ack] = acknowledgements(parse(_msg("2.3")), Outcome.ERROR, [ISSUE])
    segs = _segments(ack)
    assert segs[0][8] == "ACK^A01" and segs[0][11] == "2.3"
    assert segs[2][0] == "ERR" and segs[2][1].startswith("PID^1^3^101&")


def test_enhanced_mode_commit_then_application_ack() -> None:
    acks = acknowledgements(parse(_msg(accept="AL", app="AL")), Outcome.ACCEPTED)
    assert [_segments(a)[1][1] for a in acks] == ["CA", "AA"]
    acks = acknowledgements(parse(_msg(accept="AL", app="ER")), Outcome.ACCEPTED)
    assert [_segments(a)[1][1] for a in acks] == ["CA"]
    acks = acknowledgements(parse(_msg(accept="NE", app="AL")), Outcome.ERROR, [ISSUE])
    assert [_segments(a)[1][1] for a in acks] == ["AE"]
    acks = acknowledgements(parse(_msg(accept="ER", app="SU")), Outcome.ACCEPTED)
    assert [_segments(a)[1][1] for a in acks] == ["AA"]


def test_enhanced_store_down_is_commit_reject_and_no_application_ack() -> None:
    acks = acknowledgements(parse(_msg(accept="AL", app="AL")), Outcome.UNAVAILABLE, [ISSUE])
    assert [_segments(a)[1][1] for a in acks] == ["CR"]


def test_sender_asking_for_nothing_still_gets_one_answer() -> None:
    acks = acknowledgements(parse(_msg(accept="NE", app="NE")), Outcome.ACCEPTED)
    assert [_segments(a)[1][1] for a in acks] == ["CA"]


def test_custom_delimiters_are_mirrored_and_texts_escaped() -> None:
    msg = parse("MSH*:!$@*SND*SF*R*RF*2024**ORU:R01*K7*P*2.5\r")
    ack = build_ack(msg, "AE", [MapIssue("E", "102", "bad * value : here", "OBX", 2, 5)], text="a*b")
    msh, msa, err = (s.split("*") for s in ack.split("\r"))
    assert msh[1] == ":!$@" and msh[8] == "ACK:R01:ACK"
    assert msa == ["MSA", "AE", "K7", "a$F$b"]
    assert err[2] == "OBX:2:5" and "$F$" in err[3] and "$S$" in err[3]


def test_garbage_gets_a_default_ack() -> None:
    ack = build_ack(None, "AR", [MapIssue("E", "100", "no MSH", "MSH", 1)], raw_control_id="x|y")
    msh, msa, err = _segments(ack)[0], _segments(ack)[1], ack.split("\r")[2]
    assert msh[0] == "MSH" and msh[8] == "ACK" and msh[11] == "2.5.1"
    assert msa[:2] == ["MSA", "AR"] and msa[2] == "x\\F\\y"
    assert err.startswith("ERR||MSH^1|100^")


def test_escape_covers_every_delimiter_and_line_breaks() -> None:
    assert escape("a|b^c~d\\e&f\ng") == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f g"
