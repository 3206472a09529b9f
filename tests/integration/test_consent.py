"""Consent scenarios, each checked through every read route: read, search (+ total), _revinclude,
history and $everything. Consents are created over REST like any resource, by an anonymous admin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_gateway.auth.tokens import mint_token
from fhir_gateway.privacy.consent import MASK_EXTENSION
from fhir_gateway.settings import Settings
from tests.conftest import make_settings, open_client

FHIR = {"Content-Type": "application/fhir+json"}
PRIVACY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
}
PURPOSE = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
RECIPIENT = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]
}


class Clinic:
    def __init__(self, client: httpx.AsyncClient, settings: Settings) -> None:
        self.c = client
        self.settings = settings
        self.ids: dict[str, str] = {}

    async def post(self, name: str, resource: dict[str, Any]) -> str:
        r = await self.c.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR)
        assert r.status_code == 201, r.text
        self.ids[name] = r.json()["id"]
        return self.ids[name]

    async def build(self) -> None:
        a = await self.post(
            "A", {"resourceType": "Patient", "name": [{"family": "Alpha"}], "address": [{"city": "Here"}]}
        )
        for name, text in (("pulse", "pulse"), ("hiv", "hiv-test")):
            await self.post(
                name,
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": text}]},
                    "subject": {"reference": f"Patient/{a}"},
                },
            )

    async def consent(self, provision: dict[str, Any], **extra: Any) -> str:
        consent = {
            "resourceType": "Consent",
            "status": "active",
            "scope": PRIVACY,
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{self.ids['A']}"},
            "dateTime": "2020-01-01",
            "policyRule": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
            },
            "provision": provision,
            **extra,
        }
        return await self.post(f"consent{len(self.ids)}", consent)

    def doctor(self, who: str = "Practitioner/good", purpose: str = "TREAT") -> dict[str, str]:
        token = mint_token(
            self.settings,
            sub=who,
            roles=["clinician"],
            scope="user/*.cruds",
            purpose=[purpose],
            fhir_user=who,
        )
        return {"Authorization": f"Bearer {token}"}

    async def sees(self, headers: dict[str, str]) -> set[str]:
        """Names of the data this caller gets, asserting every route agrees."""
        names = {v: k for k, v in self.ids.items()}
        a = self.ids["A"]
        read = {n for n in ("A", "pulse", "hiv") if (await self._read(n, headers)).status_code == 200}
        everything = (await self.c.get(f"/fhir/Patient/{a}/$everything", headers=headers)).json()
        data = {self.ids[n] for n in ALL}  # Consents are in the compartment too; they are not the point here
        via_everything = {
            names[e["resource"]["id"]] for e in everything.get("entry", []) if e["resource"]["id"] in data
        }
        obs = (
            await self.c.get("/fhir/Observation", params={"subject": f"Patient/{a}"}, headers=headers)
        ).json()
        via_search = {names[e["resource"]["id"]] for e in obs["entry"]}
        assert obs["total"] == len(via_search)
        rev = (
            await self.c.get("/fhir/Patient", params={"_revinclude": "Observation:subject"}, headers=headers)
        ).json()
        via_rev = {names[e["resource"]["id"]] for e in rev["entry"]}
        history = (await self.c.get("/fhir/Observation/_history", headers=headers)).json()
        via_history = {names[e["fullUrl"].rsplit("/", 1)[1]] for e in history["entry"]}
        assert via_search == via_history == read - {"A"}
        if "A" in read:
            assert via_everything == read and via_rev == read
        else:
            assert everything.get("resourceType") == "OperationOutcome" and via_rev <= read
        return read

    async def _read(self, name: str, headers: dict[str, str]) -> httpx.Response:
        res_type = "Patient" if name == "A" else "Observation"
        return await self.c.get(f"/fhir/{res_type}/{self.ids[name]}", headers=headers)


async def clinic_for(tmp_path: Path, **privacy: Any) -> AsyncIterator[Clinic]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/c.db", privacy={"consent_cache_seconds": 30, **privacy}
    )
    async for client in open_client(settings):
        clinic = Clinic(client, settings)
        await clinic.build()
        yield clinic


@pytest.fixture
async def clinic(tmp_path: Path) -> AsyncIterator[Clinic]:
    async for c in clinic_for(tmp_path):
        yield c


ALL = {"A", "pulse", "hiv"}


async def test_no_consent_default_permit(clinic: Clinic) -> None:
    assert await clinic.sees(clinic.doctor()) == ALL


async def test_deny_an_actor_hides_the_whole_record_from_that_actor_only(clinic: Clinic) -> None:
    await clinic.consent(
        {
            "type": "permit",
            "provision": [{"actor": [{"role": RECIPIENT, "reference": {"reference": "Practitioner/bad"}}]}],
        }
    )
    assert await clinic.sees(clinic.doctor("Practitioner/bad")) == set()
    assert await clinic.sees(clinic.doctor("Practitioner/good")) == ALL


async def test_nested_permit_by_purpose_inside_a_deny(clinic: Clinic) -> None:
    await clinic.consent({"type": "deny", "provision": [{"purpose": [{"system": PURPOSE, "code": "TREAT"}]}]})
    assert await clinic.sees(clinic.doctor(purpose="TREAT")) == ALL
    assert await clinic.sees(clinic.doctor(purpose="HPAYMT")) == set()


async def test_deny_by_code_hides_only_matching_resources(clinic: Clinic) -> None:
    await clinic.consent(
        {
            "type": "permit",
            "provision": [{"code": [{"coding": [{"system": "http://loinc.org", "code": "hiv-test"}]}]}],
        }
    )
    assert await clinic.sees(clinic.doctor()) == {"A", "pulse"}


async def test_deny_beats_permit_among_siblings_and_deeper_wins(clinic: Clinic) -> None:
    hiv = {"coding": [{"code": "hiv-test"}]}  # no system: matches the code in any system
    await clinic.consent(
        {
            "type": "permit",
            "provision": [
                {"type": "deny", "class": [{"code": "Observation"}]},
                {"type": "permit", "class": [{"code": "Observation"}], "code": [hiv]},
            ],
        }
    )
    assert await clinic.sees(clinic.doctor()) == {"A"}


async def test_a_deeper_exception_wins_over_its_parent(clinic: Clinic) -> None:
    pulse = {"coding": [{"system": "http://loinc.org", "code": "pulse"}]}
    await clinic.consent(
        {
            "type": "permit",
            "provision": [{"class": [{"code": "Observation"}], "provision": [{"code": [pulse]}]}],
        }
    )
    assert await clinic.sees(clinic.doctor()) == {"A", "pulse"}


async def test_expired_and_revoked_consents_stop_applying_at_once(clinic: Clinic) -> None:
    provision = {"type": "deny", "period": {"start": "2019-01-01", "end": "2020-01-01"}}
    await clinic.consent(provision)
    assert await clinic.sees(clinic.doctor()) == ALL  # expired
    cid = await clinic.consent({"type": "deny"})
    assert await clinic.sees(clinic.doctor()) == set()
    consent = (await clinic.c.get(f"/fhir/Consent/{cid}")).json()
    consent["status"] = "inactive"
    assert (await clinic.c.put(f"/fhir/Consent/{cid}", json=consent, headers=FHIR)).status_code == 200
    assert await clinic.sees(clinic.doctor()) == ALL  # revoked: the cache did not keep it alive


async def test_conflicting_consents_the_most_restrictive_wins(clinic: Clinic) -> None:
    await clinic.consent({"type": "permit"}, dateTime="2024-01-01")
    await clinic.consent({"type": "permit", "provision": [{"class": [{"code": "Observation"}]}]})
    assert await clinic.sees(clinic.doctor()) == {"A"}


async def test_granular_mask_removes_elements_and_labels_redacted(clinic: Clinic) -> None:
    await clinic.consent(
        {
            "type": "permit",
            "provision": [
                {
                    "class": [{"code": "Patient"}],
                    "extension": [{"url": MASK_EXTENSION, "valueString": "Patient.address"}],
                }
            ],
        }
    )
    h = clinic.doctor()
    assert await clinic.sees(h) == ALL
    patient = (await clinic.c.get(f"/fhir/Patient/{clinic.ids['A']}", headers=h)).json()
    assert "address" not in patient
    assert {"REDACTED"} <= {c["code"] for c in patient["meta"]["security"]}
    searched = (await clinic.c.get("/fhir/Patient", headers=h)).json()["entry"][0]["resource"]
    assert "address" not in searched
    original = (await clinic.c.get(f"/fhir/Patient/{clinic.ids['A']}")).json()  # the admin sees it all
    assert original["address"] == [{"city": "Here"}]


async def test_the_patient_is_not_bound_by_their_own_consent(clinic: Clinic) -> None:
    await clinic.consent({"type": "deny"})
    me = f"Patient/{clinic.ids['A']}"
    token = mint_token(
        clinic.settings,
        sub=me,
        roles=["clinician"],
        scope="patient/*.rs",
        patient=clinic.ids["A"],
        fhir_user=me,
    )
    assert await clinic.sees({"Authorization": f"Bearer {token}"}) == ALL


async def test_opt_in_jurisdiction_hides_patients_without_consent(tmp_path: Path) -> None:
    async for clinic in clinic_for(tmp_path, consent_default="deny"):
        assert await clinic.sees(clinic.doctor()) == set()
        await clinic.consent({"type": "permit"})
        assert await clinic.sees(clinic.doctor()) == ALL
        # a consent that does not speak to this request leaves the default in place
        await clinic.consent({"type": "permit", "period": {"start": "2000-01-01", "end": "2001-01-01"}})
        assert await clinic.sees(clinic.doctor()) == ALL
