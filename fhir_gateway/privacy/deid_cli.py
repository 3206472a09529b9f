"""`fhir-gateway deidentify FILE... [--out DIR] [--dates shift|year]`: de-identify JSON files.

Each FILE holds one resource or Bundle. With --out each result is written to DIR under the same
file name, else printed to stdout; the report of each file goes to stderr. Pseudonyms and date
offsets come from the installation's key (settings: security.encryption_key), so files of one
installation link up with each other and with `$de-identify` answers. Exit status 1 when any file
could not be read; the message names the file, never its content.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from fhir_gateway.privacy.deid import DeidConfig, deidentify, installation_key


def deidentify_files(paths: list[Path], out: Path | None, dates: str) -> int:
    if dates not in ("shift", "year"):
        print("--dates is shift or year", file=sys.stderr)
        return 2
    from fhir_gateway.cli_options import settings_from  # settings load only when the command runs

    settings = settings_from(None)
    key = installation_key(settings.security.encryption_key.get_secret_value())
    config = DeidConfig(dates="year" if dates == "year" else "shift")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in paths:
        try:
            data: Any = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            print(f"{path}: not readable as a FHIR JSON resource; skipped", file=sys.stderr)
            failed += 1
            continue
        result = deidentify(data, key=key, config=config)
        text = orjson.dumps(result.data, option=orjson.OPT_INDENT_2)
        if out is None:
            sys.stdout.write(text.decode() + "\n")
        else:
            (out / path.name).write_bytes(text)
        print(f"{path}: {orjson.dumps(result.report.to_json()).decode()}", file=sys.stderr)
    return 1 if failed else 0
