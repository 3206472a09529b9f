"""`fhir-gateway keys rotate|status`; fhir_gateway/cli.py mounts it: `app.add_typer(keys_app, name="keys")`.

`rotate` runs the rotation in this process beside a running server (no downtime: rows stay readable
throughout); run it again to finish an interrupted rotation. `status` lists the key versions and
how many stored rows use each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

keys_app = typer.Typer(help="PHI encryption keys", no_args_is_help=True)
out = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config file")]
DbOpt = Annotated[
    str | None, typer.Option("--database-url", help="SQLAlchemy URL, e.g. sqlite+aiosqlite:///gw.db")
]


@keys_app.command("rotate")
def keys_rotate(
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Rows per transaction")
    ] = None,
    settle: Annotated[
        float, typer.Option("--settle", min=0.0, help="Seconds between the new version and moving rows")
    ] = 2.0,
) -> None:
    """Start a new key version for new writes, re-encrypt every stored row, retire unused versions."""
    from fhir_gateway.cli_options import run_or_exit, settings_from
    from fhir_gateway.crypto.keyring import LocalKms
    from fhir_gateway.crypto.rotation import RotationProgress, rotate
    from fhir_gateway.crypto.service import PhiCrypto, crypto_settings
    from fhir_gateway.store.store import Store

    settings = settings_from(config, database_url=database_url)
    # Rotation works whether or not new writes are encrypted: data sealed before stays sealed.
    config_section = crypto_settings(settings)
    crypto = PhiCrypto(LocalKms(settings.security.encryption_key.get_secret_value()), config_section)
    size = batch_size or config_section.rotation_batch_size

    def report(p: RotationProgress) -> None:
        out.print(
            f"pass {p.passes}: scanned {p.rows_scanned}, re-encrypted {p.rows_reencrypted}, "
            f"failed {p.rows_failed}, left on old versions {sum(p.remaining.values())}"
        )

    async def run() -> RotationProgress:
        store = Store(settings.database_url)
        try:
            await store.upgrade()
            await crypto.start(store)
            return await rotate(
                store, crypto.keys, crypto.fields, batch_size=size, settle_seconds=settle, report=report
            )
        finally:
            await store.dispose()

    result = run_or_exit(run())
    verb = "resumed the rotation to" if result.resumed else "rotated to"
    retired = ", ".join(map(str, result.retired)) or "none"
    out.print(f"{verb} key version {result.target_version}; retired: {retired}")
    if result.remaining or result.rows_failed:
        out.print(
            f"[yellow]{sum(result.remaining.values())} row(s) still use old versions "
            f"({result.rows_failed} could not be decrypted); "
            "run `keys status` and `keys rotate` again[/yellow]"
        )
        raise typer.Exit(1)


@keys_app.command("status")
def keys_status(config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """Key versions, their states and how many stored rows use each (rotation progress)."""
    from fhir_gateway.cli_options import run_or_exit, settings_from
    from fhir_gateway.crypto.keyring import LocalKms
    from fhir_gateway.crypto.keystore import KeyStore
    from fhir_gateway.crypto.rotation import key_usage
    from fhir_gateway.store.store import Store

    settings = settings_from(config, database_url=database_url)

    async def run() -> tuple[list[dict[str, Any]], dict[int, int]]:
        store = Store(settings.database_url)
        try:
            await store.upgrade()
            keys = KeyStore(LocalKms(settings.security.encryption_key.get_secret_value()))
            return await keys.describe(store), await key_usage(store)
        finally:
            await store.dispose()

    versions, usage = run_or_exit(run())
    if not versions:
        out.print("no key versions yet (the server creates version 1 when it starts)")
        return
    total = sum(usage.values())
    for v in versions:
        rows = usage.get(v["version"], 0)
        share = f" ({100 * rows / total:.0f}%)" if total else ""
        out.print(f"version {v['version']}: {v['state']:<8} rows {rows}{share}")
