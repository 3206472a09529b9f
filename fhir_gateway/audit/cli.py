"""`fhir-gateway audit verify|list`; fhir_gateway/cli.py mounts it: `app.add_typer(audit_app, name="audit")`.

`verify` walks the hash chain and exits 0 when it is intact, 1 naming the first broken event (seq,
AuditEvent id, kind of damage) when it is not. It prints the head hash: keeping that outside the
database is what makes even a rewrite of the whole tail detectable. `list` shows recent events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

audit_app = typer.Typer(help="Audit trail (hash-chained AuditEvents)", no_args_is_help=True)
out = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config file")]
DbOpt = Annotated[
    str | None, typer.Option("--database-url", help="SQLAlchemy URL, e.g. sqlite+aiosqlite:///gw.db")
]
ChainOpt = Annotated[str | None, typer.Option("--chain", help="Chain name (default: audit.chain, 'main')")]


@audit_app.command("verify")
def audit_verify(config: ConfigOpt = None, database_url: DbOpt = None, chain: ChainOpt = None) -> None:
    """Check the hash chain; exit 1 naming the first edited, deleted or reordered event."""
    from fhir_gateway.audit.chain import VerifyResult, verify
    from fhir_gateway.audit.config import audit_settings
    from fhir_gateway.cli_options import run_or_exit, settings_from
    from fhir_gateway.store.store import Store

    settings = settings_from(config, database_url=database_url)
    name = chain or audit_settings(settings).chain

    async def run() -> VerifyResult:
        store = Store(settings.database_url)
        try:
            await store.upgrade()
            return await verify(store, name)
        finally:
            await store.dispose()

    result: VerifyResult = run_or_exit(run())
    if result.broken is None:
        out.print(
            f"audit chain '{name}' intact: {result.checked} event(s), head seq {result.head_seq} "
            f"hash {result.head_hash}"
        )
        return
    broken = result.broken
    which = f"event {broken.event_id}" if broken.event_id else "a missing event"
    out.print(
        f"[red]audit chain '{name}' BROKEN at seq {broken.seq} ({which}): {broken.kind}[/red]"
        f" - {broken.detail}"
    )
    out.print(f"{result.checked} event(s) before it are intact")
    raise typer.Exit(1)


@audit_app.command("list")
def audit_list(
    config: ConfigOpt = None,
    database_url: DbOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many of the newest events")] = 20,
) -> None:
    """Show the newest AuditEvents: when, what, outcome, who (identifiers only)."""
    from fhir_gateway.cli_options import run_or_exit, settings_from

    settings = settings_from(config, database_url=database_url)
    rows = run_or_exit(_recent(settings.database_url, limit))
    table = Table("seq", "recorded", "type/subtype", "action", "outcome", "agent", "id")
    for seq, event in rows:
        table.add_row(
            str(seq),
            str(event.get("recorded", "")),
            _kind(event),
            str(event.get("action", "")),
            str(event.get("outcome", "")),
            _requestor(event),
            str(event.get("id", "")),
        )
    out.print(table)


async def _recent(url: str, limit: int) -> list[tuple[int, dict[str, Any]]]:
    import orjson
    from sqlalchemy import select

    from fhir_gateway.audit.tables import audit_events
    from fhir_gateway.store.store import Store

    store = Store(url)
    try:
        await store.upgrade()
        e = audit_events.c
        stmt = select(e.seq, e.event).order_by(e.recorded.desc(), e.seq.desc()).limit(limit)
        async with store.reader() as conn:
            return [(int(r.seq), orjson.loads(r.event)) for r in (await conn.execute(stmt)).all()]
    finally:
        await store.dispose()


def _kind(event: dict[str, Any]) -> str:
    type_code = str((event.get("type") or {}).get("code", ""))
    subtypes = ",".join(str(s.get("code", "")) for s in event.get("subtype") or [])
    return f"{type_code}/{subtypes}" if subtypes else type_code


def _requestor(event: dict[str, Any]) -> str:
    for agent in event.get("agent") or []:
        if agent.get("requestor"):
            who = agent.get("who") or {}
            return str(who.get("reference") or (who.get("identifier") or {}).get("value") or "-")
    return "-"
