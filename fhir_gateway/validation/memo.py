"""Validate the same content once: a bounded memo of validation results by a digest of the JSON.

Feeds re-send the same data again and again: every ORU and ADT A08 of a patient carries the same
PID and PV1, so the mapper produces the same Patient and Encounter with each message, and most of
them end as unchanged updates (no new version). Validation is a pure function of the resource's
content and the mode (no clock, no database: profiles come from `meta.profile` against packaged
definitions), so a resource validated before needs a serialization and a hash (~10 µs), not a walk
of the structure and its invariants (~130 µs for a corpus resource).

The memo is keyed by a BLAKE2b digest, so it holds no PHI, only digests and the issues found (whose
texts never quote values). It is least-recently-used and bounded by `size` entries.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import orjson

from fhir_gateway.errors import Issue
from fhir_gateway.validation.validator import validate

DEFAULT_SIZE = 4096


class ValidationMemo:
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._issues: OrderedDict[bytes, tuple[Issue, ...]] = OrderedDict()

    def validate(
        self, resource: Any, *, mode: str | None, run_invariants: bool, unknown_extensions: str
    ) -> list[Issue]:
        """`validator.validate(resource, mode=..., ...)`, from memory when seen before.

        The issues are fresh copies each time: callers relocate their expressions in place.
        """
        options = (mode, run_invariants, unknown_extensions)
        key = _digest(resource, options)
        if key is None:  # not serialisable as JSON (an integer beyond 64 bits): just validate it
            return validate(
                resource, mode=mode, run_invariants=run_invariants, unknown_extensions=unknown_extensions
            )
        known = self._issues.get(key)
        if known is not None:
            self._issues.move_to_end(key)
            return _copies(known)
        issues = validate(
            resource, mode=mode, run_invariants=run_invariants, unknown_extensions=unknown_extensions
        )
        self._issues[key] = tuple(_copies(issues))
        if len(self._issues) > self.size:
            self._issues.popitem(last=False)
        return issues


def _digest(resource: Any, options: tuple[Any, ...]) -> bytes | None:
    try:
        body = orjson.dumps(resource)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return None
    digest = hashlib.blake2b(body, digest_size=16)
    digest.update("".join(f"\x00{option}" for option in options).encode())
    return digest.digest()


def _copies(issues: tuple[Issue, ...] | list[Issue]) -> list[Issue]:
    # The constructor, not dataclasses.replace (which inspects the fields on every call): a feed
    # message's resources come back from the memo with a few issues each, for every message.
    return [Issue(i.severity, i.code, i.diagnostics, list(i.expression), i.details_code) for i in issues]
