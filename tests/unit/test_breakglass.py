"""Break-glass grants and the outbox against a real SQLite store and a real AuditLog.

The HTTP operations are in tests/integration/test_breakglass_api.py; here the module functions are
driven directly, with time injected, and the outbox channels talk to real local servers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select, text, update

from fhir_gateway.audit.config import AuditSettings
from fhir_gateway.audit.events import AuditSource, Interaction, break_glass_policy, rest_event
from fhir_gateway.audit.tables import audit_events
from fhir_gateway.audit.writer import AuditLog
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import BadRequest, Conflict, Forbidden, NotFound, ServiceUnavailable
from fhir_gateway.gateway import Gateway
from fhir_gateway.privacy import breakglass as bg
from fhir_gateway.privacy.consent_store import ConsentCache
from fhir_gateway.privacy.grants import grants_for
from fhir_gateway.privacy.tables import break_glass_grants
from fhir_gateway.routing import outbox
from fhir_gateway.routing.outbox import Backoff, DeliveryError, Dispatcher, Message
from fhir_gateway.settings import Settings
from fhir_gateway.store.engine import is_sqlite
from fhir_gateway.store.store import Store
from tests.conftest import make_settings, pg_schema

HOUR = 3600.0
T0 = 1_800_000_000.0  # a fixed "now" for the time-injected tests
DOCTOR = RequestContext(
    subject="dr-who",
    roles=("emergency_access",),
    fhir_user="Practitioner/who",
    jti="jti-1",
    request_id="req-1",
)
REASON = "Unconscious patient in ED, suspected overdose of Drug X"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def settings(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Settings]:
    privacy = {"break_glass_max_minutes": 90}
    if request.param == "sqlite":
        yield make_settings(f"sqlite+aiosqlite:///{tmp_path}/bg.db", privacy=privacy)
    else:
        async with pg_schema() as url:
            yield make_settings(url, privacy=privacy)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    s = Store(settings.database_url)
    await s.upgrade()
    gateway = Gateway(settings, s)
    system = RequestContext.system("cli")
    puts = [
        {
            "resource": {"resourceType": "Patient", "id": pid},
            "request": {"method": "PUT", "url": f"Patient/{pid}"},
        }
        for pid in ("p1", "p2", "gone")
    ]
    await gateway.submit({"resourceType": "Bundle", "type": "transaction", "entry": puts}, system)
    delete = [{"request": {"method": "DELETE", "url": "Patient/gone"}}]
    await gateway.submit({"resourceType": "Bundle", "type": "transaction", "entry": delete}, system)
    yield s
    await s.dispose()


@pytest.fixture
async def audit_log(store: Store, tmp_path: Path) -> AsyncIterator[AuditLog]:
    config = AuditSettings(
        flush_interval_ms=2,
        retry_max_seconds=0.05,
        record_now_timeout_seconds=1,
        spill_path=str(tmp_path / "spill"),
    )
    log = AuditLog(store, config, source=AuditSource(site="test", observer="gw"))
    await log.start()
    yield log
    await log.stop()


async def open_(store: Store, settings: Settings, audit_log: AuditLog, **kw: Any) -> bg.Grant:
    args: dict[str, Any] = {
        "ctx": DOCTOR,
        "patient_id": "p1",
        "reason": REASON,
        "purpose": None,
        "minutes": None,
        "now": T0,
    } | kw
    return await bg.open_grant(store, settings=settings, audit_log=audit_log, **args)


async def events(store: Store) -> list[dict[str, Any]]:
    async with store.reader() as conn:
        rows = (await conn.execute(select(audit_events.c.event).order_by(audit_events.c.seq))).all()
    return [orjson.loads(r.event) for r in rows]


def subtype(event: dict[str, Any]) -> str:
    return str(event["subtype"][0]["code"])


# --- opening ------------------------------------------------------------------------------------


async def test_open_grant_is_audited_durably_and_queues_the_notification(
    store: Store, settings: Settings, audit_log: AuditLog
) -> None:
    grant = await open_(store, settings, audit_log, purpose="BTG", minutes=30)
    assert grant.expires == T0 + 30 * 60 and grant.purpose == "BTG" and grant.patient == "Patient/p1"
    assert REASON not in repr(grant)  # the free text stays out of logs that print the grant
    # The start event is committed before open_grant returned (record_now), no flush needed.
    [start] = [e for e in await events(store) if subtype(e) == "110127"]
    assert start["type"]["code"] == "110113"
    assert start["agent"][0]["purposeOfUse"][0]["coding"][0]["code"] == "BTG"
    assert break_glass_policy(grant.grant_id) in start["agent"][0]["policy"]
    assert REASON not in orjson.dumps(start).decode()
    [message] = await outbox.messages(store)
    assert message.channel == "log" and message.delivered_at is None
    assert message.payload["grant"] == grant.grant_id and message.payload["patient"] == "Patient/p1"
    assert message.payload["subject"] == "dr-who" and message.payload["purpose"] == "BTG"
    assert REASON not in orjson.dumps(message.payload).decode()
    async with store.reader() as conn:
        stored = (await conn.execute(select(break_glass_grants.c.reason))).scalar_one()
    assert stored == REASON  # stored as given for the privacy officer


async def test_refusals_name_the_parameter_and_leave_no_grant(
    store: Store, settings: Settings, audit_log: AuditLog
) -> None:
    with pytest.raises(Forbidden):
        await open_(store, settings, audit_log, ctx=RequestContext(subject="nurse", roles=("nurse",)))
    with pytest.raises(Forbidden):
        await open_(store, settings, audit_log, ctx=RequestContext(subject=None, roles=("emergency_access",)))
    for kw, expression in [
        ({"reason": "   "}, bg.REASON_EXPR),
        ({"reason": None}, bg.REASON_EXPR),
        ({"reason": "x" * (bg.MAX_TEXT + 1)}, bg.REASON_EXPR),
        ({"purpose": "TREAT"}, bg.PURPOSE_EXPR),
        ({"minutes": 0}, bg.MINUTES_EXPR),
        ({"minutes": 91}, bg.MINUTES_EXPR),
    ]:
        with pytest.raises(BadRequest) as bad:
            await open_(store, settings, audit_log, **kw)
        assert bad.value.issues[0].expression == [expression]
        assert REASON not in bad.value.diagnostics
    with pytest.raises(BadRequest):
        await open_(store, settings, audit_log, patient_id="not a valid id!")
    for missing in ("nobody", "gone"):
        with pytest.raises(NotFound):
            await open_(store, settings, audit_log, patient_id=missing)
    assert await bg.active_grants(store, "dr-who", T0) == []
    assert await outbox.messages(store) == []
    await audit_log.flush(timeout=5)
    outcomes = [(subtype(e), e["outcome"]) for e in await events(store)]
    # The two role refusals and the two unknown patients are audited as failures.
    assert outcomes.count(("operation", "4")) == 2 and outcomes.count(("110127", "4")) == 2


async def test_default_minutes_is_the_configured_maximum(
    store: Store, settings: Settings, audit_log: AuditLog
) -> None:
    grant = await open_(store, settings, audit_log)
    assert grant.expires - grant.opened == 90 * 60 and grant.purpose == "ETREAT"


async def test_no_grant_when_the_audit_log_cannot_be_written(
    store: Store, settings: Settings, audit_log: AuditLog
) -> None:
    async with store.transaction() as tx:
        await tx.conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    with pytest.raises(ServiceUnavailable) as refused:
        await open_(store, settings, audit_log)
    assert refused.value.status == 503
    assert await bg.active_grants(store, "dr-who", T0) == []
    assert await outbox.messages(store) == []
    async with store.transaction() as tx:
        await tx.conn.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))


async def test_a_grant_that_cannot_be_stored_leaves_no_start_event_only_a_refusal(
    store: Store, settings: Settings, audit_log: AuditLog
) -> None:
    async with store.transaction() as tx:
        await tx.conn.execute(text("ALTER TABLE outbox RENAME TO outbox_away"))
    with pytest.raises(ServiceUnavailable):
        await open_(store, settings, audit_log)
    async with store.transaction() as tx:
        await tx.conn.execute(text("ALTER TABLE outbox_away RENAME TO outbox"))
    # The start event, the grant and its message are one transaction: none of them exists.
    assert await bg.active_grants(store, "dr-who", T0) == []
    await audit_log.flush(timeout=5)
    kinds = [(subtype(e), e["outcome"]) for e in await events(store)]
    assert kinds == [("110127", "8")]
    # The audit log itself carries on: the next grant is opened and audited.
    grant = await open_(store, settings, audit_log)
    assert [g.grant_id for g in await bg.active_grants(store, "dr-who", T0)] == [grant.grant_id]


async def test_a_grant_commits_with_its_start_event(
    store: Store, settings: Settings, audit_log: AuditLog
) -> None:
    """Concurrent openings share group commits, and each grant is there with its own event."""
    opened = await asyncio.gather(*(open_(store, settings, audit_log, patient_id=p) for p in ("p1", "p2")))
    starts = {
        e["entity"][1]["what"]["identifier"]["value"] for e in await events(store) if subtype(e) == "110127"
    }
    assert starts == {g.grant_id for g in opened}
    keys = await bg.active_grant_keys(store, "dr-who", T0 + 1)
    assert sorted(keys) == sorted((g.grant_id, g.patient_id) for g in opened)
    assert len(await outbox.messages(store)) == 2


# --- the per-request lookup and expiry ----------------------------------------------------------


async def test_active_grants_are_the_callers_own_and_end_at_expiry(
    store: Store, settings: Settings, audit_log: AuditLog
) -> None:
    grant = await open_(store, settings, audit_log, minutes=10)
    other = RequestContext(subject="dr-no", roles=("emergency_access",))
    await open_(store, settings, audit_log, ctx=other, patient_id="p2")
    assert [g.grant_id for g in await bg.active_grants(store, "dr-who", T0 + 1)] == [grant.grant_id]
    assert await bg.active_grants(store, "dr-who", T0 - 1) == []  # not before it opened
    assert await bg.active_grants(store, "dr-who", T0 + 10 * 60) == []  # expired at `expires`
    assert grant.active(T0) and not grant.active(T0 + 600)
    assert bg.status_of(grant, T0 + 600) == "expired"
    # A grant opened "in the past" is already over.
    old = await open_(store, settings, audit_log, minutes=5, now=time.time() - 3600)
    assert old.grant_id not in [g.grant_id for g in await bg.active_grants(store, "dr-who")]


async def test_close_expired_records_one_stop_event_per_grant(
    store: Store, settings: Settings, audit_log: AuditLog
) -> None:
    grant = await open_(store, settings, audit_log, minutes=10)
    assert await bg.close_expired(store, audit_log, T0 + 60) == 0
    assert await bg.close_expired(store, audit_log, T0 + 600) == 1
    assert await bg.close_expired(store, audit_log, T0 + 9999) == 0  # once
    await audit_log.flush(timeout=5)
    [stop] = [e for e in await events(store) if subtype(e) == "110138"]
    assert stop["recorded"].startswith("2027-01-15T08:") and stop["outcome"] == "0"
    assert break_glass_policy(grant.grant_id) in stop["agent"][0]["policy"]
    [row] = await bg.report(store, now=T0 + 9999)
    assert row["status"] == "closed" and row["closed"] == grant.expires


# --- justification, escalation, report ---------------------------------------------------------


async def test_justify_only_by_the_grants_subject_and_once(
    store: Store, settings: Settings, audit_log: AuditLog
) -> None:
    grant = await open_(store, settings, audit_log)
    for ctx, grant_id in [
        (RequestContext(subject="dr-no", roles=("emergency_access",)), grant.grant_id),
        (DOCTOR, "0" * 32),
        (DOCTOR, "../etc"),
    ]:
        with pytest.raises(NotFound):
            await bg.justify(store, ctx, grant_id, "needed it")
    for text_ in ("", None, "y" * (bg.MAX_TEXT + 1)):
        with pytest.raises(BadRequest) as bad:
            await bg.justify(store, DOCTOR, grant.grant_id, text_)
        assert bad.value.issues[0].expression == [bg.JUSTIFICATION_EXPR]
    done = await bg.justify(store, DOCTOR, grant.grant_id, " Patient was unconscious ", now=T0 + 100)
    assert done.justified_at == T0 + 100 and done.justification == "Patient was unconscious"
    with pytest.raises(Conflict):
        await bg.justify(store, DOCTOR, grant.grant_id, "again")


async def test_unjustified_grants_are_escalated_once_with_a_notification(
    store: Store, settings: Settings, audit_log: AuditLog
) -> None:
    late = await open_(store, settings, audit_log)
    justified = await open_(store, settings, audit_log, patient_id="p2")
    await bg.justify(store, DOCTOR, justified.grant_id, "was needed", now=T0 + HOUR)
    assert await bg.escalate_overdue(store, T0 + 23 * HOUR, settings) == 0  # not yet due
    assert await bg.escalate_overdue(store, T0 + 24 * HOUR, settings) == 1
    assert await bg.escalate_overdue(store, T0 + 48 * HOUR, settings) == 0  # once
    overdue = [m for m in await outbox.messages(store) if m.payload["event"] == bg.OVERDUE]
    assert [m.payload["grant"] for m in overdue] == [late.grant_id]
    report = {r["grant"]: r for r in await bg.report(store, settings=settings, now=T0 + 25 * HOUR)}
    assert report[late.grant_id]["overdue"] and report[late.grant_id]["escalatedAt"] == T0 + 24 * HOUR
    assert not report[late.grant_id]["justified"]
    assert report[justified.grant_id]["justified"] and not report[justified.grant_id]["overdue"]
    assert report[justified.grant_id]["justification"] == "was needed"
    assert report[late.grant_id]["reason"] == REASON  # the privacy officer sees the stated reason


async def test_report_counts_accesses_under_the_grant_and_filters_by_since(
    store: Store, settings: Settings, audit_log: AuditLog
) -> None:
    now = time.time()
    grant = await open_(store, settings, audit_log, now=now)
    older = await open_(store, settings, audit_log, patient_id="p2", now=now - 2 * HOUR)
    for n in range(3):  # reads made under the grant, as the PDP will record them
        await audit_log.record(
            rest_event(
                DOCTOR,
                audit_log.source,
                Interaction.READ,
                resources=[f"Observation/o{n}"],
                policies=[grant.policy],
            )
        )
    await audit_log.record(rest_event(DOCTOR, audit_log.source, Interaction.READ, resources=["Patient/p1"]))
    await audit_log.flush(timeout=5)
    rows = await bg.report(store, now=now)
    assert [r["grant"] for r in rows] == [grant.grant_id, older.grant_id]  # newest first
    assert rows[0]["accesses"] == 3 and rows[1]["accesses"] == 0
    assert rows[0]["status"] == "active" and rows[1]["status"] == "expired"
    assert [r["grant"] for r in await bg.report(store, now - HOUR)] == [grant.grant_id]
    assert await bg.report(store, now + HOUR) == []


# --- outbox -------------------------------------------------------------------------------------


def test_backoff_doubles_and_is_capped() -> None:
    backoff = Backoff(first=0.5, cap=3.0)
    assert [backoff.delay(n) for n in (0, 1, 2, 3, 4, 5)] == [0.5, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_channels_follow_the_settings(tmp_path: Path) -> None:
    plain = make_settings(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    client = httpx.AsyncClient()
    assert set(outbox.channels_from_settings(plain, client)) == {"log"}
    full = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/x.db",
        privacy={
            "notify_webhook_url": "http://127.0.0.1:9/hook",
            "smtp_host": "127.0.0.1",
            "smtp_from": "gw@example.org",
            "smtp_to": "privacy@example.org",
        },
    )
    assert set(outbox.channels_from_settings(full, client)) == {"log", "webhook", "smtp"}
    assert outbox.patient_hash(None) is None and len(outbox.patient_hash("Patient/p1") or "") == 16


class _Flaky:
    """A channel that fails `failures` times, then accepts; records what it got."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or DeliveryError("HTTP 503")
        self.got: list[Message] = []

    async def send(self, message: Message) -> None:
        if self.failures:
            self.failures -= 1
            raise self.error
        self.got.append(message)


async def _enqueue(store: Store, channel: str, n: int = 1) -> None:
    async with store.transaction() as tx:
        for i in range(n):
            await outbox.enqueue(tx, channel, {"event": "test", "n": i, "patient": "Patient/p1"})


async def test_dispatcher_retries_with_backoff_until_delivered(store: Store) -> None:
    clock = [T0]
    flaky = _Flaky(2)
    dispatcher = Dispatcher(
        store, {"webhook": flaky}, backoff=Backoff(first=10, cap=100), clock=lambda: clock[0]
    )
    async with store.transaction() as tx:
        await outbox.enqueue(tx, "webhook", {"event": "test"}, now=T0)
    assert await dispatcher.deliver_due() == 0
    [m] = await outbox.messages(store, pending_only=True)
    assert (m.attempts, m.next_attempt_at, m.last_error) == (1, T0 + 10, "HTTP 503")
    assert await dispatcher.deliver_due() == 0  # not due yet: nothing is attempted
    clock[0] = T0 + 10
    assert await dispatcher.deliver_due() == 0
    [m] = await outbox.messages(store, pending_only=True)
    assert (m.attempts, m.next_attempt_at) == (2, T0 + 30)  # doubled
    clock[0] = T0 + 30
    assert await dispatcher.deliver_due() == 1
    [m] = await outbox.messages(store)
    assert m.delivered_at == T0 + 30 and m.attempts == 3 and m.last_error is None
    assert len(flaky.got) == 1 and await outbox.messages(store, pending_only=True) == []


async def test_unconfigured_channels_timeouts_and_channel_bugs_keep_messages_queued(store: Store) -> None:
    class Slow:
        async def send(self, message: Message) -> None:
            await asyncio.sleep(5)

    dispatcher = Dispatcher(
        store,
        {"slow": Slow(), "buggy": _Flaky(1, RuntimeError("secret patient text"))},
        send_timeout=0.05,
    )
    await _enqueue(store, "webhook")
    await _enqueue(store, "slow")
    await _enqueue(store, "buggy")
    assert await dispatcher.deliver_due() == 0
    errors = sorted(m.last_error or "" for m in await outbox.messages(store, pending_only=True))
    assert errors == ["RuntimeError", "channel webhook not configured", "timeout"]


async def test_a_claimed_message_is_not_sent_twice_by_two_dispatchers(store: Store) -> None:
    gate = asyncio.Event()

    class Gated:
        def __init__(self) -> None:
            self.sent = 0

        async def send(self, message: Message) -> None:
            await gate.wait()
            self.sent += 1

    a, b = Gated(), Gated()
    await _enqueue(store, "log", 3)
    first = asyncio.create_task(Dispatcher(store, {"log": a}).deliver_due())
    await asyncio.sleep(0.05)  # the first has claimed all three and waits in send
    assert await Dispatcher(store, {"log": b}).deliver_due() == 0
    gate.set()
    assert await first == 3 and (a.sent, b.sent) == (3, 0)


async def test_running_dispatcher_delivers_on_wake_and_survives_a_database_outage(store: Store) -> None:
    flaky = _Flaky(0)
    calls = 0

    async def prepare() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ServiceUnavailable("database down")

    dispatcher = Dispatcher(store, {"log": flaky}, poll_seconds=0.05, batch_size=2, prepare=prepare)
    await dispatcher.start()
    await dispatcher.start()  # idempotent
    assert dispatcher.running
    try:
        await _enqueue(store, "log", 5)
        dispatcher.wake()
        for _ in range(200):
            if len(flaky.got) == 5:
                break
            await asyncio.sleep(0.01)
    finally:
        await dispatcher.stop()
        await dispatcher.stop()
    assert sorted(m.payload["n"] for m in flaky.got) == [0, 1, 2, 3, 4] and calls >= 3
    assert not dispatcher.running


async def test_log_channel_line_has_the_grant_and_a_patient_hash_only(
    store: Store, settings: Settings, audit_log: AuditLog, capsys: pytest.CaptureFixture[str]
) -> None:
    grant = await open_(store, settings, audit_log, now=time.time())
    assert await Dispatcher(store, {"log": outbox.LogChannel()}).deliver_due() == 1
    line = capsys.readouterr().out
    assert grant.grant_id in line and outbox.patient_hash("Patient/p1") in line
    assert "p1" not in line.replace(grant.grant_id, "").replace(outbox.patient_hash("Patient/p1") or "", "")
    assert REASON not in line and "dr-who" not in line


# --- smtp, against a real (tiny) SMTP server ----------------------------------------------------


class _SmtpHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: Any = self.server
        self.wfile.write(b"220 test ESMTP\r\n")
        data: list[bytes] = []
        in_data = False
        for raw in self.rfile:
            if in_data:
                if raw == b".\r\n":
                    in_data = False
                    server.mails.append(b"".join(data))
                    self.wfile.write(b"250 queued\r\n")
                else:
                    data.append(raw)
                continue
            verb = raw[:4].upper()
            if verb == b"DATA":
                if server.refuse:
                    self.wfile.write(b"554 no\r\n")
                    continue
                in_data, data = True, []
                self.wfile.write(b"354 go\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def smtp_server() -> Iterator[Any]:
    server: Any = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpHandler)
    server.daemon_threads = True
    server.mails, server.refuse = [], False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_smtp_channel_sends_a_mail_without_the_reason(
    store: Store, settings: Settings, audit_log: AuditLog, smtp_server: Any
) -> None:
    port = smtp_server.server_address[1]
    channel = outbox.SmtpChannel("127.0.0.1", port, "gw@example.org", "privacy@example.org", timeout=5)
    grant = await open_(store, settings, audit_log, channel="smtp", now=time.time())
    smtp_server.refuse = True
    dispatcher = Dispatcher(store, {"smtp": channel}, backoff=Backoff(first=0.001))
    assert await dispatcher.deliver_due() == 0
    [m] = await outbox.messages(store, pending_only=True)
    assert m.last_error == "SMTPDataError"
    smtp_server.refuse = False
    await asyncio.sleep(0.01)
    assert await dispatcher.deliver_due() == 1
    [mail] = smtp_server.mails
    body = mail.decode()
    assert "Subject: [fhir-gateway] break-glass-opened" in body and grant.grant_id in body
    assert "Patient/p1" in body and REASON not in body


async def test_smtp_channel_reports_an_unreachable_server() -> None:
    channel = outbox.SmtpChannel("127.0.0.1", 1, "a@b", "c@d", timeout=1)
    message = Message(1, "smtp", {"event": "x"}, T0, 0, T0)
    with pytest.raises(DeliveryError) as failed:
        await channel.send(message)
    assert str(failed.value) == "ConnectionRefusedError"


async def test_stop_cancels_a_pass_that_outlives_the_grace_period(store: Store) -> None:
    started = asyncio.Event()

    class Hung:
        async def send(self, message: Message) -> None:
            started.set()
            await asyncio.sleep(60)

    dispatcher = Dispatcher(store, {"log": Hung()}, poll_seconds=0.01)
    await _enqueue(store, "log")
    await dispatcher.start()
    await started.wait()
    await dispatcher.stop(grace=0.05)
    assert not dispatcher.running
    [message] = await outbox.messages(store, pending_only=True)  # still queued, sent again later
    assert message.delivered_at is None


async def test_the_pdp_opens_only_the_patients_of_the_callers_live_grants(
    store: Store, settings: Settings, audit_log: AuditLog
) -> None:
    caller = dataclasses.replace(DOCTOR, scopes=("user/*.rs",), purpose_of_use=("TREAT",))
    consents = ConsentCache(store, 5)
    before = await grants_for(caller, settings, consents)
    assert before.override == frozenset() and before.grant_ids == ()
    grant = await open_(store, settings, audit_log, now=time.time())
    after = await grants_for(caller, settings, consents)
    assert after.override == {"p1"} and after.grant_ids == (break_glass_policy(grant.grant_id),)
    other = dataclasses.replace(caller, subject="dr-no")
    assert (await grants_for(other, settings, consents)).override == frozenset()


async def test_a_grant_another_process_escalates_or_closes_meanwhile_is_not_done_twice(
    store: Store, settings: Settings, audit_log: AuditLog
) -> None:
    """Two server processes' follow-up loops meet the same due grant: both select it, the other
    process marks it first, and this one, waiting on the row, then finds it marked and neither
    notifies nor records a stop event for it (PostgreSQL; SQLite serialises whole write
    transactions, so there the second one selects nothing)."""
    if is_sqlite(settings.database_url):
        pytest.skip("SQLite takes the write lock before the select: the two cannot overlap")
    grant = await open_(store, settings, audit_log, minutes=10)
    other = Store(settings.database_url)  # the other process's connections
    mine_marks = (
        ("escalated_at", lambda: bg.escalate_overdue(store, T0 + 24 * HOUR, settings)),
        ("closed", lambda: bg.close_expired(store, audit_log, T0 + 24 * HOUR)),
    )
    try:
        for column, mine in mine_marks:
            async with other.transaction() as tx:
                await tx.conn.execute(
                    update(break_glass_grants)
                    .where(break_glass_grants.c.grant_id == grant.grant_id)
                    .values({column: T0 + 24 * HOUR})
                )
                task = asyncio.create_task(mine())
                await asyncio.sleep(0.5)
                assert not task.done()  # it selected the grant as due and waits for its row
            assert await task == 0
    finally:
        await other.dispose()
    await audit_log.flush(timeout=5)
    assert [m.payload["event"] for m in await outbox.messages(store)] == [bg.OPENED]
    assert not [e for e in await events(store) if subtype(e) == "110138"]
