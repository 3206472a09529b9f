"""The CapabilityStatement, generated from what this server actually implements.

Resource types and search parameters come from the compiled R4 definitions (the same tables the
search engine uses), so the statement cannot claim a parameter the server does not index.
"""

from __future__ import annotations

from typing import Any

from fhir_gateway import __version__
from fhir_gateway.definitions.search_parameters import params_for, resource_types
from fhir_gateway.fhir.dates import now_instant

INTERACTIONS = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
]
UNSUPPORTED_SEARCH_TYPES = {"special"}
READ_ONLY = {"AuditEvent": ["read", "search-type"]}  # written by the server alone (audit trail)
SYSTEM_OPERATIONS = ["break-glass-justify", "break-glass-report", "de-identify", "conflicts", "changes"]
TYPE_OPERATIONS = {"*": ["validate", "provenance"], "Patient": ["everything", "break-glass"]}
OPERATION_BASE = "http://fhir-gateway.org/OperationDefinition/"
STANDARD_OPERATIONS = {
    "validate": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
    "everything": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
}


def _operation(name: str) -> dict[str, str]:
    return {"name": name, "definition": STANDARD_OPERATIONS.get(name, OPERATION_BASE + name)}


def capability_statement(base: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now_instant(),
        "publisher": "fhir_gateway",
        "kind": "instance",
        "software": {"name": "fhir_gateway", "version": __version__},
        "implementation": {"description": "fhir_gateway FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "Bearer JWT; SMART scopes, roles, security labels and patient consent "
                    "decide what each caller sees (see .well-known/smart-configuration)",
                },
                "resource": [_resource(t) for t in sorted(resource_types())],
                "operation": [_operation(name) for name in SYSTEM_OPERATIONS],
                "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
                "searchParam": [
                    {"name": "_count", "type": "number"},
                    {"name": "_sort", "type": "string"},
                    {"name": "_total", "type": "token"},
                ],
            }
        ],
    }


def _resource(res_type: str) -> dict[str, Any]:
    params = params_for(res_type)
    return {
        "type": res_type,
        "interaction": [{"code": code} for code in READ_ONLY.get(res_type, INTERACTIONS)],
        "operation": [_operation(n) for n in TYPE_OPERATIONS["*"] + TYPE_OPERATIONS.get(res_type, [])],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "searchInclude": ["*"],
        "searchRevInclude": ["*"],
        "searchParam": [
            {"name": p.code, "definition": p.url, "type": p.type}
            for p in sorted(params.values(), key=lambda p: p.code)
            if p.type not in UNSUPPORTED_SEARCH_TYPES
        ],
    }
