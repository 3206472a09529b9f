"""Record of authority end to end: Provenance for every write path, `$provenance` lineage, the
system-of-record rules, the conflict queue and its resolution, and the push of authoritative updates.

Real components throughout: the app on a fresh SQLite file with PHI encryption on, the HL7v2
receiver over `POST /hl7v2`, the outbox and its Dispatcher. The pipeline is the default one with
the provenance and authority stages in the order the lead wires them; the authority stage gets a
registry file or subscribers where a test needs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_gateway.api.app import create_app
from fhir_gateway.api.provenance import Lineage, build_provenance_router
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.auth.tokens import mint_token
from fhir_gateway.context import RequestContext
from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.pipeline import conflicts
from fhir_gateway.pipeline.authority import AUTHORITY_SYSTEM, AuthorityStage
from fhir_gateway.pipeline.authority_config import AuthoritySettings, Subscriber
from fhir_gateway.pipeline.registry import Registry
from fhir_gateway.pipeline.stage import Pipeline
from fhir_gateway.routing.outbox import Dispatcher, Message, messages
from tests.conftest import make_settings

PIPELINE = [
    "fhir_gateway.validation.stage:validation_stage",
    "fhir_gateway.pipeline.provenance:provenance_stage",
    "fhir_gateway.pipeline.authority:authority_stage",
    "fhir_gateway.privacy.labels:labels_stage",
]
V2 = "x-application/hl7-v2+er7"
PID = "PID|1||{mrn}^^^HOSP^MR||Doe^Jane||{dob}|F\r"
ADT = "MSH|^~\\&|{app}|HOSP|GW|HOSP|{ts}+0000||ADT^A08^ADT_A01|{cid}|P|2.5.1\rEVN|A08|{ts}+0000\r" + PID
ORU = (
    "MSH|^~\\&|LAB|HOSP|GW|HOSP|20240301101500+0100||ORU^R01|{cid}|P|2.5.1\r"
    + PID
    + "OBR|1|P1^EHR|F1^LAB|CBC^Blood count^L|||20240301080000||||||||||||||||||F\r"
    "OBX|1|NM|1234-5^Hb^LN||13.5|g/dL^g/dL^UCUM|12-16|N|||F|||20240301090000\r"
    "OBX|2|NM|6690-2^WBC^LN||7.1|10*3/uL^10*3/uL^UCUM|4-11|N|||F|||20240301090000\r"
)


Database = tuple[Path, str]  # a folder for rule files, and the database URL


@pytest.fixture
def db(tmp_path: Path, any_db_url: str) -> Database:
    """Every test here runs on SQLite and on PostgreSQL."""
    return tmp_path, any_db_url


def adt(
    cid: str, *, app: str = "ADT", dob: str = "19800215", mrn: str = "M1", ts: str = "20240301101500"
) -> str:
    return ADT.format(cid=cid, app=app, dob=dob, mrn=mrn, ts=ts)


def patient_id(mrn: str = "M1") -> str:
    return stable_id("Patient", "HOSP", mrn)


@asynccontextmanager
async def serve(
    db: Database, *, rules: str | None = None, config: AuthoritySettings | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    tmp_path, url = db
    settings = make_settings(url, pipeline=PIPELINE)
    app = create_app(settings)
    runtime: Runtime = app.state.runtime
    if rules is not None or config is not None:
        path = None
        if rules is not None:
            path = tmp_path / "authority.yaml"
            path.write_text(rules)
        stage = AuthorityStage(Registry.load(path), config or AuthoritySettings())
        stages = [stage if isinstance(s, AuthorityStage) else s for s in runtime.gateway.pipeline.stages]
        runtime.gateway.pipeline = Pipeline(stages)
    # The lead includes this router before the REST router; do the same here.
    app.router.routes[:0] = build_provenance_router(runtime, "/fhir").routes
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            client.headers["Accept"] = "application/fhir+json"
            yield client, runtime


async def provenance_of(client: httpx.AsyncClient, reference: str) -> list[dict[str, Any]]:
    r = await client.get("/fhir/Provenance", params={"target": reference, "_count": "100"})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]


def targets(provenance: list[dict[str, Any]]) -> list[str]:
    return sorted(t["reference"] for p in provenance for t in p["target"])


def codes(provenance: dict[str, Any]) -> list[str]:
    return [c["code"] for c in provenance["activity"]["coding"]]


async def send(client: httpx.AsyncClient, message: str) -> str:
    r = await client.post("/hl7v2", content=message.encode(), headers={"Content-Type": V2})
    assert r.status_code == 200, r.text
    return next(s for s in r.text.split("\r") if s.startswith("MSA")).split("|")[1]


# --- Provenance on every write path -------------------------------------------------------------


async def test_rest_create_update_delete_each_get_a_provenance_of_their_version(db: Database) -> None:
    async with serve(db) as (client, _):
        body = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}}
        created = (await client.post("/fhir/Observation", json=body)).json()
        ref = f"Observation/{created['id']}"
        await client.put(f"/fhir/{ref}", json={**created, "status": "amended"})
        assert (await client.delete(f"/fhir/{ref}")).status_code in (200, 204)
        found = await provenance_of(client, ref)
        assert targets(found) == [f"{ref}/_history/{n}" for n in (1, 2, 3)]
        by_version = {p["target"][0]["reference"][-1]: p for p in found}
        assert [codes(by_version[n])[0] for n in "123"] == ["CREATE", "UPDATE", "DELETE"]
        assert by_version["2"]["entity"] == [{"role": "revision", "what": {"reference": f"{ref}/_history/1"}}]
        agent = by_version["1"]["agent"][0]
        assert agent["type"]["coding"][0]["code"] == "author"
        assert agent["who"]["identifier"]["value"] == "anonymous"
        # The delete's Provenance carries the labels of what it deleted.
        assert {"code": "N"}.items() <= by_version["3"]["meta"]["security"][0].items()


async def test_a_transaction_gives_every_entry_its_provenance_and_links_the_clients(db: Database) -> None:
    async with serve(db) as (client, _):
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "identifier": {"system": "urn:example:batch", "value": "b-17"},
            "entry": [
                {
                    "fullUrl": "urn:uuid:0b0e7a1e-0000-4000-8000-000000000001",
                    "resource": {"resourceType": "Patient", "gender": "female"},
                    "request": {"method": "POST", "url": "Patient"},
                },
                {
                    "fullUrl": "urn:uuid:0b0e7a1e-0000-4000-8000-000000000002",
                    "resource": {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {"text": "weight"},
                        "subject": {"reference": "urn:uuid:0b0e7a1e-0000-4000-8000-000000000001"},
                    },
                    "request": {"method": "POST", "url": "Observation"},
                },
                {
                    "resource": {
                        "resourceType": "Provenance",
                        "target": [{"reference": "urn:uuid:0b0e7a1e-0000-4000-8000-000000000002"}],
                        "recorded": "2024-03-01T10:00:00Z",
                        "agent": [{"who": {"display": "bedside scale"}}],
                    },
                    "request": {"method": "POST", "url": "Provenance"},
                },
            ],
        }
        r = await client.post("/fhir", json=bundle)
        assert r.status_code == 200, r.text
        locations = [e["response"]["location"] for e in r.json()["entry"]]
        patient, observation, theirs = (loc.split("/_history")[0] for loc in locations)
        [for_patient] = await provenance_of(client, patient)
        [ours, client_sent] = sorted(
            await provenance_of(client, observation), key=lambda p: p["id"] != theirs.split("/")[1]
        )[::-1]
        assert client_sent["id"] == theirs.split("/")[1]
        assert await provenance_of(client, theirs) == []  # a Provenance gets no Provenance
        assert {"role": "source", "what": {"reference": theirs}} in ours["entity"]
        bundle_entity = {
            "role": "source",
            "what": {"identifier": bundle["identifier"], "display": "submitted Bundle"},
        }
        assert bundle_entity in ours["entity"] and bundle_entity in for_patient["entity"]


async def test_one_activity_of_a_transaction_is_one_provenance_unless_labels_or_patient_differ(
    db: Database,
) -> None:
    async with serve(db) as (client, _):
        restricted = [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]
        bodies = [
            {"resourceType": "Patient", "gender": "male"},
            {"resourceType": "Patient", "gender": "female"},
            {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}},
            {"resourceType": "Observation", "status": "final", "code": {"text": "height"}},
            {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"}},
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "note"},
                "meta": {"security": restricted},
            },
        ]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "identifier": {"system": "urn:example:batch", "value": "b-18"},
            "entry": [
                {"resource": b, "request": {"method": "POST", "url": b["resourceType"]}} for b in bodies
            ],
        }
        r = await client.post("/fhir", json=bundle)
        assert r.status_code == 200, r.text
        refs = [e["response"]["location"].split("/_history")[0] for e in r.json()["entry"]]
        [first_patient] = await provenance_of(client, refs[0])
        [second_patient] = await provenance_of(client, refs[1])
        [plain] = await provenance_of(client, refs[2])
        [labelled] = await provenance_of(client, refs[5])
        # Each Patient's Provenance is its own: it sits in that patient's compartment.
        assert first_patient["target"] == [{"reference": f"{refs[0]}/_history/1"}]
        assert second_patient["target"] == [{"reference": f"{refs[1]}/_history/1"}]
        # The three unlabelled Observations share one Provenance, naming the Bundle once.
        assert [t["reference"] for t in plain["target"]] == [f"{ref}/_history/1" for ref in refs[2:5]]
        assert [await provenance_of(client, ref) for ref in refs[3:5]] == [[plain], [plain]]
        assert plain["entity"] == [
            {"role": "source", "what": {"identifier": bundle["identifier"], "display": "submitted Bundle"}}
        ]
        # The restricted one keeps its own, as restricted as its target.
        assert labelled["target"] == [{"reference": f"{refs[5]}/_history/1"}]
        assert "R" in {c["code"] for c in labelled["meta"]["security"]}
        assert "R" not in {c["code"] for c in plain["meta"]["security"]}


async def test_hl7v2_message_provenance_links_the_message_and_its_evn_provenance(db: Database) -> None:
    async with serve(db) as (client, _):
        assert await send(client, adt("C1", app="REG")) == "AA"
        pid = patient_id()
        [evn, ours] = sorted(await provenance_of(client, f"Patient/{pid}"), key=lambda p: "policy" in p)
        assert ours["target"] == [{"reference": f"Patient/{pid}/_history/1"}]
        assert codes(ours) == ["CREATE", "transform"]
        assert ours["agent"][0]["who"]["identifier"] == {
            "system": "urn:fhir-gateway:source:hl7v2",
            "value": "REG^HOSP",
        }
        what = [e["what"] for e in ours["entity"]]
        assert {"reference": f"Provenance/{evn['id']}"} in what
        header = next(w for w in what if w.get("reference", "").startswith("MessageHeader/"))
        assert header["identifier"] == {"value": "C1"}
        assert ours["occurredDateTime"].startswith("2024-03-01")
        assert ours["policy"] == [
            "http://fhir-gateway.dev/fhir/authority/authority-v1#demographics/secondary"
        ]


async def test_provenance_lineage_crosses_versions_and_derivations(db: Database) -> None:
    async with serve(db) as (client, _):
        assert await send(client, ORU.format(cid="O1", mrn="M1", dob="19800215")) == "AA"
        observations = (await client.get("/fhir/Observation")).json()["entry"]
        obs = observations[0]["resource"]
        reports = (await client.get("/fhir/DiagnosticReport")).json()["entry"]
        report_id = reports[0]["resource"]["id"]

        r = await client.get(f"/fhir/Observation/{obs['id']}/$provenance", params={"depth": "0"})
        assert r.status_code == 200, r.text
        alone = r.json()
        assert {t["reference"] for e in alone["entry"] for t in e["resource"]["target"]} >= {
            f"Observation/{obs['id']}/_history/1"
        }
        r = await client.get(f"/fhir/Observation/{obs['id']}/$provenance")
        lineage = r.json()
        matched = [e["resource"] for e in lineage["entry"] if e["search"]["mode"] == "match"]
        included = [
            e["resource"]["resourceType"] for e in lineage["entry"] if e["search"]["mode"] == "include"
        ]
        derived = {t["reference"].split("/_history")[0] for p in matched for t in p["target"]}
        assert f"DiagnosticReport/{report_id}" in derived  # produced by the same ORU message
        assert "MessageHeader" in included
        assert len(matched) > len(alone["entry"])

        later = await client.get(
            f"/fhir/Observation/{obs['id']}/$provenance", params={"_since": "2999-01-01T00:00:00Z"}
        )
        assert later.json()["entry"] == []
        assert (await client.get(f"/fhir/Observation/{obs['id']}/$provenance?depth=9")).status_code == 400
        assert (await client.get(f"/fhir/Observation/{obs['id']}/$provenance?_since=soon")).status_code == 400
        assert (await client.get("/fhir/Observation/nope/$provenance")).status_code == 404


# --- authority ----------------------------------------------------------------------------------


def rules_with(rule: str) -> str:
    return f"""
version: test-v1
policy: http://example.org/authority
categories:
  demographics:
    match: [{{resource_types: [Patient]}}]
    authoritative: [{{channel: hl7v2, system: "ADT^*"}}]
    contributors: [{{channel: hl7v2}}, {{channel: rest}}]
    elements: [birthDate, name, gender]
    non_authoritative: {rule}
"""


async def read_patient(client: httpx.AsyncClient, pid: str) -> dict[str, Any]:
    r = await client.get(f"/fhir/Patient/{pid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def authority_tags(resource: dict[str, Any]) -> set[str]:
    return {t["code"] for t in resource["meta"].get("tag", []) if t["system"] == AUTHORITY_SYSTEM}


async def test_accept_secondary_keeps_the_system_of_records_values_and_logs_the_loser(db: Database) -> None:
    async with serve(db, rules=rules_with("accept-secondary")) as (client, runtime):
        pid = patient_id()
        assert await send(client, adt("A1")) == "AA"
        assert authority_tags(await read_patient(client, pid)) == {"sor"}
        current = await read_patient(client, pid)
        changed = {**current, "birthDate": "1999-09-09", "maritalStatus": {"text": "married"}}
        r = await client.put(f"/fhir/Patient/{pid}", json=changed)
        assert r.status_code == 200, r.text
        after = await read_patient(client, pid)
        assert after["birthDate"] == "1980-02-15"  # the SoR's value stays
        assert after["maritalStatus"] == {"text": "married"}  # a contribution outside its elements
        assert authority_tags(after) == {"sor", "secondary"}
        [logged] = await conflicts.open_conflicts(runtime.store, status="auto")
        assert (logged.reason, logged.proposed) == ("authority", {"birthDate": "1999-09-09"})
        prov = next(
            p
            for p in await provenance_of(client, f"Patient/{pid}")
            if p["target"][0]["reference"].endswith("/2")
        )
        assert "http://example.org/authority/test-v1#demographics/accept-secondary" in prov["policy"]
        assert f"urn:fhir-gateway:conflict:{logged.id}" in prov["policy"]
        assert "merge" in codes(prov)
        # The SoR itself changes the value: it wins, and the contributor's element survives.
        assert await send(client, adt("A2", dob="19800216", ts="20240302101500")) == "AA"
        assert (await read_patient(client, pid))["birthDate"] == "1980-02-16"


async def test_reject_rule_turns_a_contributors_change_into_an_hl7_error(db: Database) -> None:
    async with serve(db, rules=rules_with("reject")) as (client, _):
        assert await send(client, adt("A1")) == "AA"
        assert await send(client, adt("R1", app="REG", dob="19990909")) == "AE"
        assert (await read_patient(client, patient_id()))["birthDate"] == "1980-02-15"
        # The same data from the contributor changes nothing and is accepted.
        assert await send(client, adt("R2", app="REG")) == "AA"


async def test_queued_conflict_is_listed_and_resolved_through_the_gateway(db: Database) -> None:
    async with serve(db, rules=rules_with("queue")) as (client, runtime):
        pid = patient_id()
        assert await send(client, adt("A1")) == "AA"
        assert await send(client, adt("Q1", app="REG", dob="19990909")) == "AA"
        patient = await read_patient(client, pid)
        assert (patient["birthDate"], patient["meta"]["versionId"]) == ("1980-02-15", "1")

        queue = (await client.get("/fhir/$conflicts")).json()
        [task] = [e["resource"] for e in queue["entry"]]
        assert task["focus"] == {"reference": f"Patient/{pid}/_history/1"}
        assert task["input"] == [{"type": {"text": "birthDate"}, "valueString": '"1999-09-09"'}]
        conflict_id = task["id"].removeprefix("conflict-")

        choice = {"resourceType": "Parameters", "parameter": [{"name": "accept", "valueString": "birthDate"}]}
        r = await client.post(f"/fhir/$conflicts/{conflict_id}/$resolve", json=choice)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "completed"
        assert r.json()["output"][0]["valueReference"] == {"reference": f"Patient/{pid}/_history/2"}
        patient = await read_patient(client, pid)
        assert (patient["birthDate"], authority_tags(patient)) == ("1999-09-09", {"sor"})
        prov = next(
            p
            for p in await provenance_of(client, f"Patient/{pid}")
            if p["target"][0]["reference"].endswith("/2")
        )
        assert "http://example.org/authority/test-v1#demographics/resolved" in prov["policy"]
        assert {
            "role": "source",
            "what": {
                "identifier": {
                    "system": "urn:ietf:rfc:3986",
                    "value": f"urn:fhir-gateway:conflict:{conflict_id}",
                },
                "display": "submitted Bundle",
            },
        } in prov["entity"]

        assert (await client.get("/fhir/$conflicts")).json()["entry"] == []
        assert (await client.post(f"/fhir/$conflicts/{conflict_id}/$resolve", json=choice)).status_code == 409
        [closed] = await conflicts.open_conflicts(runtime.store, status="resolved")
        assert closed.decision == {"birthDate": "proposed"}


async def test_conflict_queue_is_for_reviewers_and_answers_bad_requests(db: Database) -> None:
    async with serve(db, rules=rules_with("queue")) as (client, runtime):
        assert await send(client, adt("A1")) == "AA"
        assert await send(client, adt("Q1", app="REG", dob="19990909")) == "AA"
        [row] = await conflicts.open_conflicts(runtime.store)
        clinician = mint_token(runtime.settings, sub="Practitioner/1", roles=["clinician"], scope="user/*.*")
        hdr = {"Authorization": f"Bearer {clinician}"}
        assert (await client.get("/fhir/$conflicts", headers=hdr)).status_code == 403
        keep = {"resourceType": "Parameters", "parameter": [{"name": "choice", "valueCode": "current"}]}
        assert (
            await client.post(f"/fhir/$conflicts/{row.id}/$resolve", json=keep, headers=hdr)
        ).status_code == 403
        assert (await client.get("/fhir/$conflicts?status=weird")).status_code == 400
        assert (await client.post("/fhir/$conflicts/999/$resolve", json=keep)).status_code == 404
        assert (
            await client.post(f"/fhir/$conflicts/{row.id}/$resolve", json={"resourceType": "Patient"})
        ).status_code == 400
        wrong = {"resourceType": "Parameters", "parameter": [{"name": "accept", "valueString": "gender"}]}
        assert (await client.post(f"/fhir/$conflicts/{row.id}/$resolve", json=wrong)).status_code == 422
        r = await client.post(f"/fhir/$conflicts/{row.id}/$resolve", json=keep)
        assert r.status_code == 200 and "output" not in r.json()
        assert (await read_patient(client, patient_id()))["meta"]["versionId"] == "1"
        listed = await client.get(
            "/fhir/$conflicts", params={"status": "resolved", "resource": f"Patient/{patient_id()}"}
        )
        assert listed.json()["total"] == 1


async def test_source_timestamps_settle_conflicts_between_contributors(db: Database) -> None:
    async with serve(db, rules=rules_with("accept-secondary")) as (client, runtime):
        pid = patient_id()
        assert await send(client, adt("T1", app="REG", ts="20240305100000")) == "AA"
        # An older message from another system arrives later: its value loses, and is logged.
        assert await send(client, adt("T2", app="OTHER", dob="19700101", ts="20240301100000")) == "AA"
        assert (await read_patient(client, pid))["birthDate"] == "1980-02-15"
        [auto] = await conflicts.open_conflicts(runtime.store, status="auto")
        assert (auto.reason, auto.proposed) == ("timestamp", {"birthDate": "1970-01-01"})
        # Same instant, different value: nobody can tell, so a reviewer decides.
        assert await send(client, adt("T3", app="THIRD", dob="19600101", ts="20240305100000")) == "AA"
        [tie] = await conflicts.open_conflicts(runtime.store)
        assert (tie.reason, tie.proposed) == ("timestamp-tie", {"birthDate": "1960-01-01"})
        # A newer message wins.
        assert await send(client, adt("T4", app="OTHER", dob="19700101", ts="20240306100000")) == "AA"
        assert (await read_patient(client, pid))["birthDate"] == "1970-01-01"


async def test_an_unchanged_resend_makes_no_version_and_no_provenance(db: Database) -> None:
    async with serve(db) as (client, _):
        pid = patient_id()
        assert await send(client, adt("U1", app="REG")) == "AA"
        before = await provenance_of(client, f"Patient/{pid}")
        assert await send(client, adt("U2", app="REG", ts="20240309101500")) == "AA"
        assert (await read_patient(client, pid))["meta"]["versionId"] == "1"
        ours = [p for p in await provenance_of(client, f"Patient/{pid}") if "policy" in p]
        assert len(ours) == len([p for p in before if "policy" in p]) == 1


async def test_authoritative_updates_are_pushed_and_retried_until_delivered(db: Database) -> None:
    config = AuthoritySettings(subscribers=(Subscriber(category="demographics", channel="sor-mpi"),))
    async with serve(db, config=config) as (client, runtime):
        assert await send(client, adt("P1")) == "AA"  # ADT^HOSP: the SoR for demographics
        assert await send(client, adt("P2", app="REG", dob="19990909")) == "AA"  # a contributor: no push
        pending = [m for m in await messages(runtime.store, pending_only=True) if m.channel == "sor-mpi"]
        assert [m.payload["resource"] for m in pending] == [f"Patient/{patient_id()}/_history/1"]
        assert pending[0].payload["category"] == "demographics"

        received: list[dict[str, Any]] = []

        class FlakySubscriber:  # the subscribed system: down for the first attempt
            down = True

            async def send(self, message: Message) -> None:
                if self.down:
                    self.down = False
                    from fhir_gateway.routing.outbox import DeliveryError

                    raise DeliveryError("HTTP 503")
                received.append(message.payload)

        clock = [1e10]
        dispatcher = Dispatcher(runtime.store, {"sor-mpi": FlakySubscriber()}, clock=lambda: clock[0])
        assert await dispatcher.deliver_due() == 0  # down: stays queued
        clock[0] += 3600
        assert await dispatcher.deliver_due() == 1  # back: caught up
        assert [p["resource"] for p in received] == [f"Patient/{patient_id()}/_history/1"]
        await asyncio.sleep(0)


async def test_a_deleted_resource_keeps_its_lineage_and_its_conflicts_cannot_be_applied(
    db: Database,
) -> None:
    async with serve(db, rules=rules_with("queue")) as (client, runtime):
        pid = patient_id()
        assert await send(client, adt("A1")) == "AA"
        assert await send(client, adt("Q1", app="REG", dob="19990909")) == "AA"
        [row] = await conflicts.open_conflicts(runtime.store)
        assert (await client.delete(f"/fhir/Patient/{pid}")).status_code == 422  # REST is no SoR here
        for bad in ({"name": "choice", "valueCode": "maybe"}, {"name": "other"}):
            body = {"resourceType": "Parameters", "parameter": [bad]}
            assert (await client.post(f"/fhir/$conflicts/{row.id}/$resolve", json=body)).status_code == 400
        empty = {"resourceType": "Parameters"}
        assert (await client.post(f"/fhir/$conflicts/{row.id}/$resolve", json=empty)).status_code == 400
        ctx = RequestContext.system("hl7v2", "ADT^HOSP")
        gateway = await runtime.ready_gateway()
        delete = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": f"Patient/{pid}"}}],
        }
        await gateway.submit(delete, ctx)  # the SoR deletes
        lineage = (await client.get(f"/fhir/Patient/{pid}/$provenance")).json()
        assert any(
            p["resource"]["activity"]["coding"][0]["code"] == "DELETE"
            for p in lineage["entry"]
            if p["search"]["mode"] == "match"
        )
        assert (await client.get("/fhir/$conflicts")).json()["total"] == 1  # still listed for the record
        take = {"resourceType": "Parameters", "parameter": [{"name": "choice", "valueCode": "proposed"}]}
        assert (await client.post(f"/fhir/$conflicts/{row.id}/$resolve", json=take)).status_code == 409


async def test_lineage_is_cut_with_a_warning_and_hides_sources_it_cannot_read(db: Database) -> None:
    async with serve(db) as (client, runtime):
        assert await send(client, adt("L1", app="REG")) == "AA"
        pid = patient_id()
        full = (await client.get(f"/fhir/Patient/{pid}/$provenance", params={"depth": "2"})).json()
        assert {e["resource"]["resourceType"] for e in full["entry"] if e["search"]["mode"] == "include"} == {
            "MessageHeader"
        }  # the EVN Provenance is a match of its own, not repeated as a source
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
                    "request": {"method": "POST", "url": "Observation"},
                    "fullUrl": "urn:uuid:0b0e7a1e-0000-4000-8000-000000000009",
                },
                {
                    "resource": {
                        "resourceType": "Provenance",
                        "target": [{"reference": "urn:uuid:0b0e7a1e-0000-4000-8000-000000000009"}],
                        "recorded": "2024-03-01T10:00:00Z",
                        "agent": [{"who": {"display": "device"}}],
                        "entity": [{"role": "source", "what": {"reference": "MessageHeader/gone"}}],
                    },
                    "request": {"method": "POST", "url": "Provenance"},
                },
            ],
        }
        r = await client.post("/fhir", json=bundle)
        obs = r.json()["entry"][0]["response"]["location"].split("/_history")[0]
        lineage = (await client.get(f"/fhir/{obs}/$provenance")).json()
        assert [e for e in lineage["entry"] if e["search"]["mode"] == "include"] == []
        gateway = await runtime.ready_gateway()
        cut = await Lineage(
            gateway, RequestContext(subject="a", roles=("admin",), scopes=("system/*.*",)), None, 50, limit=1
        ).build(f"Patient/{pid}", 1)
        assert cut["total"] == 1 and cut["entry"][-1]["search"]["mode"] == "outcome"
