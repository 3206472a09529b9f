"""Errors raised anywhere in the gateway, each carrying what an OperationOutcome needs.

    GatewayError                      (500, exception)
     ├── BadRequest                   (400, invalid / structure / value ...)
     ├── NotFound                     (404, not-found)
     ├── Gone                         (410, deleted)
     ├── MethodNotAllowed             (405, not-supported)
     ├── NotAcceptable                (406, not-supported)
     ├── UnsupportedMediaType         (415, not-supported)
     ├── Conflict                     (409, conflict / duplicate)
     ├── PreconditionFailed           (412, conflict)
     ├── PayloadTooLarge              (413, too-costly)
     ├── Unprocessable                (422, processing / invariant ...)
     ├── Unauthorized                 (401, login)
     ├── Forbidden                    (403, forbidden)
     └── ServiceUnavailable           (503, transient)

Texts never carry PHI: they name elements and parameters, not values taken from a resource.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Issue:
    """One OperationOutcome.issue."""

    severity: str
    code: str
    diagnostics: str
    expression: list[str] = field(default_factory=list)
    details_code: str | None = None

    def to_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.details_code:
            issue["details"] = {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/operation-outcome",
                        "code": self.details_code,
                    }
                ]
            }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


def information(text: str) -> dict[str, Any]:
    """An all-is-well OperationOutcome (for `Prefer: return=OperationOutcome`)."""
    return operation_outcome([Issue("information", "informational", text)])


class GatewayError(Exception):
    """Base of every error that becomes an OperationOutcome."""

    status = 500
    code = "exception"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: str | list[str] | None = None,
        code: str | None = None,
        issues: list[Issue] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        exprs = [expression] if isinstance(expression, str) else list(expression or [])
        first = Issue("error" if self.status < 500 else "fatal", code or self.code, diagnostics, exprs)
        self.issues: list[Issue] = [first, *(issues or [])]

    @property
    def diagnostics(self) -> str:
        return self.issues[0].diagnostics

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


class BadRequest(GatewayError):
    status = 400
    code = "invalid"


class Unauthorized(GatewayError):
    status = 401
    code = "login"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class NotFound(GatewayError):
    status = 404
    code = "not-found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "not-supported"


class NotAcceptable(GatewayError):
    status = 406
    code = "not-supported"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "not-supported"


class Conflict(GatewayError):
    status = 409
    code = "conflict"


class Gone(GatewayError):
    status = 410
    code = "deleted"


class PreconditionFailed(GatewayError):
    status = 412
    code = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "too-costly"


class Unprocessable(GatewayError):
    status = 422
    code = "processing"


class ServiceUnavailable(GatewayError):
    status = 503
    code = "transient"
