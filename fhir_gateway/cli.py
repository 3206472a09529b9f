"""The `fhir-gateway` command line (typer + rich).

Every command that touches the database takes `--database-url` and `--config`, so it can be pointed
at a running server's database. Settings are layered exactly as for the server (settings.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from fhir_gateway.audit.cli import audit_app
from fhir_gateway.cli_options import ConfigOpt, DbOpt, err, run_or_exit, settings_from
from fhir_gateway.crypto.cli import keys_app
from fhir_gateway.ingest.hl7v2.cli import hl7_app
from fhir_gateway.settings import encrypt_value, generate_master_key

app = typer.Typer(
    help="fhir_gateway: FHIR R4 interoperability server", no_args_is_help=True, pretty_exceptions_enable=False
)
db_app = typer.Typer(help="Database schema", no_args_is_help=True)
config_app = typer.Typer(help="Configuration helpers", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(hl7_app, name="hl7")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8080)")] = None,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    mllp_port: Annotated[int | None, typer.Option("--mllp-port", help="HL7v2 MLLP listener port")] = None,
    dicom_port: Annotated[int | None, typer.Option("--dicom-port", help="DICOM C-STORE SCP port")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, max=64, help="Server processes on the port (default 1)")
    ] = None,
) -> None:
    """Run the server (embedded SQLite under ./data unless told otherwise)."""
    from fhir_gateway.api.serve import serve as run_server

    settings = settings_from(
        config,
        host=host,
        port=port,
        database_url=database_url,
        mllp_port=mllp_port,
        dicom_port=dicom_port,
        workers=workers,
    )
    run_server(settings)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """Apply the schema migrations (the server also does this at start)."""
    from fhir_gateway.store.store import Store

    settings = settings_from(config, database_url=database_url)

    async def run() -> None:
        store = Store(settings.database_url)
        try:
            await store.upgrade()
        finally:
            await store.dispose()

    run_or_exit(run())
    err.print("[green]database schema is up to date[/green]")


@config_app.command("encrypt")
def config_encrypt(value: Annotated[str, typer.Argument(help="The secret to encrypt")]) -> None:
    """Print ENC[...] for a YAML config value, encrypted with FHIR_GATEWAY_MASTER_KEY."""
    key = os.environ.get("FHIR_GATEWAY_MASTER_KEY")
    if not key:
        err.print("[red]set FHIR_GATEWAY_MASTER_KEY first[/red] (make one with `fhir-gateway config genkey`)")
        raise typer.Exit(2)
    try:
        print(encrypt_value(value, key))
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@config_app.command("genkey")
def config_genkey() -> None:
    """Print a new master key for encrypting config secrets."""
    print(generate_master_key())


@app.command()
def token(
    sub: Annotated[str, typer.Option("--sub", help="Subject (user id or FHIR reference)")],
    role: Annotated[list[str] | None, typer.Option("--role", help="Role (repeatable)")] = None,
    scope: Annotated[str, typer.Option("--scope", help="Space-separated SMART scopes")] = "",
    patient: Annotated[str | None, typer.Option("--patient", help="Patient launch context")] = None,
    purpose: Annotated[
        list[str] | None, typer.Option("--purpose", help="purposeOfUse code (repeatable)")
    ] = None,
    fhir_user: Annotated[str | None, typer.Option("--fhir-user", help="fhirUser reference")] = None,
    minutes: Annotated[int | None, typer.Option("--minutes", help="Lifetime in minutes")] = None,
    config: ConfigOpt = None,
) -> None:
    """Print a development token signed with the configured signing key (refused in production)."""
    from fhir_gateway.auth.tokens import mint_token

    settings = settings_from(config)
    if settings.environment == "production":
        err.print("[red]production tokens come from the identity provider; refusing to mint one[/red]")
        raise typer.Exit(2)
    print(
        mint_token(
            settings,
            sub=sub,
            roles=role or (),
            scope=scope,
            patient=patient,
            purpose=purpose or (),
            fhir_user=fhir_user,
            minutes=minutes,
        )
    )


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (.json resources or Bundles)")],
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Load files through the gateway's write path, with a progress bar.

    Bad files are reported and skipped; the rest go on."""
    from fhir_gateway.ingest.files import ingest_paths

    settings = settings_from(config, database_url=database_url)
    failures = run_or_exit(ingest_paths(settings, paths, err))
    raise typer.Exit(1 if failures else 0)


@app.command()
def deidentify(
    files: Annotated[list[Path], typer.Argument(help="FHIR JSON resources or Bundles")],
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the copies (default: print)")] = None,
    dates: Annotated[str, typer.Option("--dates", help="shift (per patient) or year")] = "shift",
) -> None:
    """HIPAA Safe Harbor de-identification of FHIR JSON files (pseudonyms keyed per installation)."""
    from fhir_gateway.privacy.deid_cli import deidentify_files

    raise typer.Exit(deidentify_files(files, out, dates))


@app.command()
def validate(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="FHIR JSON files or folders (StructureDefinitions among them are used as profiles)"
        ),
    ],
) -> None:
    """Validate FHIR R4 JSON resources offline; exits 1 when any has an error."""
    from fhir_gateway.validation.cli import validate_files

    raise typer.Exit(validate_files(paths))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
