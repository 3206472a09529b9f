"""`fhir-gateway validate FILE...`: validate JSON resources (or Bundles) on disk and print the issues.

StructureDefinitions among the files are used as profiles for the others (by their `url`), so a
profile and its examples can be checked together. The exit code is 1 when any file has an error
(or cannot be read as JSON), else 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape

from fhir_gateway.errors import Issue
from fhir_gateway.validation.validator import is_valid, validate

_STYLE = {"fatal": "bold red", "error": "red", "warning": "yellow", "information": "cyan"}


def validate_files(paths: list[Path], *, console: Console | None = None) -> int:
    out = console or Console()
    loaded: list[tuple[Path, Any]] = []
    failed = False
    for path in _expand(paths):
        try:
            loaded.append((path, orjson.loads(path.read_bytes())))
        except (OSError, orjson.JSONDecodeError) as exc:
            out.print(f"[bold red]✗[/] {escape(str(path))}: cannot read as JSON ({type(exc).__name__})")
            failed = True
    definitions = {
        doc["url"]: doc
        for _, doc in loaded
        if isinstance(doc, dict)
        and doc.get("resourceType") == "StructureDefinition"
        and isinstance(doc.get("url"), str)
    }
    for path, doc in loaded:
        issues = validate(doc, structure_definitions=definitions)
        ok = is_valid(issues)
        failed = failed or not ok
        mark = "[green]✓[/]" if ok else "[bold red]✗[/]"
        errors = sum(i.severity in ("error", "fatal") for i in issues)
        warnings = sum(i.severity == "warning" for i in issues)
        out.print(f"{mark} {escape(str(path))}: {errors} error(s), {warnings} warning(s)")
        for issue in issues:
            out.print(_line(issue))
    return 1 if failed else 0


def _line(issue: Issue) -> str:
    style = _STYLE.get(issue.severity, "white")
    where = ", ".join(issue.expression) or "-"
    text = escape(issue.diagnostics)
    return f"  [{style}]{issue.severity:<11}[/] {escape(issue.code):<13} {escape(where)}: {text}"


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given; folders contribute their *.json files, sorted."""
    out: list[Path] = []
    for path in paths:
        out.extend(sorted(path.rglob("*.json")) if path.is_dir() else [path])
    return out
