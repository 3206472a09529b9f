"""The one write-stage signature, the Change it receives, and the ordered Pipeline built from settings.

A stage is any object with `async def __call__(change, ctx) -> None` (HAPI interceptor style, no base
class). It may edit `change.resource`, append to `change.warnings`, add resources that must be
committed together with the change (`change.additions`, e.g. Provenance or AuditEvent), or raise a
`GatewayError` to reject the whole submit. Stages run in list order, inside the submit's database
transaction, after ids and references are resolved and before the version is serialised.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fhir_gateway.context import RequestContext
from fhir_gateway.errors import Issue
from fhir_gateway.fhir.json import Resource

if TYPE_CHECKING:
    from fhir_gateway.settings import Settings
    from fhir_gateway.store.store import StoredVersion, Transaction


@dataclass(slots=True)
class Change:
    """One resource version about to be written by a submit."""

    method: str  # POST | PUT | PATCH | DELETE
    res_type: str
    res_id: str
    resource: Resource | None  # None for DELETE
    previous: StoredVersion | None
    bundle: Resource  # the submitted Bundle, for stages that need the message context
    entry_index: int
    warnings: list[Issue] = field(default_factory=list)
    # New resources created with the change (never updates of existing ones: each needs a fresh id or
    # none, and is stored as version 1 without a lookup).
    additions: list[Resource] = field(default_factory=list)
    # Rows a stage writes through `tx` commit or roll back with the change (e.g. the conflict queue);
    # `plaintext` opens a stored version whose PHI is sealed (e.g. `previous`).
    tx: Transaction | None = field(default=None, repr=False)
    plaintext: Callable[[StoredVersion], Awaitable[Resource]] | None = field(default=None, repr=False)

    @property
    def interaction(self) -> str:
        if self.method == "DELETE":
            return "delete"
        return "create" if self.previous is None or self.previous.deleted else "update"


class Stage(Protocol):
    async def __call__(self, change: Change, ctx: RequestContext) -> None: ...


StageFactory = Callable[["Settings"], Stage]


class Pipeline:
    """The ordered list of stages every change goes through."""

    def __init__(self, stages: Sequence[Stage] = ()) -> None:
        self.stages: tuple[Stage, ...] = tuple(stages)

    async def run(self, change: Change, ctx: RequestContext) -> None:
        for stage in self.stages:
            await stage(change, ctx)

    @classmethod
    def from_settings(cls, settings: Settings) -> Pipeline:
        return cls([load_factory(spec)(settings) for spec in settings.pipeline])


def load_factory(spec: str) -> StageFactory:
    """Import `package.module:factory`; a bad spec fails at start with a message naming it."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"pipeline stage {spec!r}: expected 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"pipeline stage {spec!r}: cannot import {module_name!r} ({exc})") from None
    factory: Any = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"pipeline stage {spec!r}: {attr!r} is not a callable in {module_name!r}")
    return factory  # type: ignore[no-any-return]
