"""The `fhir-gateway` command line: token, config encrypt, db upgrade, ingest."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from typer.testing import CliRunner

from fhir_gateway.cli import app
from fhir_gateway.settings import generate_master_key, load_settings
from fhir_gateway.store.store import Store

runner = CliRunner()


def test_token_prints_just_a_jwt() -> None:
    result = runner.invoke(app, ["token", "--sub", "smoke", "--role", "admin", "--scope", "system/*.*"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.count(".") == 2 and " " not in token


def test_config_encrypt_round_trips_through_settings(tmp_path: Path) -> None:
    key = generate_master_key()
    result = runner.invoke(
        app, ["config", "encrypt", "s3cret-db-password"], env={"FHIR_GATEWAY_MASTER_KEY": key}
    )
    assert result.exit_code == 0, result.output
    sealed = result.stdout.strip()
    assert sealed.startswith("ENC[") and "s3cret" not in sealed
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"base_url: '{sealed}'\n")
    settings = load_settings(cfg, environ={"FHIR_GATEWAY_MASTER_KEY": key})
    assert settings.base_url == "s3cret-db-password"
    missing = runner.invoke(app, ["config", "encrypt", "x"], env={"FHIR_GATEWAY_MASTER_KEY": ""})
    assert missing.exit_code == 2
    assert runner.invoke(app, ["config", "genkey"]).stdout.strip()


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    result = runner.invoke(app, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["db", "upgrade", "--database-url", url]).exit_code == 0  # idempotent


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("prot: 1\n")
    result = runner.invoke(app, ["db", "upgrade", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "prot" in result.output


def test_ingest_files_and_folders(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ingest.db"
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "patient.json").write_bytes(orjson.dumps({"resourceType": "Patient", "id": "p1"}))
    (folder / "noid.json").write_bytes(orjson.dumps({"resourceType": "Organization", "name": "Acme"}))
    (folder / "collection.json").write_bytes(
        orjson.dumps(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [
                    {"resource": {"resourceType": "Patient", "id": "p2"}},
                    {"resource": {"resourceType": "Patient", "id": "p3"}},
                ],
            }
        )
    )
    (folder / "broken.json").write_bytes(b"{oops")
    (folder / "notes.txt").write_text("ignored")
    tx = tmp_path / "tx.json"
    tx.write_bytes(
        orjson.dumps(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}
                ],
            }
        )
    )
    result = runner.invoke(app, ["ingest", str(folder), str(tx), "--database-url", url])
    assert result.exit_code == 1  # one broken file
    assert "broken.json" in result.output
    assert "ingested 4 of 5 files" in result.output

    async def count() -> int:
        store = Store(url)
        try:
            _, total = await store.history(res_type="Patient", count=1)
            return total
        finally:
            await store.dispose()

    assert asyncio.run(count()) == 4
    again = runner.invoke(app, ["ingest", str(folder / "patient.json"), "--database-url", url])
    assert again.exit_code == 0


ADT = (
    "MSH|^~\\&|ADT|HOSP|GW|GW|20240101120000||ADT^A01|MSG{n}|P|2.5\r"
    "PID|1||12345^^^HOSP^MR||Doe^John||19800101|M\r"
    "PV1|1|I|W^1^1\r"
)


def test_ingest_hl7_files_through_the_receiver(tmp_path: Path) -> None:
    """v2 files take the receiver's path: mapped, idempotent, and failures land in the error queue."""
    url = f"sqlite+aiosqlite:///{tmp_path}/hl7.db"
    good = tmp_path / "adt.hl7"
    good.write_text(ADT.format(n=1) + "\n" + ADT.format(n=2))  # a batch file of two messages
    bad = tmp_path / "bad.hl7"
    bad.write_text("MSH|^~\\&|ADT|HOSP|GW|GW|20240101||ZZZ^Z99|X1|P|2.5\r")
    result = runner.invoke(app, ["ingest", str(good), str(bad), "--database-url", url])
    assert result.exit_code == 1, result.output
    assert "bad.hl7" in result.output and "adt.hl7" not in result.output
    again = runner.invoke(app, ["ingest", str(good), "--database-url", url])
    assert again.exit_code == 0, again.output

    async def patient_versions() -> list[int]:
        store = Store(url)
        try:
            versions, _ = await store.history(res_type="Patient", count=10)
            return [v.version_id for v in versions]
        finally:
            await store.dispose()

    assert asyncio.run(patient_versions()) == [1]  # same patient data twice: no empty new version
    errors = runner.invoke(app, ["hl7", "errors", "--database-url", url])
    assert errors.exit_code == 0 and "X1" in errors.output


def test_ingest_a_dicom_folder_and_a_broken_file(tmp_path: Path) -> None:
    """A folder of suffix-less Part 10 files becomes ImagingStudies; a broken file is one red line."""
    import shutil

    import pydicom

    source = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "77654033"
    folder = tmp_path / "study"
    shutil.copytree(source / "CR1", folder / "CR1")
    (folder / "broken").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")  # a preamble, then nothing
    url = f"sqlite+aiosqlite:///{tmp_path}/dicom.db"
    env = {"FHIR_GATEWAY_DICOM__BLOB_PATH": str(tmp_path / "blobs")}
    result = runner.invoke(app, ["ingest", str(folder), "--database-url", url], env=env)
    assert result.exit_code == 1, result.output
    assert "broken" in result.output and "CR1" not in result.output

    async def studies() -> int:
        store = Store(url)
        try:
            return (await store.history(res_type="ImagingStudy", count=10))[1]
        finally:
            await store.dispose()

    assert asyncio.run(studies()) == 1
    assert any((tmp_path / "blobs").rglob("*.dcm"))
