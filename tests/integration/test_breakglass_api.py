"""`$break-glass`, `$break-glass-justify` and `$break-glass-report` over HTTP, with the outbox
delivering to a real local webhook (a stdlib HTTP server on a free port) and the follow-up loop
running as the server runs it.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from fhir_gateway.api.app import fhir_router
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.audit.config import AuditSettings
from fhir_gateway.audit.events import AuditSource
from fhir_gateway.audit.writer import AuditLog
from fhir_gateway.auth.tokens import mint_token
from fhir_gateway.privacy import breakglass
from fhir_gateway.privacy.breakglass_api import (
    BreakGlassServices,
    breakglass_services,
    build_breakglass_router,
)
from fhir_gateway.routing import outbox
from fhir_gateway.routing.outbox import Backoff
from fhir_gateway.settings import Settings
from tests.conftest import make_settings

REASON = "Unresponsive in resus bay 2, history of Condition Y"
FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


# --- a real webhook receiver --------------------------------------------------------------------


class Webhook:
    """An HTTP server in a thread: answers the queued statuses first, then 200; keeps what it got."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.received.append(orjson.loads(body))
                    hook.headers.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


# --- the app, assembled as the lead will wire it ------------------------------------------------


@dataclass
class Env:
    client: httpx.AsyncClient
    runtime: Runtime
    audit_log: AuditLog
    services: BreakGlassServices
    settings: Settings

    def token(self, sub: str, *roles: str, fhir_user: str | None = None) -> dict[str, str]:
        token = mint_token(self.settings, sub=sub, roles=roles, scope="user/*.rs", fhir_user=fhir_user)
        return {**FHIR, "Authorization": f"Bearer {token}"}

    @property
    def doctor(self) -> dict[str, str]:
        return self.token("dr-who", "clinician", "emergency_access", fhir_user="Practitioner/who")

    @property
    def officer(self) -> dict[str, str]:
        return self.token("po-1", "privacy_officer")


@asynccontextmanager
async def running(tmp_path: Path, database_url: str | None = None, **privacy: Any) -> AsyncIterator[Env]:
    settings = make_settings(database_url or f"sqlite+aiosqlite:///{tmp_path}/gw.db", privacy=privacy)
    runtime = Runtime(settings)
    audit_log = AuditLog(
        runtime.store,
        AuditSettings(flush_interval_ms=2, record_now_timeout_seconds=1, spill_path=str(tmp_path / "spill")),
        source=AuditSource.from_settings(settings),
        prepare=runtime.ensure_schema,
    )
    # As the lead wires it: services built with the app (their router wakes the dispatcher), the
    # break-glass router before the REST one, everything started in the lifespan after the audit log.
    services = BreakGlassServices(
        runtime, audit_log, interval=0.05, backoff=Backoff(first=0.05, cap=0.2), poll_seconds=0.05
    )
    app = FastAPI()
    app.include_router(
        build_breakglass_router(runtime, "/fhir", audit_log, on_enqueue=services.dispatcher.wake)
    )
    app.include_router(fhir_router(runtime=runtime))
    async with app.router.lifespan_context(app):
        await audit_log.start()
        await services.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test/fhir") as client:
                for pid in ("p1", "p2"):  # no token: the tests' anonymous admin seeds the patients
                    body = {"resourceType": "Patient", "id": pid, "gender": "unknown"}
                    (await client.put(f"/Patient/{pid}", json=body, headers=FHIR)).raise_for_status()
                yield Env(client, runtime, audit_log, services, settings)
        finally:
            await services.stop()
            await audit_log.stop()


def params(*entries: tuple[str, str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": n, k: v} for n, k, v in entries]}


def values(resource: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: next(v for k, v in p.items() if k != "name") for p in resource["parameter"]}


async def break_glass(
    env: Env, patient: str = "p1", *entries: tuple[str, str, Any], **kw: Any
) -> httpx.Response:
    body = params(("reason", "valueString", REASON), *entries)
    return await env.client.post(
        f"/Patient/{patient}/$break-glass", json=body, headers=kw.get("headers", env.doctor)
    )


async def until(condition: Callable[[], Any], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if await condition() if asyncio.iscoroutinefunction(condition) else condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


# --- tests --------------------------------------------------------------------------------------


async def test_lifecycle_open_justify_report(tmp_path: Path, webhook: Webhook, any_db_url: str) -> None:
    privacy = {"notify_channel": "webhook", "notify_webhook_url": webhook.url}
    async with running(tmp_path, any_db_url, **privacy) as env:
        opened = await break_glass(
            env, "p1", ("purposeOfUse", "valueCode", "BTG"), ("minutes", "valueInteger", 15)
        )
        assert opened.status_code == 200, opened.text
        grant = values(opened.json())
        assert grant["patient"] == {"reference": "Patient/p1"} and grant["purposeOfUse"]["code"] == "BTG"
        assert grant["expires"] > grant["opened"]
        read = await env.client.get("/Patient/p1", headers=env.doctor)  # the emergency read
        assert read.status_code == 200
        # The privacy officer is notified through the webhook, without the reason text.
        await until(lambda: webhook.received)
        [note] = webhook.received
        assert note["event"] == breakglass.OPENED and note["grant"] == grant["grant"]
        assert note["patient"] == "Patient/p1" and note["subject"] == "dr-who"
        assert REASON not in orjson.dumps(note).decode()
        assert webhook.headers[0]["Idempotency-Key"] == f"outbox-{note['id']}"

        justify = params(
            ("grant", "valueId", grant["grant"]), ("justification", "valueString", "Patient crashed")
        )
        done = await env.client.post("/$break-glass-justify", json=justify, headers=env.doctor)
        assert done.status_code == 200 and done.json()["resourceType"] == "OperationOutcome"

        report = await env.client.get("/$break-glass-report", headers=env.officer)
        assert report.status_code == 200
        [entry] = report.json()["parameter"]
        row = values({"parameter": entry["part"]})
        assert row["grant"] == grant["grant"] and row["justified"] is True and row["overdue"] is False
        assert row["reason"] == REASON and row["justification"] == "Patient crashed"
        assert row["status"] == "active" and row["patient"] == {"reference": "Patient/p1"}
        assert row["fhirUser"] == {"reference": "Practitioner/who"} and row["subject"] == "dr-who"
        since = await env.client.get(
            "/$break-glass-report", params={"since": "2999-01-01"}, headers=env.officer
        )
        assert since.json()["parameter"] == []


async def test_only_emergency_access_opens_and_only_the_officer_reads_the_report(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        nurse = env.token("nurse-1", "nurse")
        refused = await break_glass(env, "p1", headers=nurse)
        assert refused.status_code == 403 and refused.json()["issue"][0]["code"] == "forbidden"
        assert (await env.client.get("/$break-glass-report", headers=env.doctor)).status_code == 403
        assert await breakglass.active_grants(env.runtime.store, "nurse-1") == []


async def test_other_patient_and_unknown_patient(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        assert (await break_glass(env, "nobody")).status_code == 404
        opened = values((await break_glass(env, "p1")).json())
        [grant] = await breakglass.active_grants(env.runtime.store, "dr-who")
        assert grant.patient_id == "p1" and grant.grant_id == opened["grant"]  # p1 only, not p2
        other = env.token("dr-no", "emergency_access")
        justify = params(("grant", "valueString", opened["grant"]), ("justification", "valueString", "mine"))
        assert (
            await env.client.post("/$break-glass-justify", json=justify, headers=other)
        ).status_code == 404


@pytest.mark.parametrize(
    ("body", "expression"),
    [
        ({"resourceType": "Patient"}, "Parameters"),
        ({"resourceType": "Parameters", "parameter": {}}, "Parameters.parameter"),
        (params(("purposeOfUse", "valueCode", "ETREAT")), "Parameters.parameter[reason]"),
        (params(("reason", "valueInteger", 3)), "Parameters.parameter[reason]"),
        (
            params(("reason", "valueString", "x"), ("reason", "valueString", "y")),
            "Parameters.parameter[reason]",
        ),
        (params(("reason", "valueString", "x"), ("purpose", "valueCode", "BTG")), "Parameters.parameter"),
        (params(("reason", "valueString", "x"), ("purposeOfUse", "valueCode", "TREAT")), None),
        (
            params(
                ("reason", "valueString", "x"),
                ("purposeOfUse", "valueCoding", {"system": "urn:x", "code": "BTG"}),
            ),
            "Parameters.parameter[purposeOfUse]",
        ),
        (params(("reason", "valueString", "x"), ("minutes", "valueString", "10")), None),
        (params(("reason", "valueString", "x"), ("minutes", "valueBoolean", True)), None),
        (params(("reason", "valueString", "x"), ("minutes", "valueInteger", 100000)), None),
    ],
)
async def test_bad_parameters_are_400_naming_them(
    tmp_path: Path, body: dict[str, Any], expression: str | None
) -> None:
    async with running(tmp_path) as env:
        answer = await env.client.post("/Patient/p1/$break-glass", json=body, headers=env.doctor)
        assert answer.status_code == 400, answer.text
        issue = answer.json()["issue"][0]
        if expression:
            assert issue["expression"] == [expression]
        else:
            assert issue["expression"][0].startswith("Parameters.parameter[")
        bad_since = await env.client.get(
            "/$break-glass-report", params={"since": "yesterday"}, headers=env.officer
        )
        assert bad_since.status_code == 400 and bad_since.json()["issue"][0]["expression"] == ["since"]
        assert await breakglass.active_grants(env.runtime.store, "dr-who") == []


async def test_purpose_as_coding_or_codeable_concept(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        act_reason = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
        coding = ("purposeOfUse", "valueCoding", {"system": act_reason, "code": "BTG"})
        concept = (
            "purposeOfUse",
            "valueCodeableConcept",
            {"coding": [{"system": "urn:other", "code": "Z"}, {"system": act_reason}, {"code": "ETREAT"}]},
        )
        assert values((await break_glass(env, "p1", coding)).json())["purposeOfUse"]["code"] == "BTG"
        assert values((await break_glass(env, "p2", concept)).json())["purposeOfUse"]["code"] == "ETREAT"


async def test_report_of_a_grant_whose_user_has_no_fhir_user_names_the_subject_only(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as env:
        locum = env.token("locum-3", "clinician", "emergency_access")  # no fhirUser claim
        opened = await break_glass(env, "p2", headers=locum)
        assert opened.status_code == 200, opened.text
        report = await env.client.get("/$break-glass-report", headers=env.officer)
        [entry] = report.json()["parameter"]
        row = values({"parameter": entry["part"]})
        assert row["subject"] == "locum-3" and "fhirUser" not in row
        assert row["grant"] == values(opened.json())["grant"]


async def test_retries_until_the_webhook_comes_back(tmp_path: Path, webhook: Webhook) -> None:
    webhook.statuses = [500, 500]
    async with running(tmp_path, notify_channel="webhook", notify_webhook_url=webhook.url) as env:
        assert (await break_glass(env)).status_code == 200

        async def delivered() -> bool:
            return not await outbox.messages(env.runtime.store, pending_only=True)

        await until(delivered)
        [message] = await outbox.messages(env.runtime.store)
        assert message.attempts == 3 and message.delivered_at is not None and message.last_error is None
        assert len(webhook.received) == 1  # the two failed attempts were not taken as deliveries


async def test_channel_down_grant_still_opens_and_the_notification_waits(tmp_path: Path) -> None:
    with Webhook() as gone:
        url = gone.url  # a port that answered once and is now closed
    async with running(tmp_path, notify_channel="webhook", notify_webhook_url=url) as env:
        opened = await break_glass(env)
        assert opened.status_code == 200
        assert (await env.client.get("/Patient/p1", headers=env.doctor)).status_code == 200

        async def failed_twice() -> bool:
            [m] = await outbox.messages(env.runtime.store)
            return m.attempts >= 2

        await until(failed_twice)
        [message] = await outbox.messages(env.runtime.store, pending_only=True)
        assert message.delivered_at is None and message.last_error == "ConnectError"


async def test_audit_log_down_means_503_and_no_grant(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        async with env.runtime.store.transaction() as tx:
            await tx.conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
        refused = await break_glass(env)
        assert refused.status_code == 503 and refused.json()["issue"][0]["code"] == "transient"
        assert REASON not in refused.text
        assert await breakglass.active_grants(env.runtime.store, "dr-who") == []
        assert await outbox.messages(env.runtime.store) == []
        async with env.runtime.store.transaction() as tx:
            await tx.conn.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))


async def test_unjustified_grants_are_escalated_once_by_the_running_loop(
    tmp_path: Path, webhook: Webhook
) -> None:
    privacy = {
        "notify_channel": "webhook",
        "notify_webhook_url": webhook.url,
        "break_glass_justify_hours": 0.0001,
    }
    async with running(tmp_path, **privacy) as env:
        opened = values((await break_glass(env)).json())
        await until(lambda: any(n["event"] == breakglass.OVERDUE for n in webhook.received))
        await asyncio.sleep(0.2)  # several more rounds of the loop
        overdue = [n for n in webhook.received if n["event"] == breakglass.OVERDUE]
        assert [n["grant"] for n in overdue] == [opened["grant"]]
        report = await env.client.get("/$break-glass-report", headers=env.officer)
        row = values({"parameter": report.json()["parameter"][0]["part"]})
        assert row["overdue"] is True and "escalatedAt" in row and row["justified"] is False


async def test_follow_up_loop_survives_a_database_failure(tmp_path: Path) -> None:
    async with running(tmp_path, break_glass_justify_hours=0.0001) as env:
        async with env.runtime.store.transaction() as tx:
            await tx.conn.execute(text("ALTER TABLE break_glass_grants RENAME TO bgg_away"))
        await asyncio.sleep(0.15)  # rounds fail and are logged
        async with env.runtime.store.transaction() as tx:
            await tx.conn.execute(text("ALTER TABLE bgg_away RENAME TO break_glass_grants"))
        await break_glass(env)
        await until(lambda: env.services.dispatcher.running)

        async def escalated() -> bool:
            rows = await breakglass.report(env.runtime.store, settings=env.settings)
            return bool(rows) and rows[0]["escalatedAt"] is not None

        await until(escalated)
        assert await env.services.tick() == (0, 0)


async def test_breakglass_services_context_starts_and_stops_both_tasks(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/gw.db")
    runtime = Runtime(settings)
    audit_log = AuditLog(runtime.store, AuditSettings(spill_path=str(tmp_path / "spill")))
    await audit_log.start()
    try:
        async with breakglass_services(runtime, audit_log, interval=0.05) as services:
            await services.start()  # idempotent
            assert services.dispatcher.running
            await asyncio.sleep(0.1)  # the first round runs at once, migrations included
        assert not services.dispatcher.running and services.client.is_closed
        assert await breakglass.report(runtime.store) == []  # the tables exist: the loop migrated
    finally:
        await audit_log.stop()
        await runtime.stop()
