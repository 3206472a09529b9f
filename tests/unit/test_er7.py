"""The ER7 tokenizer: delimiters from MSH-1/2, escapes, segment terminators, leniency, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_gateway.ingest.hl7v2.er7 import DEFAULT, Delimiters, Er7Error, decode, parse, unescape

ADT = (
    "MSH|^~\\&|APP|FAC|RCV|RFAC|20240102030405+0100||ADT^A01^ADT_A01|C1|P|2.5.1\r"
    "PID|1||123^^^HOSP^MR~456^^^SSA^SS||Doe^John^Q\r"
)


def test_fields_are_numbered_as_in_the_standard() -> None:
    msg = parse(ADT)
    assert msg.msh.value(1) == "|"
    assert msg.msh.value(2) == "^~\\&"
    assert msg.message_code == "ADT" and msg.trigger == "A01" and msg.structure == "ADT_A01"
    assert msg.control_id == "C1" and msg.version == "2.5.1"
    pid = msg.first("PID")
    assert pid is not None and pid.value(3, 1) == "123" and pid.value(3, 4) == "HOSP"
    assert pid.value(3, 1, rep=1) == "456" and pid.value(3, 5, rep=1) == "SS"
    assert pid.value(5, 2) == "John"
    assert pid.value(99) == "" and pid.value(3, 9) == "" and pid.value(3, rep=5) == ""


def test_delimiters_come_from_the_message() -> None:
    text = "MSH*:!$@*APP*FAC*R*F*2024**ADT:A08*X9*P*2.3\rPID*1**A1:::NS!A2:::NS2**Roe:Ann@Marie\r"
    msg = parse(text)
    assert msg.delimiters == Delimiters("*", ":", "!", "$", "@")
    pid = msg.first("PID")
    assert pid is not None
    assert [r[0][0] for r in pid.repetitions(3)] == ["A1", "A2"]
    assert pid.field(5)[0][1] == ["Ann", "Marie"]
    assert msg.msh.value(2) == ":!$@"


def test_truncation_character_of_v27_is_accepted() -> None:
    msg = parse("MSH|^~\\&#|A|B|C|D|2024||ADT^A01|1|P|2.7\r")
    assert msg.delimiters.truncation == "#" and msg.delimiters.encoding_characters == "^~\\&#"


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b\\T\\c\\R\\d\\E\\e", "a^b&c~d\\e"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("\\X48656C6C6F\\", "Hello"),
        ("\\XC3A9\\", "é"),
        ("\\XE9\\", "é"),
        ("\\XZZ\\x", "x"),
        ("\\H\\bold\\N\\", "bold"),
        ("\\.sp2\\x", "\nx"),
        ("trailing\\", "trailing\\"),
        ("no escapes", "no escapes"),
    ],
)
def test_escape_sequences(escaped: str, plain: str) -> None:
    assert unescape(escaped, DEFAULT) == plain


def test_escapes_are_decoded_after_splitting() -> None:
    msg = parse("MSH|^~\\&|A|B|C|D|2024||ORU^R01|1|P|2.5\rOBX|1|ST|X^Y||a\\S\\b\\F\\c~d\r")
    obx = msg.first("OBX")
    assert obx is not None
    assert obx.value(5) == "a^b|c" and obx.value(5, rep=1) == "d"


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_segment_terminators_bom_and_blank_lines(sep: str) -> None:
    text = "\ufeff" + ADT.replace("\r", sep) + sep + sep + "   " + sep
    msg = parse(text.encode("utf-8"))
    assert [s.name for s in msg.segments] == ["MSH", "PID"]


def test_z_segments_are_kept_and_broken_lines_continue_a_segment() -> None:
    msg = parse(ADT + "ZPI|1|custom\rOBX|1|TX|N^Note||first line\nsecond line\r")
    assert [s.name for s in msg.segments] == ["MSH", "PID", "ZPI", "OBX"]
    assert msg.all("ZPI")[0].value(2) == "custom"
    obx = msg.first("OBX")
    assert obx is not None and obx.value(5) == "first line\nsecond line"
    assert msg.first("NTE") is None


@pytest.mark.parametrize(
    "text",
    ["", "hello world", "PID|1|2", "MSH|", "MSH|^~|A", "MSH|^^\\&|A|B", "MSHa^~\\&|x", "MSH|^~\\&x"],
)
def test_not_a_message_is_refused_without_content_in_the_error(text: str) -> None:
    with pytest.raises(Er7Error) as info:
        parse(text)
    assert "hello" not in str(info.value)


def test_undecodable_bytes_fall_back_to_latin1() -> None:
    assert decode("Müller".encode("latin-1")) == "Müller"
    assert decode("Müller".encode()) == "Müller"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_or_raises_er7error(text: str) -> None:
    try:
        msg = parse("MSH|^~\\&|" + text)
    except Er7Error:
        return
    for seg in msg.segments:
        for n in range(1, len(seg.fields)):
            seg.field(n)
