"""The Patient compartment (R4 compartmentdefinition-patient), as index rows written with each resource.

Which resources belong to a patient is decided once, at write time, from the official definition
compiled into `profiles/compartment-patient.json`: a reference through one of the type's compartment
parameters to `Patient/X` (or being Patient X itself) puts the resource in X's compartment. The
membership is stored as extra reference index rows under the parameter `_compartment`, so the
policy decision point, `$everything` and the patient-context filter are one indexed lookup each, and
the Python decision for a single resource reads the very same rows.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from importlib.resources import files
from typing import Any

from fhir_gateway.store.search.extract import extract
from fhir_gateway.store.search.rows import IndexRows, ReferenceRow

COMPARTMENT_PARAM = "_compartment"


@functools.cache
def member_params() -> dict[str, frozenset[str]]:
    """Resource type → the search parameters that place it in a patient's compartment."""
    text = (files("fhir_gateway") / "profiles" / "compartment-patient.json").read_text(encoding="utf-8")
    return {t: frozenset(params) for t, params in json.loads(text)["members"].items()}


def is_member_type(res_type: str) -> bool:
    return res_type in member_params() or res_type == "Patient"


def compartment_rows(res_type: str, res_id: str, rows: IndexRows) -> list[ReferenceRow]:
    """The `_compartment` rows for one resource version, from its extracted reference rows."""
    patients = {res_id} if res_type == "Patient" else set()
    params = member_params().get(res_type, frozenset())
    patients.update(
        r.target_id
        for r in rows.references
        if r.param in params and r.target_type == "Patient" and r.target_id is not None
    )
    return [ReferenceRow(COMPARTMENT_PARAM, "Patient", patient) for patient in sorted(patients)]


def index_rows(res_type: str, res_id: str, resource: dict[str, Any]) -> IndexRows:
    """Every index row of a resource version: its search parameters and its compartment membership.

    The write path stores exactly these rows and the policy decision reads exactly these, so the
    SQL and the per-resource form of a decision see the same facts.
    """
    rows = extract(resource)
    rows.references.extend(compartment_rows(res_type, res_id, rows))
    return rows


class IndexRowsCache:
    """`index_rows` of stored versions, remembered by their exact stored bytes.

    Every read decides on the version's index rows, and parsing plus extracting them costs more
    than the policy decision itself. The rows are a pure function of (type, id, content), so the
    key holds the content bytes: a version edited in place (relabelled, re-encrypted by a key
    rotation, changed by another process) has other bytes and is extracted afresh; nothing can
    be stale. Bounded: the oldest entry goes first. The rows are shared: callers only read them.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._rows: dict[tuple[str, str, bytes], IndexRows] = {}

    def rows(
        self, res_type: str, res_id: str, content: bytes, resource: Callable[[], dict[str, Any]]
    ) -> IndexRows:
        key = (res_type, res_id, content)
        found = self._rows.get(key)
        if found is None:
            if len(self._rows) >= self.size:
                self._rows.pop(next(iter(self._rows)))
            found = self._rows[key] = index_rows(res_type, res_id, resource())
        return found


def patients_of(rows: IndexRows) -> set[str]:
    """The patients whose compartment holds a resource, given its index rows (incl. `_compartment`)."""
    return {r.target_id for r in rows.references if r.param == COMPARTMENT_PARAM and r.target_id}
