"""The `validate` write-pipeline stage: every created or updated resource is validated before commit.

    pipeline: ["fhir_gateway.validation.stage:validation_stage", ...]

Errors reject the whole submit with 422 and an OperationOutcome holding every issue (the HL7v2
adapter turns that into an AE); warnings ride along in `change.warnings` and so reach the response.
Strictness is a setting (`validation.mode`, and `validation.feed_mode` for the HL7v2/DICOM feeds,
which are often messier than REST clients and should not lose data over a warning):

    strict  errors and warnings reject
    errors  errors reject, warnings are kept (default for REST)
    warn    nothing rejects; errors and warnings are kept as warnings (default for feeds)
    off     no validation

Until the settings model has a `validation` section the defaults above apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhir_gateway.context import RequestContext
from fhir_gateway.errors import Issue, Unprocessable
from fhir_gateway.pipeline.stage import Change
from fhir_gateway.settings import Settings
from fhir_gateway.validation.memo import ValidationMemo
from fhir_gateway.validation.validator import ERRORS

MODES = ("strict", "errors", "warn", "off")
# An extension nobody loaded a definition for is stored with a warning, not refused: clients and
# feeds carry national and vendor extensions (US Core race, ...) that `$validate` reports as errors.
UNKNOWN_EXTENSIONS = "warning"
FEEDS = frozenset({"hl7v2", "dicom"})


@dataclass(frozen=True, slots=True)
class ValidationStage:
    mode: str = "errors"
    feed_mode: str = "warn"
    invariants: bool = True
    memo: ValidationMemo = field(default_factory=ValidationMemo, compare=False, repr=False)

    async def __call__(self, change: Change, ctx: RequestContext) -> None:
        mode = self.feed_mode if ctx.source in FEEDS else self.mode
        if mode == "off" or change.resource is None:
            return
        issues = self.memo.validate(
            change.resource,
            mode=change.interaction,
            run_invariants=self.invariants,
            unknown_extensions=UNKNOWN_EXTENSIONS,
        )
        _relocate(issues, change)
        rejecting = ERRORS | {"warning"} if mode == "strict" else ERRORS if mode == "errors" else frozenset()
        if any(issue.severity in rejecting for issue in issues):
            errors = sum(issue.severity in rejecting for issue in issues)
            raise Unprocessable(
                f"{change.res_type} failed validation with {errors} issue(s)",
                code="invalid",
                issues=[i for i in issues if i.severity != "information"],
            )
        for issue in issues:
            if issue.severity in ERRORS or issue.severity == "warning":
                change.warnings.append(Issue("warning", issue.code, issue.diagnostics, issue.expression))


def _relocate(issues: list[Issue], change: Change) -> None:
    """In a Bundle of several entries, say which entry: `Bundle.entry[2].resource/*Patient/1*/.name`."""
    entries = change.bundle.get("entry")
    if not isinstance(entries, list) or len(entries) < 2:
        return
    here = f"Bundle.entry[{change.entry_index}].resource"
    prefix = f"{here}/*{change.res_type}/{change.res_id}*/"
    for issue in issues:
        issue.expression = [
            here
            if e == change.res_type
            else prefix + e[len(change.res_type) :]
            if e.startswith(change.res_type + ".")
            else e
            for e in issue.expression
        ]


def _option(section: Any, name: str, default: Any) -> Any:
    return getattr(section, name, default) if section is not None else default


def validation_stage(settings: Settings) -> ValidationStage:
    """The stage factory named in `settings.pipeline`."""
    section = getattr(settings, "validation", None)
    mode = _option(section, "mode", "errors")
    feed_mode = _option(section, "feed_mode", "warn")
    for name, value in (("mode", mode), ("feed_mode", feed_mode)):
        if value not in MODES:
            raise ValueError(f"validation.{name}: must be one of {', '.join(MODES)}")
    return ValidationStage(mode, feed_mode, bool(_option(section, "invariants", True)))
