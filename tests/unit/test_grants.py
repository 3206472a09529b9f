"""From a caller's token to the grants the policy decision point applies: scopes ∩ roles, patient
context, clearance, consents that can matter for this caller, break-glass grants."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fhir_gateway.context import RequestContext
from fhir_gateway.privacy import grants as grants_module
from fhir_gateway.privacy.access import ConsentSet, Grants
from fhir_gateway.privacy.consent import PatientConsent, Provision
from fhir_gateway.privacy.consent_store import ConsentCache
from fhir_gateway.privacy.grants import grants_for, token_grants
from fhir_gateway.settings import Settings
from fhir_gateway.store.store import Store
from tests.conftest import make_settings


class FixedConsents(ConsentCache):
    """The consents in force, given (the store-backed cache is covered by the integration tests)."""

    def __init__(self, store: Store, consents: dict[str, list[PatientConsent]]) -> None:
        super().__init__(store, 0)
        self.fixed = consents

    async def _load(self) -> dict[str, list[PatientConsent]]:
        return self.fixed


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(f"sqlite+aiosqlite:///{tmp_path}/g.db")


def grants(settings: Settings, ctx: RequestContext, consents: dict[str, list[PatientConsent]] | None = None):  # type: ignore[no-untyped-def]
    store = Store(settings.database_url)
    return asyncio.run(grants_for(ctx, settings, FixedConsents(store, consents or {})))


def doctor(**kwargs: object) -> RequestContext:
    base: dict[str, object] = {"subject": "d", "roles": ("clinician",), "purpose_of_use": ("TREAT",)}
    return RequestContext(**{**base, **kwargs})  # type: ignore[arg-type]


def test_scopes_and_roles_intersect(settings: Settings) -> None:
    g = grants(settings, doctor(scopes=("user/Observation.rs", "user/Patient.cruds", "openid")))
    assert g.types["read"] == {"Observation", "Patient"} and g.types["create"] == {"Patient"}
    nurse = grants(settings, doctor(roles=("nurse",), scopes=("user/*.cruds",)))
    assert nurse.types["delete"] == frozenset() and nurse.types["read"] is None


def test_a_scope_narrowed_by_a_query_grants_its_type_through_a_filter(settings: Settings) -> None:
    g = grants(
        settings,
        doctor(
            scopes=("user/Observation.rs?category=laboratory", "user/Observation.rs?category=vital-signs")
        ),
    )
    assert g.types["read"] == {"Observation"} and g.types["search"] == {"Observation"}
    assert [f.scope for f in g.narrowed["Observation"]] == [
        "user/Observation.rs?category=laboratory",
        "user/Observation.rs?category=vital-signs",
    ]


def test_a_scope_without_a_query_for_the_same_type_removes_the_narrowing(settings: Settings) -> None:
    g = grants(settings, doctor(scopes=("user/Observation.rs?category=laboratory", "user/Observation.r")))
    assert g.narrowed == {} and g.types["read"] == {"Observation"}
    wildcard = grants(settings, doctor(scopes=("user/Observation.rs?category=laboratory", "user/*.s")))
    assert wildcard.narrowed == {}


def test_callers_without_clearance_read_nothing(settings: Settings) -> None:
    unknown_role = grants(settings, doctor(roles=("janitor",), scopes=("user/*.rs",)))
    assert unknown_role.types["read"] == frozenset() and unknown_role.types["search"] == frozenset()
    researcher = grants(
        settings, doctor(roles=("researcher",), scopes=("user/*.rs",), purpose_of_use=("HRESCH",))
    )
    assert researcher.types["read"] == frozenset()  # de-identified data only: not through plain reads


def test_patient_context_only_with_patient_scopes(settings: Settings) -> None:
    assert grants(settings, doctor(scopes=("patient/*.rs",), patient="p1")).patient == "p1"
    assert grants(settings, doctor(scopes=("user/*.rs",), patient="p1")).patient is None


def test_only_consents_that_can_withhold_are_kept(settings: Settings) -> None:
    permit_only = PatientConsent("c1", "p1", Provision("permit"))
    deny = PatientConsent("c2", "p2", Provision("permit", children=(Provision("deny"),)))
    not_for_me = PatientConsent("c3", "p3", Provision("deny", actor_refs=frozenset({"Practitioner/x"})))
    found = grants(
        settings, doctor(scopes=("user/*.rs",)), {"p1": [permit_only], "p2": [deny], "p3": [not_for_me]}
    )
    assert [(p, c) for p, c, _ in found.consents] == [("p2", "c2")]
    assert found.consented == {"p1", "p2", "p3"} and not found.consent_default_deny


def test_opt_in_keeps_every_consent_and_the_patient_is_exempt_from_their_own(tmp_path: Path) -> None:
    opt_in = make_settings(f"sqlite+aiosqlite:///{tmp_path}/o.db", privacy={"consent_default": "deny"})
    permit_only = PatientConsent("c1", "p1", Provision("permit"))
    not_for_me = PatientConsent("c3", "p3", Provision("deny", actor_refs=frozenset({"Practitioner/x"})))
    me = doctor(scopes=("patient/*.rs",), patient="p1", fhir_user="Patient/p1")
    found = grants(opt_in, me, {"p1": [permit_only], "p3": [not_for_me]})
    assert {(p, t is None) for p, _, t in found.consents} == {("p1", False), ("p3", True)}
    assert found.consent_default_deny and found.consent_exempt == {"p1"}


def test_admins_are_not_bound_by_consents_and_feeds_by_nothing(settings: Settings) -> None:
    deny = PatientConsent("c2", "p2", Provision("deny"))
    admin = grants(settings, doctor(roles=("admin",), scopes=("system/*.*",)), {"p2": [deny]})
    assert admin.consents == () and admin.hidden == frozenset()
    feed = grants(settings, RequestContext.system("hl7v2"))
    assert feed.types["read"] is None and not feed.hidden and feed.patient is None


def test_the_token_part_is_compiled_once_per_caller_and_settings(settings: Settings, tmp_path: Path) -> None:
    """A client's repeated requests share one compiled Grants; any claim that matters, or other
    settings, compiles afresh (a memo that ignored one would hand a caller another's rights)."""
    first = token_grants(doctor(scopes=("user/*.rs",)), settings)
    assert token_grants(doctor(scopes=("user/*.rs",)), settings) is first
    narrower = token_grants(doctor(scopes=("user/Observation.rs",)), settings)
    assert narrower.types["read"] == {"Observation"} and first.types["read"] is None
    researcher = token_grants(doctor(roles=("researcher",), scopes=("user/*.rs",)), settings)
    assert researcher.types["read"] == frozenset()
    launched = token_grants(doctor(scopes=("patient/*.rs",), patient="p1"), settings)
    assert launched.patient == "p1"
    other = make_settings(f"sqlite+aiosqlite:///{tmp_path}/o.db", privacy={"break_glass_exceptions": []})
    assert token_grants(doctor(scopes=("user/*.rs",)), other) is not first


def test_the_token_grants_memo_is_bounded(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grants_module, "TOKEN_GRANTS_KEPT", 3)
    for n in range(10):
        token_grants(doctor(subject=f"d{n}", scopes=("user/*.rs",)), settings)
    assert len(grants_module._TOKEN_GRANTS) <= 3


def test_a_memo_entry_of_other_settings_under_a_reused_id_is_not_served(
    settings: Settings, tmp_path: Path
) -> None:
    ctx = doctor(scopes=("user/*.rs",))
    caller = (ctx.subject, ctx.scopes, ctx.roles, ctx.patient, ctx.purpose_of_use, ctx.fhir_user)
    stale = Grants.everything()
    other = make_settings(f"sqlite+aiosqlite:///{tmp_path}/o.db")
    grants_module._TOKEN_GRANTS[(id(settings), caller)] = (other, stale)
    assert token_grants(ctx, settings) is not stale


def test_consents_are_indexed_by_patient_and_compare_as_their_entries() -> None:
    deny, permit = Provision("deny"), Provision("permit")
    found = ConsentSet([("p1", "c1", deny), ("p2", "c2", None), ("p1", "c3", permit)])
    assert found.of("p1") == (("c1", deny), ("c3", permit)) and found.of("p9") == ()
    assert found == (("p1", "c1", deny), ("p2", "c2", None), ("p1", "c3", permit))
    assert found == ConsentSet(list(found)) and hash(found) == hash(ConsentSet(list(found)))
    assert found != ["not", "a", "consent set"] and len(found) == 3 and "c3" in repr(found)


def test_a_provision_period_bounds_how_long_a_resolution_holds(settings: Settings) -> None:
    """A deny that starts later: resolved now it says nothing, so the answer must be redone then."""
    timed = Provision("permit", children=(Provision("deny", period=(500.0, 900.0)),))
    in_force = {"p1": [PatientConsent("c1", "p1", timed)]}
    ctx = doctor(scopes=("user/*.rs",))
    now_answer, until = grants_module._resolve_consents(in_force, ctx, 100.0, default_deny=False)
    assert until == 500.0 and now_answer.consented == {"p1"}
    later, until = grants_module._resolve_consents(in_force, ctx, 600.0, default_deny=False)
    assert until == 900.0 and [(p, c) for p, c, _ in later.consents] == [("p1", "c1")]


def test_a_token_without_roles_is_limited_by_its_scopes_alone(settings: Settings) -> None:
    """A SMART client of an external identity provider: no roles claim, so no role narrows what
    its scopes allow (a wildcard is not narrowed by a type-specific scope after it either); with no
    role it has no clearance either, so nothing is readable."""
    smart = token_grants(
        doctor(roles=(), scopes=("user/*.c", "user/Patient.c", "user/Encounter.u")), settings
    )
    assert smart.types["create"] is None and smart.types["update"] == {"Encounter"}
    assert smart.types["delete"] == frozenset() and smart.types["read"] == frozenset()
