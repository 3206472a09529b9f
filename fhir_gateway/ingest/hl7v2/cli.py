"""`fhir-gateway hl7 errors` and `fhir-gateway hl7 replay ID|--all`: the error queue from a shell.

Both open the database named by `--database-url`/`--config` (a running server's, typically) and go
through the same receiver as MLLP and HTTP, so a replayed message is mapped, committed and recorded
for idempotency exactly as if it had just arrived. The listing never shows message content.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from fhir_gateway.api.runtime import Runtime
from fhir_gateway.cli_options import ConfigOpt, DbOpt, settings_from
from fhir_gateway.errors import GatewayError
from fhir_gateway.ingest.hl7v2 import store as hl7_store
from fhir_gateway.ingest.hl7v2.ack import Outcome
from fhir_gateway.ingest.hl7v2.receiver import Receiver

T = TypeVar("T")
hl7_app = typer.Typer(help="HL7 v2 receiver: error queue", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@hl7_app.command("errors")
def errors(
    include_replayed: Annotated[bool, typer.Option("--all", help="Also list replayed entries")] = False,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """List the messages in the error queue (no message content)."""
    settings = settings_from(config, database_url=database_url)

    async def run() -> list[hl7_store.ErrorEntry]:
        runtime = Runtime(settings)
        try:
            await runtime.ensure_schema()
            return await hl7_store.list_errors(runtime.store, include_replayed=include_replayed, limit=10_000)
        finally:
            await runtime.stop()

    entries = _run(run())
    table = Table(title=f"HL7 v2 error queue ({len(entries)})")
    for column in ("id", "received", "sender", "control id", "type", "ack", "attempts", "replayed", "error"):
        table.add_column(column)
    for e in entries:
        issues = e.error.get("issue", [])
        first = issues[0].get("diagnostics", "") if issues else ""
        table.add_row(
            str(e.id),
            _when(e.received_at),
            f"{e.key[0]}^{e.key[1]}",
            e.key[2],
            e.message_type,
            e.ack_code,
            str(e.attempts),
            "yes" if e.replayed else "no",
            first,
        )
    out.print(table)


@hl7_app.command("replay")
def replay(
    error_id: Annotated[int | None, typer.Argument(help="Error queue entry id")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every open entry")] = False,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Run queued messages through the receiver again; exit 1 if any still fails."""
    if (error_id is None) == (not replay_all):
        err.print("[red]give an entry id or --all[/red]")
        raise typer.Exit(2)
    settings = settings_from(config, database_url=database_url)

    async def run() -> list[tuple[int, Outcome | None]]:
        runtime = Runtime(settings)
        receiver = Receiver(runtime)
        try:
            if replay_all:
                return [(i, r.outcome) for i, r in await receiver.replay_all()]
            assert error_id is not None
            reply = await receiver.replay(error_id)
            return [(error_id, reply.outcome if reply is not None else None)]
        finally:
            await runtime.stop()

    results = _run(run())
    failed = 0
    for entry_id, outcome in results:
        if outcome is None:
            err.print(f"[red]no error queue entry {entry_id}[/red]")
            failed += 1
        elif outcome is Outcome.ACCEPTED:
            out.print(f"{entry_id}: [green]accepted[/green]")
        else:
            out.print(f"{entry_id}: [red]{outcome.value}[/red]")
            failed += 1
    out.print(f"replayed {len(results) - failed} of {len(results)}")
    raise typer.Exit(1 if failed else 0)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except GatewayError as exc:
        err.print(f"[red]error:[/red] {exc.diagnostics}")
        raise typer.Exit(1) from None
