"""HIPAA Safe Harbor de-identification (45 CFR 164.514(b)(2)) of a resource or a Bundle.

`deidentify(data, key=..., config=...)` returns a new copy (the input is never changed) and a report.
How each of the 18 identifier kinds is handled:

- names: every HumanName (any `name` object, incl. contact, RelatedPerson, Practitioner) is removed,
  and so is the mother's-maiden-name extension; Reference.display (usually a name) is removed;
- geography below state: Address keeps use/type/state/country/period; line, city, district, text
  go; a US postalCode becomes its ZIP3, or "000" for the ZIP3s with 20,000 people or fewer
  (non-US postal codes are removed); Location.position goes;
- dates: every string that parses as a FHIR date/dateTime/instant (to month precision or finer) is
  shifted by one offset per patient (1..365 days either way, from HMAC(key, patient)), so intervals
  between a patient's events survive; with `dates="year"` they are cut to the year (instants, which
  must be complete, become YYYY-01-01T00:00:00Z). A resource belongs to the patient its
  subject/patient/beneficiary references; resources of no patient use the first Patient's offset;
- ages over 89: a Patient born more than 89 years before `reference_year` loses birthDate (its
  `_birthDate` says data-absent-reason `masked`) and carries the extension AGE_90_PLUS; an Age
  quantity (UCUM `a`) over 89 becomes `>= 90`;
- telephone, fax, e-mail, URL (ContactPoint): every `telecom` is removed;
- SSN, MRN, health-plan, account, licence, device ids: every Identifier keeps its type and period,
  its value becomes HMAC(key, system|value) with system PSEUDONYM_SYSTEM; string identifiers
  (Device serial/lot/UDI, Coverage.subscriberId) are replaced the same way;
- photos and biometrics: `photo` is removed; every other Attachment loses `data` and `url`;
- URLs and IP addresses: network `address` strings go; in free text they are scrubbed;
- free text is scrubbed, not dropped: every other string (narrative, notes, displays, comments)
  has the names, identifiers, phone numbers and address parts found anywhere in the same input
  replaced by [NAME]/[ID]/[PHONE]/[ADDRESS], and e-mails, URLs, IPs, SSN-like numbers, phone
  numbers and dates by pattern. Narrative div becomes its scrubbed plain text;
- any other unique code: resource ids, fullUrls and references become HMAC pseudonyms of the
  target (one per `Type/id` or fullUrl), so links inside a Bundle survive in whichever form they
  were written; meta.versionId/source, Bundle.link and conditional-request headers go.

Labels (v3-ObservationValue): ANONYED for the Safe Harbor output (`dates="year"`, nothing kept);
PSEUDED when dates are shifted or `keep` names elements (expert-determination style), because then
the key holder can re-link. Keyed pseudonyms are the same for the same input across calls and files
of one installation; whoever holds the key can recompute them, so the key must stay with the
custodian (164.514(c)).

The report counts what was removed or generalised per kind, and gives a k-anonymity figure over
the quasi-identifiers (birth year, gender, ZIP3) of the Patients in the output.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import html
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fhir_gateway.fhir.dates import value_range

OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
PSEUDONYM_SYSTEM = "urn:fhir-gateway:pseudonym"
AGE_90_PLUS = "urn:fhir-gateway:deid:age-90-or-older"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
MAIDEN_NAME = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
DEID_BASE = "https://deid.invalid/fhir"  # replaces the server base of absolute references
# ZIP3 areas with 20,000 people or fewer (HHS de-identification guidance, 2000 census).
RESTRICTED_ZIP3 = frozenset(
    {"036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878", "879", "884",
     "890", "893"}
)  # fmt: skip
US = frozenset({"US", "USA", "UNITED STATES", "UNITED STATES OF AMERICA"})

NAME_KEYS = frozenset({"name", "valueHumanName"})
ADDRESS_KEYS = frozenset({"address", "valueAddress", "locationAddress", "birthPlace"})
ADDRESS_FIELDS = frozenset(
    {"id", "extension", "use", "type", "text", "line", "city", "district", "state", "postalCode",
     "country", "period"}
)  # fmt: skip
TELECOM_KEYS = frozenset({"telecom", "valueContactPoint"})
IDENTIFIER_KEYS = frozenset({"identifier", "masterIdentifier", "valueIdentifier"})
STRING_IDS = frozenset(
    {"serialNumber", "lotNumber", "distinctIdentifier", "deviceIdentifier", "carrierHRF", "carrierAIDC",
     "subscriberId", "udi"}
)  # fmt: skip
ATTACHMENT_KEYS = frozenset({"attachment", "valueAttachment", "presentedForm", "content", "media"})
REFERENCE_FIELDS = frozenset({"id", "extension", "reference", "type", "identifier", "display"})
SUBJECT_KEYS = ("patient", "subject", "beneficiary")
# strings that are codes, not text: never scrubbed and never read as dates
CODE_KEYS = frozenset(
    {"resourceType", "system", "code", "version", "url", "unit", "contentType", "language", "status",
     "use", "gender", "mode", "method", "type", "profile", "id", "comparator", "valueCode"}
)  # fmt: skip
INSTANT_KEYS = frozenset({"instant", "issued", "lastUpdated", "timestamp", "recorded", "valueInstant"})
REMOVED_KINDS = {
    "telecom": "telecom", "valueContactPoint": "telecom", "photo": "photos", "position": "geo_positions",
    "link": "links",
}  # fmt: skip
DROPPED_KEYS = frozenset({"ifNoneExist", "ifMatch", "ifNoneMatch", "ifModifiedSince", "versionId", "source"})

_DROP: Any = object()
_DATE_SHAPE = re.compile(r"(\d{4})-(\d{2})(?:-(\d{2}))?(T.*)?")
_REF = re.compile(r"(?:(?P<base>.*)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/.*)?")
_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?"
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("[URL]", re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+", re.I)),
    ("[EMAIL]", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("[IP]", re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b")),
    (
        "[DATE]",
        re.compile(
            r"\b\d{4}-\d{2}-\d{2}(?:T[\d:.]+(?:Z|[+-]\d{2}:?\d{2})?)?"
            r"|\b\d{1,2}[/.]\d{1,2}[/.]\d{2,4}\b"
            rf"|\b{_MONTH} \d{{1,2}},? \d{{4}}\b|\b\d{{1,2}} {_MONTH} \d{{4}}\b"
            r"|\b(?:1[89]|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d*(?:[+-]\d{4})?\b",
            re.I,
        ),
    ),
    ("[SSN]", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    ("[PHONE]", re.compile(r"(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\b\d{3}[\s.-]?)\d{3}[\s.-]?\d{4}\b")),
)
_TAG = re.compile(r"<[^>]*>")


@dataclass(frozen=True, slots=True)
class DeidConfig:
    """`dates`: shift (per-patient offset, labelled PSEUDED) or year (Safe Harbor, ANONYED).

    `keep`: element paths left untouched (`Patient.address.city`, `Observation.effective[x]`), an
    expert-determination choice that makes the output PSEUDED. `reference_year` is the year ages
    are counted to (default: this year).
    """

    dates: Literal["shift", "year"] = "shift"
    keep: tuple[str, ...] = ()
    reference_year: int | None = None


@dataclass(frozen=True, slots=True)
class KAnonymity:
    """Patients grouped by (birth year, gender, ZIP3): k is the smallest group (None: no Patient)."""

    k: int | None
    patients: int
    classes: int


@dataclass(frozen=True, slots=True)
class DeidReport:
    label: str
    counts: dict[str, int]
    k_anonymity: KAnonymity

    def to_json(self) -> dict[str, Any]:
        k = self.k_anonymity
        return {
            "label": self.label,
            "counts": dict(sorted(self.counts.items())),
            "kAnonymity": {"k": k.k, "patients": k.patients, "classes": k.classes},
        }


@dataclass(frozen=True, slots=True)
class DeidResult:
    data: dict[str, Any]
    report: DeidReport


def installation_key(secret: str | bytes) -> bytes:
    """The de-identification HMAC key, derived (HKDF-SHA256) from the installation's encryption key."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fhir-gateway deid").derive(raw)


def deidentify(data: dict[str, Any], *, key: bytes, config: DeidConfig | None = None) -> DeidResult:
    """De-identify a resource or a Bundle (see the module docstring); `data` is not modified."""
    run = _Run(key, config or DeidConfig(), data)
    out = run.value("", data, "", "")
    result: dict[str, Any] = out if isinstance(out, dict) else {}
    return DeidResult(result, DeidReport(run.label, dict(run.counts), k_anonymity(result)))


def k_anonymity(data: dict[str, Any]) -> KAnonymity:
    """k over (birth year or 90+, gender, ZIP3) of the Patients in `data` (as released)."""
    groups: Counter[tuple[str | None, ...]] = Counter()
    for res, _ in _resources(data, None):
        if res.get("resourceType") != "Patient":
            continue
        birth = res.get("birthDate")
        if any(e.get("url") == AGE_90_PLUS for e in _dicts(res.get("extension"))):
            year: str | None = "90+"
        else:
            year = birth[:4] if isinstance(birth, str) else None
        zips = [a.get("postalCode") for a in _dicts(res.get("address")) if a.get("postalCode")]
        groups[(year, res.get("gender"), zips[0] if zips else None)] += 1
    total = sum(groups.values())
    return KAnonymity(min(groups.values()) if groups else None, total, len(groups))


def _dicts(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    return [i for i in items if isinstance(i, dict)]


def _resources(node: Any, full_url: str | None) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Every resource inside `node` (Bundle entries, contained, Parameters), with its fullUrl."""
    if isinstance(node, list):
        for item in node:
            yield from _resources(item, None)
    elif isinstance(node, dict):
        if isinstance(node.get("resourceType"), str):
            yield node, full_url
        for k, v in node.items():
            if k == "entry":
                for entry in _dicts(v):
                    url = entry.get("fullUrl")
                    yield from _resources(entry.get("resource"), url if isinstance(url, str) else None)
            else:
                yield from _resources(v, None)


def _shift(text: str, days: int | None, year_only: bool, instant: bool) -> str | None:
    """A FHIR date/dateTime/instant moved by `days` (or cut to its year); None when not a date."""
    m = _DATE_SHAPE.fullmatch(text)
    if m is None or value_range(text) is None:
        return None
    y, mo, d, rest = m.groups()
    if year_only:
        return f"{y}-01-01T00:00:00Z" if instant else y
    moved = dt.date(int(y), int(mo), int(d or 1)) + dt.timedelta(days=days or 0)
    if moved.year < 1 or moved.year > 9999:  # pragma: no cover - years 0001 and 9999 only
        return moved.isoformat()[:4]
    return moved.isoformat() + (rest or "") if d else moved.isoformat()[:7]


@dataclass(slots=True)
class _Run:
    key: bytes
    config: DeidConfig
    data: dict[str, Any]
    counts: Counter[str] = field(default_factory=Counter)
    aliases: dict[str, str] = field(default_factory=dict)  # fullUrl / Type/id -> canonical key
    patient_of: dict[int, str] = field(default_factory=dict)  # id(resource) -> its patient's key
    offsets: dict[str, int] = field(default_factory=dict)
    known: list[tuple[str, re.Pattern[str]]] = field(default_factory=list)
    fallback: str = ""

    def __post_init__(self) -> None:
        found = list(_resources(self.data, None))
        canon: dict[int, str] = {}
        for res, url in found:
            rid = res.get("id")
            key = f"{res['resourceType']}/{rid}" if isinstance(rid, str) else url or f"#{len(canon)}"
            canon[id(res)] = key
            self.aliases[key] = key
            if url:
                self.aliases[url] = key
        for res, _ in found:
            if res["resourceType"] == "Patient":
                self.patient_of[id(res)] = canon[id(res)]
                self.fallback = self.fallback or canon[id(res)]
            for name in SUBJECT_KEYS:
                ref = res.get(name)
                target = self.resolve(ref.get("reference")) if isinstance(ref, dict) else None
                if target and target.startswith("Patient/") and id(res) not in self.patient_of:
                    self.patient_of[id(res)] = target
        self.fallback = self.fallback or (canon[id(found[0][0])] if found else "")
        self._harvest()

    @property
    def label(self) -> str:
        return "ANONYED" if self.config.dates == "year" and not self.config.keep else "PSEUDED"

    # --- keyed pseudonyms -----------------------------------------------------------------------

    def _mac(self, kind: str, value: str) -> bytes:
        return hmac.new(self.key, f"{kind}|{value}".encode(), hashlib.sha256).digest()

    def pseudo_id(self, canonical: str) -> str:
        return self._mac("id", canonical).hex()[:32]

    def offset(self, patient: str) -> int:
        if patient not in self.offsets:
            n = int.from_bytes(self._mac("date-shift", patient)[:8], "big") % 730
            self.offsets[patient] = n - 365 if n < 365 else n - 364  # never 0
        return self.offsets[patient]

    def resolve(self, ref: Any) -> str | None:
        if not isinstance(ref, str) or ref.startswith("#"):
            return None
        if ref in self.aliases:
            return self.aliases[ref]
        m = _REF.fullmatch(ref)
        return f"{m['type']}/{m['id']}" if m else (ref if ref.startswith("urn:") else None)

    def reference(self, ref: str) -> str | None:
        """The pseudonymous form of a reference or fullUrl; local `#id` stays; None: unreadable."""
        if ref.startswith("#"):
            return ref
        target = self.resolve(ref)
        if target is None:
            return None
        self.counts["references"] += 1
        m = _REF.fullmatch(target)
        if ref.startswith("urn:") or m is None:
            return f"urn:uuid:{uuid.UUID(bytes=self._mac('id', target)[:16])}"
        local = f"{m['type']}/{self.pseudo_id(target)}"
        return f"{DEID_BASE}/{local}" if "://" in ref else local

    # --- free text ------------------------------------------------------------------------------

    def _harvest(self) -> None:
        """Collect the names, identifiers, phones and address parts of the input, to scrub text."""
        names: set[str] = set()
        ids: set[str] = set()
        phones: set[str] = set()
        places: set[str] = set()

        def walk(node: Any, key: str) -> None:
            if isinstance(node, list):
                for item in node:
                    walk(item, key)
                return
            if not isinstance(node, dict):
                return
            if key in NAME_KEYS or node.get("url") == MAIDEN_NAME:
                for part in ("family", "given", "text", "valueString"):
                    for text in node.get(part, []) if part == "given" else [node.get(part)]:
                        if isinstance(text, str):
                            names.update(w for w in re.split(r"[\s,]+", text) if len(w) > 1)
            if key in IDENTIFIER_KEYS and isinstance(node.get("value"), str):
                ids.add(node["value"])
            if key in TELECOM_KEYS and isinstance(node.get("value"), str):
                phones.add(node["value"])
            if key in ADDRESS_KEYS:
                for part in ("line", "city", "district", "postalCode", "text"):
                    value = node.get(part)
                    places.update(v for v in (value if isinstance(value, list) else [value]) if v)
            for k, v in node.items():
                walk(v, k)

        walk(self.data, "")
        for label, words, shortest in (
            ("[ID]", ids, 3),
            ("[PHONE]", phones, 3),
            ("[ADDRESS]", places, 3),
            ("[NAME]", names, 2),
        ):
            words = {w.strip() for w in words if isinstance(w, str) and len(w.strip()) >= shortest}
            if words:
                alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
                self.known.append((label, re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.I)))

    def scrub(self, text: str) -> str:
        out = text
        for label, pattern in (*PATTERNS, *self.known):
            out = pattern.sub(label, out)
        if out != text:
            self.counts["free_text"] += 1
        return out

    # --- the walk -------------------------------------------------------------------------------

    def kept(self, path: str) -> bool:
        steps = path.replace("._", ".").split(".")
        for pattern in self.config.keep:
            want = pattern.split(".")
            if len(want) <= len(steps) and all(
                w == s
                or (w.endswith("[x]") and s.startswith(w[:-3]) and s[len(w) - 3 : len(w) - 2].isupper())
                for w, s in zip(want, steps, strict=False)
            ):
                return True
        return False

    def children(self, node: dict[str, Any], path: str, patient: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in node.items():
            child = f"{path}.{k}"
            if self.kept(child):
                out[k] = v
                continue
            new = (
                [x for x in (self.value(k, item, child, patient) for item in v) if x is not _DROP]
                if isinstance(v, list)
                else self.value(k, v, child, patient)
            )
            if new is _DROP or new == []:
                continue
            out[k] = new
        for k in [k for k in out if k.startswith("_") and k[1:] in node and k[1:] not in out]:
            del out[k]  # the value went, so its primitive extensions go too
        return out

    def value(self, k: str, v: Any, path: str, patient: Any) -> Any:
        if isinstance(v, str):
            return self.string(k, v, path, patient)
        if not isinstance(v, dict):
            return v
        if isinstance(v.get("resourceType"), str):
            return self.resource(v, patient, contained=k == "contained")
        if (
            k in NAME_KEYS
            or k in TELECOM_KEYS
            or k == "photo"
            or path in ("Location.position", "Bundle.link")
        ):
            self.counts[REMOVED_KINDS.get(k, "names")] += 1
            return _DROP
        if v.get("url") == MAIDEN_NAME:
            self.counts["names"] += 1
            return _DROP
        if k in IDENTIFIER_KEYS:
            return self.identifier(v, path, patient)
        if k in ADDRESS_KEYS or (set(v) <= ADDRESS_FIELDS and {"line", "city", "postalCode"} & set(v)):
            return self.address(v, path, patient)
        if k == "text" and "div" in v:
            self.counts["narratives"] += 1
            plain = html.unescape(_TAG.sub(" ", str(v.get("div", ""))))
            body = html.escape(self.scrub(" ".join(plain.split())))
            return {**v, "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}
        if set(v) <= REFERENCE_FIELDS and {"reference", "identifier", "display"} & set(v):
            out = self.children({n: x for n, x in v.items() if n != "display"}, path, patient)
            self.counts["reference_displays"] += "display" in v
            return out if set(out) & {"reference", "identifier"} else _DROP
        if k in ATTACHMENT_KEYS or "contentType" in v or "data" in v:
            if "data" in v or "url" in v:
                self.counts["attachments"] += 1
            return self.children({n: x for n, x in v.items() if n not in ("data", "url")}, path, patient)
        if v.get("code") == "a" and isinstance(v.get("value"), int | float) and v["value"] > 89:
            self.counts["ages_over_89"] += 1
            return {**v, "value": 90, "comparator": ">="}
        return self.children(v, path, patient)

    def string(self, k: str, v: str, path: str, patient: str) -> Any:
        if k in ("reference", "fullUrl", "location") or path.endswith("request.url"):
            if "?" in v or (k == "url" and "/" not in v):  # conditional: keep the type, not the search
                return v.split("?")[0]
            return self.reference(v) or _DROP
        if k in DROPPED_KEYS or k == "address":
            self.counts["network_addresses" if k == "address" else "unique_codes"] += 1
            return _DROP
        if k in STRING_IDS:
            self.counts["identifiers"] += 1
            return self._mac("identifier", v).hex()[:32]
        if k in CODE_KEYS:
            return v
        year_only = self.config.dates == "year"
        shifted = _shift(v, None if year_only else self.offset(patient), year_only, k in INSTANT_KEYS)
        if shifted is not None:
            self.counts["dates_to_year" if year_only else "dates_shifted"] += 1
            return shifted
        return self.scrub(v)

    def identifier(self, v: dict[str, Any], path: str, patient: str) -> Any:
        out = self.children(
            {n: x for n, x in v.items() if n not in ("value", "system", "assigner")}, path, patient
        )
        if "value" in v and not self.kept(path + ".value"):
            self.counts["identifiers"] += 1
            out["system"] = PSEUDONYM_SYSTEM
            out["value"] = self._mac("identifier", f"{v.get('system', '')}|{v['value']}").hex()[:32]
        elif "value" in v:
            out.update({n: v[n] for n in ("system", "value") if n in v})
        return out or _DROP

    def address(self, v: dict[str, Any], path: str, patient: str) -> Any:
        self.counts["addresses"] += 1
        kept = {
            n: x
            for n, x in v.items()
            if n in ("line", "city", "district", "text") and self.kept(f"{path}.{n}")
        }
        out = self.children(
            {n: x for n, x in v.items() if n not in ("line", "city", "district", "text", "postalCode")},
            path,
            patient,
        )
        out.update(kept)
        code = v.get("postalCode")
        if isinstance(code, str) and self.kept(path + ".postalCode"):
            out["postalCode"] = code
        elif isinstance(code, str):
            self.counts["postal_codes"] += 1
            us = str(v.get("country", "US")).strip().upper() in US
            if us and re.match(r"\d{3}", code.strip()):
                zip3 = code.strip()[:3]
                out["postalCode"] = "000" if zip3 in RESTRICTED_ZIP3 else zip3
        return out or _DROP

    def resource(self, res: dict[str, Any], parent: str, *, contained: bool = False) -> dict[str, Any]:
        rtype = res["resourceType"]
        patient = self.patient_of.get(id(res)) or parent or self.fallback
        work = dict(res)
        over_89 = False
        birth = res.get("birthDate")
        if rtype == "Patient" and isinstance(birth, str) and not self.kept("Patient.birthDate"):
            year = int(birth[:4]) if birth[:4].isdigit() else None
            ref_year = self.config.reference_year or dt.datetime.now(dt.UTC).year
            over_89 = year is not None and ref_year - year > 89
        if over_89:
            work.pop("birthDate")
            work.pop("_birthDate", None)
        out = self.children(work, rtype, patient)
        if over_89:
            self.counts["ages_over_89"] += 1
            out["_birthDate"] = {"extension": [{"url": DATA_ABSENT, "valueCode": "masked"}]}
            out["extension"] = [*out.get("extension", []), {"url": AGE_90_PLUS, "valueBoolean": True}]
        if isinstance(res.get("id"), str) and not contained and not self.kept(rtype + ".id"):
            self.counts["ids"] += 1
            out["id"] = self.pseudo_id(f"{rtype}/{res['id']}")
        meta: dict[str, Any] = out["meta"] if isinstance(out.get("meta"), dict) else {}
        security = [c for c in _dicts(meta.get("security")) if c.get("code") not in ("ANONYED", "PSEUDED")]
        out["meta"] = {**meta, "security": [*security, {"system": OBSERVATION_VALUE, "code": self.label}]}
        return out
