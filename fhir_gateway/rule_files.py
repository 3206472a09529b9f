"""Reading a versioned rule file: the packaged default beside the code, or an operator's own file.

Label rules, clearance and the system-of-record registry are data (DESIGN.md "Rules are data"); each
module compiles its own structure, and this is the one place that finds, reads and parses the
YAML, with errors that name the file and never quote its content.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml


def read_rules(
    path: str | Path | None, *, package: str, default: str, what: str, error: type[Exception]
) -> tuple[Any, str]:
    """The parsed YAML of `path` (or of `package`/rules/`default` when None) and its name for errors."""
    if path is None:
        text = (files(package) / "rules" / default).read_text(encoding="utf-8")
        origin = default
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise error(f"{path}: cannot read the {what} ({exc.strerror})") from None
        origin = str(path)
    try:
        return yaml.safe_load(text), origin
    except yaml.YAMLError:
        raise error(f"{origin}: not valid YAML") from None
