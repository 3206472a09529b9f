"""A fast ER7 (pipe-and-hat) tokenizer for HL7 v2 messages — the receive path's only parser.

Why not hl7apy: it builds a validated object tree from the message-structure definitions and costs
≈18 ms per small message here (≈55 msg/s per core), while an interface engine can push thousands of
messages a second. This module only tokenizes, using `str.split` (C speed) on demand: a segment keeps
its raw fields, and a field is split into repetitions, components and subcomponents (then unescaped)
the first time a mapper asks for it. hl7apy stays off the hot path (benchmarks, tools).

Rules (HL7 v2.x chapter 2, "Message construction"):
- delimiters come from MSH-1 (field) and MSH-2 (component, repetition, escape, subcomponent and, from
  v2.7, truncation); they must be distinct, non-alphanumeric characters;
- segments end with CR; LF and CRLF are accepted too (files and some senders); blank segments (often
  trailing) are ignored; a UTF-8 byte-order mark before MSH is stripped;
- a line that does not start with a segment id (3 upper-case letters/digits, then the field separator
  or the end) continues the previous segment: it is a line break a sender left inside a text field;
- escape sequences \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ (delimiters), \\Xhh..\\ (hex bytes), \\.br\\ and \\.sp\\
  (line breaks) are decoded; highlighting, indent and character-set switches (\\H\\ \\N\\ \\Cxxyy\\ ...)
  are dropped, since FHIR strings carry no formatting;
- Z-segments are kept like any other segment.

Field numbers follow the standard: `msh.value(9, 2)` is MSH-9.2 (trigger event); for MSH, field 1 is
the field separator itself and field 2 the encoding characters (never unescaped).

Exceptions: `Er7Error(ValueError)` when the text is not an HL7 v2 message at all (no MSH, bad
delimiters). Its message names what is wrong, never message content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Delimiters", "Er7Error", "Message", "Segment", "parse", "unescape"]

BOM = "\ufeff"
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}\Z")


class Er7Error(ValueError):
    """The input is not an HL7 v2 ER7 message."""


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it is written back (in an ACK, mirrored from the inbound message)."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT = Delimiters()


def unescape(text: str, d: Delimiters = DEFAULT) -> str:
    """Decode the escape sequences of one leaf value (after splitting on every delimiter)."""
    esc = d.escape
    if not esc or esc not in text:
        return text
    parts = text.split(esc)
    # parts alternate: literal, sequence, literal, sequence, ...; an unclosed sequence stays literal.
    out = [parts[0]]
    last = len(parts) - 1
    i = 1
    while i <= last:
        if i == last:  # a lone escape character with no closing one
            out.append(esc + parts[i])
            break
        out.append(_decode_sequence(parts[i], d))
        out.append(parts[i + 1])
        i += 2
    return "".join(out)


def _decode_sequence(seq: str, d: Delimiters) -> str:
    simple = {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition, "E": d.escape}
    if seq in simple:
        return simple[seq]
    if seq in (".br", ".sp") or (seq.startswith(".sp") and seq[3:].strip().isdigit()):
        return "\n"
    if seq[:1] == "X" and len(seq) > 1:
        hexdigits = seq[1:]
        try:
            raw = bytes.fromhex(hexdigits)
        except ValueError:
            return ""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    # \H\ \N\ (highlight), \.in..\ \.ti..\ \.fi\ \.nf\ \.ce\ (formatting), \C..\ \M..\ (character sets),
    # \Z..\ (locally defined): no meaning in a FHIR string.
    return ""


class Segment:
    """One segment: `fields[n]` is field n (raw, still escaped); `fields[0]` is the segment id."""

    __slots__ = ("_cache", "d", "fields", "index", "name")

    def __init__(self, name: str, fields: list[str], d: Delimiters, index: int) -> None:
        self.name = name
        self.fields = fields
        self.d = d
        self.index = index  # position in the message (0 = MSH), for ERR-2 locations
        self._cache: dict[int, list[list[list[str]]]] = {}

    def __repr__(self) -> str:
        return f"Segment({self.name}, {len(self.fields) - 1} fields)"

    def raw(self, n: int) -> str:
        """Field n as sent (escaped, all repetitions); '' when absent."""
        return self.fields[n] if 0 < n < len(self.fields) else ""

    def has(self, n: int) -> bool:
        return bool(self.raw(n).strip())

    def field(self, n: int) -> list[list[list[str]]]:
        """Field n tokenized: repetitions → components → subcomponents, each leaf unescaped."""
        cached = self._cache.get(n)
        if cached is not None:
            return cached
        raw = self.raw(n)
        d = self.d
        if self.name == "MSH" and n in (1, 2):
            tokens = [[[raw]]] if raw else []
        elif not raw:
            tokens = []
        elif not any(c in raw for c in (d.component, d.repetition, d.subcomponent, d.escape)):
            tokens = [[[raw]]]  # the common case: a plain value
        else:
            tokens = [
                [[unescape(s, d) for s in comp.split(d.subcomponent)] for comp in rep.split(d.component)]
                for rep in raw.split(d.repetition)
            ]
        self._cache[n] = tokens
        return tokens

    def repetitions(self, n: int) -> list[list[list[str]]]:
        """Non-empty repetitions of field n (each a list of components of subcomponents)."""
        return [rep for rep in self.field(n) if any(s.strip() for comp in rep for s in comp)]

    def value(self, n: int, component: int = 1, sub: int = 1, rep: int = 0) -> str:
        """One leaf (stripped), '' when absent. `component` and `sub` count from 1 as in the standard."""
        reps = self.field(n)
        if rep >= len(reps):
            return ""
        comps = reps[rep]
        if component > len(comps):
            return ""
        subs = comps[component - 1]
        return subs[sub - 1].strip() if sub <= len(subs) else ""


class Message:
    """A tokenized message: its delimiters and segments in order (MSH first)."""

    __slots__ = ("delimiters", "segments")

    def __init__(self, delimiters: Delimiters, segments: list[Segment]) -> None:
        self.delimiters = delimiters
        self.segments = segments

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def first(self, name: str) -> Segment | None:
        for seg in self.segments:
            if seg.name == name:
                return seg
        return None

    def all(self, name: str) -> list[Segment]:
        return [seg for seg in self.segments if seg.name == name]

    @property
    def message_code(self) -> str:
        return self.msh.value(9, 1).upper()

    @property
    def trigger(self) -> str:
        return self.msh.value(9, 2).upper()

    @property
    def structure(self) -> str:
        return self.msh.value(9, 3).upper()

    @property
    def control_id(self) -> str:
        return self.msh.value(10)

    @property
    def version(self) -> str:
        return self.msh.value(12)


def decode(data: bytes) -> str:
    """Bytes on the wire to text: UTF-8 (the common case and a superset of ASCII), else Latin-1.

    MSH-18 names the character set, but it is often absent or wrong; Latin-1 never fails, so a
    message in an unexpected 8-bit set is still read (and acknowledged) rather than dropped.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def delimiters_of(header: str) -> Delimiters:
    """Delimiters from the start of an MSH segment (MSH-1 and MSH-2)."""
    if len(header) < 8 or not header.startswith("MSH"):
        raise Er7Error("the message does not start with an MSH segment")
    fs = header[3]
    enc = header[4 : header.find(fs, 4)] if fs in header[4:] else header[4:]
    if not 4 <= len(enc) <= 5:
        raise Er7Error("MSH-2 must hold 4 or 5 encoding characters")
    chars = fs + enc
    if len(set(chars)) != len(chars) or any(c.isalnum() or c in "\r\n " for c in chars):
        raise Er7Error("MSH-1/MSH-2 delimiters must be distinct non-alphanumeric characters")
    return Delimiters(fs, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else "")


def parse(text: str | bytes) -> Message:
    """Tokenize one message (segment level; fields are split lazily). Raises `Er7Error`."""
    if isinstance(text, bytes):
        text = decode(text)
    text = text.lstrip(BOM + " \t\r\n\x00")
    d = delimiters_of(text[:16])
    fs = d.field
    lines = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
    raws: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        head = line[:3]
        if _SEGMENT_ID.match(head) and (len(line) == 3 or line[3] == fs):
            raws.append(line)
        elif raws:  # a line break inside a field: keep the text with the previous segment
            raws[-1] += "\n" + line
        else:  # pragma: no cover - text starts with MSH, so the first line is a segment
            raise Er7Error("the message does not start with an MSH segment")
    segments: list[Segment] = []
    for index, line in enumerate(raws):
        fields = line.split(fs)
        if index == 0:
            fields.insert(1, fs)  # MSH-1 is the field separator itself
        segments.append(Segment(fields[0], fields, d, index))
    return Message(d, segments)
