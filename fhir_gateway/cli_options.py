"""What every `fhir-gateway` command shares: the --config/--database-url options, loading settings
with a clear message, and running a coroutine with GatewayErrors shown as one red line.

A module of its own so that the feature packages' sub-command groups (hl7, keys, audit) can use it
while the top-level `cli` module imports those groups.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fhir_gateway.settings import Settings, SettingsError, load_settings

err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config file")]
DbOpt = Annotated[
    str | None, typer.Option("--database-url", help="SQLAlchemy URL, e.g. sqlite+aiosqlite:///gw.db")
]


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, overrides=overrides)
    except SettingsError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def run_or_exit(coro: Any) -> Any:
    from fhir_gateway.errors import GatewayError

    try:
        return asyncio.run(coro)
    except GatewayError as exc:
        err.print(f"[red]error:[/red] {exc.diagnostics}")
        raise typer.Exit(1) from None
