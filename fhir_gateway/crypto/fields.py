"""Which elements are PHI, and how a resource is stored with them encrypted.

Default PHI paths (HIPAA Safe Harbor, 45 CFR 164.514(b)(2), identifiers of the individual and of
relatives/household members, as FHIR R4 elements):

- Patient, RelatedPerson, Person, Practitioner: identifier (MRN, SSN, licence ...), name, telecom,
  address, birthDate, photo; Patient also deceasedDateTime (a date) and contact (contact persons).
- Coverage.identifier and subscriberId (health-plan numbers), Account.identifier (account numbers),
  Device identifier, serialNumber and udiCarrier (device identifiers and serials).
- Free text that routinely carries names: the `note` (Annotation) of clinical resources, and the
  narrative `text.div` of every resource type (`*`).

Not covered by default (configure `crypto.phi_paths` when a feed puts PHI there): Reference.display
in other resources, and free-text strings such as Observation.valueString.

Stored form. Each PHI element (the whole JSON value under the key: a primitive, an object or an
array) becomes one envelope string (keyring.py) in place, so the key order and everything else of
the resource stay as they were; the FHIR primitive extension sibling (`_birthDate`) is sealed too.
A path through an array (`contact.name`) seals the element in each item; the AAD names the item
(`contact[1].name`), so items cannot be swapped. The concrete paths sealed are recorded in a marker
extension appended to `meta.extension`:

    {"url": MARKER_URL, "valueString": "identifier name birthDate _birthDate"}

so decryption follows the record, never the current configuration: changing `phi_paths` never
makes stored data unreadable, and a plaintext that merely looks like an envelope is never opened.
When the marker had to create `meta` or `meta.extension`, its `id` says so ("meta" / "extension"),
and `decrypt_resource` removes exactly what was added: the result equals the original, key order
included. Both functions are pure: they return new dicts and never change their argument.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from fhir_gateway.crypto.errors import CipherError, DecryptionFailed, UnknownKeyVersion
from fhir_gateway.crypto.keyring import Keyring, envelope_version
from fhir_gateway.errors import Unprocessable

MARKER_URL = "http://fhir-gateway.dev/fhir/StructureDefinition/encrypted-elements"

_PERSON = ("identifier", "name", "telecom", "address", "birthDate", "photo")
_NOTES = (
    "AllergyIntolerance",
    "CarePlan",
    "Communication",
    "Condition",
    "DeviceRequest",
    "Goal",
    "Immunization",
    "MedicationAdministration",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "Procedure",
    "ServiceRequest",
)
DEFAULT_PHI_PATHS: Mapping[str, tuple[str, ...]] = {
    "*": ("text.div",),
    "Patient": (*_PERSON, "deceasedDateTime", "contact"),
    "RelatedPerson": _PERSON,
    "Person": _PERSON,
    "Practitioner": _PERSON,
    "Coverage": ("identifier", "subscriberId"),
    "Account": ("identifier",),
    "Device": ("identifier", "serialNumber", "udiCarrier"),
    **{res_type: ("note",) for res_type in _NOTES},
}

_CONFIG_PATH = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*")
_STEP = re.compile(r"(_?[A-Za-z][A-Za-z0-9_]*)(?:\[(\d+)\])?")


@dataclass(frozen=True, slots=True)
class PhiFields:
    """PHI element paths per resource type (dotted JSON keys from the resource root); `*` = all types."""

    by_type: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def of(cls, paths: Mapping[str, Iterable[str]]) -> PhiFields:
        for res_type, items in paths.items():
            for path in items:
                if not _CONFIG_PATH.fullmatch(path):
                    raise ValueError(f"crypto.phi_paths.{res_type}: '{path}' is not a dotted element path")
        return cls(tuple(sorted((t, tuple(dict.fromkeys(p))) for t, p in paths.items())))

    @classmethod
    def configured(cls, overrides: Iterable[tuple[str, Iterable[str]]] = ()) -> PhiFields:
        """The defaults, with each resource type named in `overrides` given exactly its paths."""
        return cls.of({**DEFAULT_PHI_PATHS, **dict(overrides)})

    def paths(self, res_type: str) -> tuple[str, ...]:
        return _paths(self, res_type)


DEFAULT_FIELDS = PhiFields.configured()


@functools.cache
def _paths(fields: PhiFields, res_type: str) -> tuple[str, ...]:
    table = dict(fields.by_type)
    return tuple(dict.fromkeys((*table.get(res_type, ()), *table.get("*", ()))))


# --- encryption -------------------------------------------------------------------------------


def encrypt_resource(
    resource: dict[str, Any],
    res_type: str,
    res_id: str,
    keyring: Keyring,
    fields: PhiFields = DEFAULT_FIELDS,
) -> dict[str, Any]:
    """A copy of `resource` with every PHI element sealed under the active key (see module docstring).

    Unprocessable when the resource already carries the marker: only this module may write it."""
    if _marker_index(resource) is not None:
        raise Unprocessable(
            "meta.extension uses a URL reserved for the gateway's encryption marker",
            expression="meta.extension",
        )
    sealed: list[str] = []

    def seal(value: Any, path: str) -> Any:
        sealed.append(path)
        return keyring.seal(orjson.dumps(value), res_type, res_id, path)

    out = resource
    for path in fields.paths(res_type):
        out = _seal_steps(out, path.split("."), "", seal)
    if not sealed:
        return resource
    return _add_marker(out, sealed)


def _seal_steps(node: dict[str, Any], steps: list[str], where: str, seal: Callable[[Any, str], Any]) -> Any:
    """`node` with the element at `steps` sealed in every array item on the way; copies only what changes."""
    name, rest = steps[0], steps[1:]
    if not rest:
        keys = [k for k in (name, "_" + name) if node.get(k) is not None]
        if not keys:
            return node
        changed = dict(node)
        for key in keys:
            changed[key] = seal(node[key], where + key)
        return changed
    child = node.get(name)
    if isinstance(child, dict):
        new_child: Any = _seal_steps(child, rest, f"{where}{name}.", seal)
    elif isinstance(child, list):
        new_child = [
            _seal_steps(item, rest, f"{where}{name}[{i}].", seal) if isinstance(item, dict) else item
            for i, item in enumerate(child)
        ]
    else:
        return node
    changed = dict(node)
    changed[name] = new_child
    return changed


def _add_marker(resource: dict[str, Any], sealed: list[str]) -> dict[str, Any]:
    marker: dict[str, Any] = {"url": MARKER_URL, "valueString": " ".join(sealed)}
    meta = resource.get("meta")
    out = dict(resource)
    if not isinstance(meta, dict):
        marker["id"] = "meta"  # FHIR forbids an empty meta, so an absent one is the only case
        out["meta"] = {"extension": [marker]}
        return out
    extensions = meta.get("extension")
    if isinstance(extensions, list):
        out["meta"] = {**meta, "extension": [*extensions, marker]}
    else:
        marker["id"] = "extension"
        out["meta"] = {**meta, "extension": [marker]}
    return out


# --- decryption -------------------------------------------------------------------------------


def decrypt_resource(
    resource: dict[str, Any], res_type: str, res_id: str, keyring: Keyring
) -> dict[str, Any]:
    """The original resource from its stored form; DecryptionFailed (naming type, id, element and
    reason, never a value) when anything recorded as sealed cannot be opened exactly."""
    index = _marker_index(resource)
    if index is None:
        return resource
    meta = resource["meta"]
    marker = meta["extension"][index]
    paths = _recorded_paths(marker, res_type, res_id)

    def open_(value: Any, path: str) -> Any:
        if not isinstance(value, str):
            raise DecryptionFailed(res_type, res_id, path, "the element is not an encrypted value")
        try:
            return orjson.loads(keyring.open(value, res_type, res_id, path))
        except UnknownKeyVersion as exc:
            raise DecryptionFailed(res_type, res_id, path, str(exc), missing_version=exc.version) from None
        except CipherError as exc:
            raise DecryptionFailed(res_type, res_id, path, str(exc)) from None
        except orjson.JSONDecodeError:  # only a sealer bug could get here: the tag was valid
            raise DecryptionFailed(res_type, res_id, path, "the plaintext is not JSON") from None

    out = _remove_marker(resource, index, marker.get("id"))
    for path in paths:
        out = _open_path(out, _parse_path(path, res_type, res_id), path, res_type, res_id, open_)
    return out


def versions_in(resource: dict[str, Any]) -> set[int]:
    """The key versions the sealed elements of a stored resource use (rotation's usage count)."""
    index = _marker_index(resource)
    if index is None:
        return set()
    marker = resource["meta"]["extension"][index]
    found: set[int] = set()
    text = marker.get("valueString")
    for path in text.split() if isinstance(text, str) else ():
        try:
            value = _get(resource, _parse_path(path, "", ""))
        except DecryptionFailed:
            continue
        version = envelope_version(value) if isinstance(value, str) else None
        if version is not None:
            found.add(version)
    return found


def _marker_index(resource: Any) -> int | None:
    meta = resource.get("meta") if isinstance(resource, dict) else None
    extensions = meta.get("extension") if isinstance(meta, dict) else None
    if not isinstance(extensions, list):
        return None
    for i in range(len(extensions) - 1, -1, -1):  # ours is appended last
        item = extensions[i]
        if isinstance(item, dict) and item.get("url") == MARKER_URL:
            return i
    return None


def _recorded_paths(marker: dict[str, Any], res_type: str, res_id: str) -> list[str]:
    text = marker.get("valueString")
    if not isinstance(text, str) or not text.split() or marker.get("id") not in (None, "meta", "extension"):
        raise DecryptionFailed(res_type, res_id, "meta.extension", "the encryption marker is damaged")
    return text.split()


def _remove_marker(resource: dict[str, Any], index: int, created: Any) -> dict[str, Any]:
    out = dict(resource)
    meta = dict(resource["meta"])
    extensions = [e for i, e in enumerate(meta["extension"]) if i != index]
    if created == "meta" and not extensions and list(meta) == ["extension"]:
        del out["meta"]
        return out
    if created in ("meta", "extension") and not extensions:
        del meta["extension"]
    else:
        meta["extension"] = extensions
    out["meta"] = meta
    return out


Step = tuple[str, int | None]


def _parse_path(path: str, res_type: str, res_id: str) -> tuple[Step, ...]:
    steps = _steps(path)
    if steps is None:
        raise DecryptionFailed(res_type, res_id, "meta.extension", "the encryption marker is damaged")
    return steps


@functools.lru_cache(maxsize=4096)
def _steps(path: str) -> tuple[Step, ...] | None:
    """A recorded path as (key, array index) steps; None when it is not one. Cached: few distinct paths."""
    steps: list[Step] = []
    for part in path.split("."):
        match = _STEP.fullmatch(part)
        if match is None:
            return None
        steps.append((match.group(1), int(match.group(2)) if match.group(2) is not None else None))
    return tuple(steps)


def _get(node: Any, steps: tuple[Step, ...]) -> Any:
    for name, index in steps:
        node = node.get(name) if isinstance(node, dict) else None
        if index is not None:
            node = node[index] if isinstance(node, list) and index < len(node) else None
    return node


def _open_path(
    node: Any,
    steps: tuple[Step, ...],
    path: str,
    res_type: str,
    res_id: str,
    open_: Callable[[Any, str], Any],
) -> Any:
    """`node` with the value at `steps` replaced by its plaintext; copies only along the way."""
    if not isinstance(node, dict):
        raise DecryptionFailed(res_type, res_id, path, "the element recorded as encrypted is missing")
    (name, index), rest = steps[0], steps[1:]
    if name not in node:
        raise DecryptionFailed(res_type, res_id, path, "the element recorded as encrypted is missing")
    out = dict(node)
    if index is None:
        out[name] = (
            open_(node[name], path)
            if not rest
            else _open_path(node[name], rest, path, res_type, res_id, open_)
        )
        return out
    items = node[name]
    if not isinstance(items, list) or index >= len(items):
        raise DecryptionFailed(res_type, res_id, path, "the element recorded as encrypted is missing")
    items = list(items)
    items[index] = (
        _open_path(items[index], rest, path, res_type, res_id, open_) if rest else open_(items[index], path)
    )
    out[name] = items
    return out
