"""Settings: the layer order, substitution, encrypted secrets, and errors that name the key and its source."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fhir_gateway.settings import (
    DEFAULT_PIPELINE,
    DEV_ENCRYPTION_KEY,
    DEV_SIGNING_KEY,
    ENV_PREFIX,
    SecuritySettings,
    Settings,
    SettingsError,
    encrypt_value,
    generate_master_key,
    load_settings,
)

REAL_KEYS = "security:\n  signing_key: a-real-signing-key\n  encryption_key: a-real-encryption-key\n"
MASTER_KEY = generate_master_key()


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(cfg: Path | None, *, environ: dict[str, str], overrides: dict[str, Any] | None = None) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(cfg, environ=environ, overrides=overrides)
    return str(caught.value)


# --- defaults and the packaged default.yaml -----------------------------------------------------------------


def test_no_file_and_no_environment_gives_the_model_defaults() -> None:
    settings = load_settings(None, environ={})
    assert settings == Settings()
    assert (settings.environment, settings.host, settings.port) == ("development", "127.0.0.1", 8080)
    assert settings.database_url == "sqlite+aiosqlite:///./data/fhir-gateway.db"
    assert settings.mllp_port is None and settings.dicom_port is None and settings.dicom_ae_title == "FHIRGW"
    assert (
        settings.pipeline == DEFAULT_PIPELINE
        and DEFAULT_PIPELINE[0].endswith(":validation_stage")
        and settings.run_migrations
        and settings.search_handling == "lenient"
    )
    assert settings.security.signing_key.get_secret_value() == DEV_SIGNING_KEY
    assert settings.security.encryption_key.get_secret_value() == DEV_ENCRYPTION_KEY
    assert ENV_PREFIX == "FHIR_GATEWAY_"


def test_packaged_defaults_document_every_setting_but_the_development_secrets() -> None:
    text = (files("fhir_gateway") / "config" / "default.yaml").read_text(encoding="utf-8")
    packaged = yaml.safe_load(text)
    assert set(packaged) == set(Settings.model_fields)
    assert set(packaged["security"]) == set(SecuritySettings.model_fields) - {"signing_key", "encryption_key"}
    assert Settings.model_validate(packaged) == Settings()


def test_settings_are_frozen_and_hashable() -> None:
    settings = load_settings(None, environ={}, overrides={"pipeline": ["a.b:c"]})
    with pytest.raises(ValidationError):
        settings.port = 1
    assert settings.pipeline == ("a.b:c",)
    assert hash(settings) == hash(load_settings(None, environ={}, overrides={"pipeline": ["a.b:c"]}))


def test_the_development_encryption_key_is_a_usable_fernet_key() -> None:
    assert encrypt_value("x", DEV_ENCRYPTION_KEY).startswith("ENC[")


# --- files and overlays -------------------------------------------------------------------------------------


def test_yaml_file_values_deep_merge_over_the_defaults(tmp_path: Path) -> None:
    cfg = write(tmp_path, "gw.yaml", "port: 9000\nsecurity:\n  issuer: acme\npipeline: [a.b:c, d.e:f]\n")
    settings = load_settings(cfg, environ={})
    assert settings.port == 9000
    assert settings.security.issuer == "acme" and settings.security.audience == "fhir-gateway"
    assert settings.pipeline == ("a.b:c", "d.e:f")


def test_config_file_may_be_named_by_the_environment(tmp_path: Path) -> None:
    cfg = write(tmp_path, "gw.yaml", "port: 9001\n")
    assert load_settings(environ={"FHIR_GATEWAY_CONFIG": str(cfg)}).port == 9001
    assert load_settings(str(cfg), environ={}).port == 9001


def test_empty_config_file_changes_nothing(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "gw.yaml", "# nothing yet\n"), environ={}) == Settings()


def test_production_overlay_is_read_when_the_file_says_production(tmp_path: Path) -> None:
    cfg = write(tmp_path, "gateway.yaml", "environment: production\nport: 9000\nhost: 0.0.0.0\n")
    write(tmp_path, "gateway.production.yaml", REAL_KEYS + "port: 443\n")
    write(tmp_path, "gateway.staging.yaml", "port: 8443\n")
    settings = load_settings(cfg, environ={})
    assert (settings.environment, settings.port, settings.host) == ("production", 443, "0.0.0.0")
    assert settings.security.signing_key.get_secret_value() == "a-real-signing-key"


def test_overlay_follows_the_environment_variable_then_the_overrides(tmp_path: Path) -> None:
    cfg = write(tmp_path, "gateway.yaml", "environment: production\n")
    write(tmp_path, "gateway.staging.yaml", "port: 8443\n")
    write(tmp_path, "gateway.development.yaml", "port: 8000\n")
    by_env = load_settings(
        cfg, environ={"FHIR_GATEWAY_ENVIRONMENT": "staging"}, overrides={"environment": "development"}
    )
    assert (by_env.environment, by_env.port) == ("staging", 8443)
    by_flag = load_settings(cfg, environ={}, overrides={"environment": "development"})
    assert (by_flag.environment, by_flag.port) == ("development", 8000)


def test_missing_overlay_is_fine_and_staging_may_keep_development_keys(tmp_path: Path) -> None:
    cfg = write(tmp_path, "gateway.yaml", "environment: staging\n")
    settings = load_settings(cfg, environ={})
    assert settings.environment == "staging"
    assert settings.security.signing_key.get_secret_value() == DEV_SIGNING_KEY


def test_unknown_environment_is_refused_before_looking_for_an_overlay(tmp_path: Path) -> None:
    message = error_of(None, environ={"FHIR_GATEWAY_ENVIRONMENT": "../prod"})
    assert "environment: must be one of development, staging, production" in message
    assert "FHIR_GATEWAY_ENVIRONMENT" in message
    cfg = write(tmp_path, "gw.yaml", "environment: prod\n")
    assert str(cfg) in error_of(cfg, environ={})


# --- environment variables and overrides --------------------------------------------------------------------


def test_environment_variables_override_files_and_nest_with_double_underscore(tmp_path: Path) -> None:
    cfg = write(tmp_path, "gw.yaml", "port: 9000\ndatabase_url: sqlite+aiosqlite:///file.db\n")
    environ = {
        "FHIR_GATEWAY_PORT": "8081",
        "FHIR_GATEWAY_RUN_MIGRATIONS": "false",
        "FHIR_GATEWAY_PIPELINE": "[a.b:c, d.e:f]",
        "FHIR_GATEWAY_DATABASE_URL": "postgresql+asyncpg://gw@127.0.0.1:5432/gw",
        "FHIR_GATEWAY_SECURITY__SIGNING_KEY": "0123",
        "FHIR_GATEWAY_MLLP_PORT": "",
        "PATH": "/usr/bin",
    }
    settings = load_settings(cfg, environ=environ)
    assert settings.port == 8081 and settings.run_migrations is False
    assert settings.pipeline == ("a.b:c", "d.e:f")
    assert settings.database_url == "postgresql+asyncpg://gw@127.0.0.1:5432/gw"
    assert settings.security.signing_key.get_secret_value() == "0123"  # text settings are taken verbatim
    assert settings.mllp_port is None


def test_a_whole_section_variable_is_refined_by_nested_ones() -> None:
    environ = {"FHIR_GATEWAY_SECURITY": "{issuer: a, audience: b}", "FHIR_GATEWAY_SECURITY__ISSUER": "c"}
    security = load_settings(None, environ=environ).security
    assert (security.issuer, security.audience) == ("c", "b")


def test_command_line_overrides_beat_environment_variables_and_none_means_not_given() -> None:
    environ = {"FHIR_GATEWAY_PORT": "8081", "FHIR_GATEWAY_HOST": "0.0.0.0"}
    settings = load_settings(None, environ=environ, overrides={"port": 7000, "host": None})
    assert (settings.port, settings.host) == (7000, "0.0.0.0")


def test_unknown_prefixed_variables_are_named() -> None:
    environ = {
        "FHIR_GATEWAY_PROT": "1",
        "FHIR_GATEWAY_SECURITY__SIGNNG_KEY": "x",
        "FHIR_GATEWAY_PORT__X": "1",
    }
    message = error_of(None, environ=environ)
    for name in environ:
        assert name in message


def test_loader_variables_are_not_settings(tmp_path: Path) -> None:
    environ = {
        "FHIR_GATEWAY_MASTER_KEY": MASTER_KEY,
        "FHIR_GATEWAY_MASTER_KEY_FILE": str(tmp_path / "none"),
        "FHIR_GATEWAY_ENVIRONMENT": "staging",
    }
    assert load_settings(None, environ=environ).environment == "staging"


def test_unparsable_variable_is_named_by_validation() -> None:
    message = error_of(None, environ={"FHIR_GATEWAY_PORT": "[1"})
    assert message.startswith("port: Input should be a valid integer")
    assert message.endswith("(from FHIR_GATEWAY_PORT)")


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1))
def test_any_text_in_a_secret_variable_arrives_unchanged(secret: str) -> None:
    settings = load_settings(None, environ={"FHIR_GATEWAY_SECURITY__SIGNING_KEY": secret})
    assert settings.security.signing_key.get_secret_value() == secret


# --- ${VAR} substitution ------------------------------------------------------------------------------------


def test_variable_references_use_the_value_or_the_default(tmp_path: Path) -> None:
    text = (
        "host: ${GW_HOST:127.0.0.2}\nport: ${GW_PORT:9000}\n"
        "database_url: sqlite+aiosqlite:///${GW_DIR}/gw.db\npipeline: ['${GW_STAGE}']\n"
    )
    cfg = write(tmp_path, "gw.yaml", text)
    environ = {"GW_DIR": "/srv", "GW_PORT": "", "GW_STAGE": "a.b:c"}
    settings = load_settings(cfg, environ=environ)
    assert (settings.host, settings.port) == ("127.0.0.2", 9000)  # unset and empty both take the default
    assert settings.database_url == "sqlite+aiosqlite:////srv/gw.db"
    assert settings.pipeline == ("a.b:c",)
    assert load_settings(cfg, environ={**environ, "GW_HOST": "10.0.0.1"}).host == "10.0.0.1"


def test_unset_variable_without_default_names_the_key_the_variable_and_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, "gw.yaml", "security:\n  jwks_url: ${IDP_JWKS}\n")
    message = error_of(cfg, environ={})
    assert message.startswith("security.jwks_url: environment variable IDP_JWKS is not set")
    assert str(cfg) in message
    listed = write(tmp_path, "list.yaml", "pipeline: [a.b:c, '${STAGE}']\n")
    assert error_of(listed, environ={}).startswith("pipeline[1]: environment variable STAGE")


# --- ENC[...] secrets ---------------------------------------------------------------------------------------


def test_encrypted_values_round_trip_with_the_master_key_from_environment_or_file(tmp_path: Path) -> None:
    sealed = encrypt_value("s3cret-signing-key", MASTER_KEY)
    assert sealed.startswith("ENC[") and "s3cret" not in sealed
    cfg = write(tmp_path, "gw.yaml", f"security:\n  signing_key: '{sealed}'\npipeline: ['{sealed}']\n")
    by_env = load_settings(cfg, environ={"FHIR_GATEWAY_MASTER_KEY": MASTER_KEY})
    assert by_env.security.signing_key.get_secret_value() == "s3cret-signing-key"
    assert by_env.pipeline == ("s3cret-signing-key",)
    key_file = write(tmp_path, "master.key", MASTER_KEY + "\n")
    by_file = load_settings(cfg, environ={"FHIR_GATEWAY_MASTER_KEY_FILE": str(key_file)})
    assert by_file == by_env


def test_encrypted_override_is_decrypted_without_touching_the_callers_mapping() -> None:
    overrides = {"security": {"signing_key": encrypt_value("from-a-flag", MASTER_KEY.encode())}}
    settings = load_settings(None, environ={"FHIR_GATEWAY_MASTER_KEY": MASTER_KEY}, overrides=overrides)
    assert settings.security.signing_key.get_secret_value() == "from-a-flag"
    assert overrides["security"]["signing_key"].startswith("ENC[")


@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_any_text_survives_encryption(plaintext: str) -> None:
    settings = load_settings(
        None,
        environ={"FHIR_GATEWAY_MASTER_KEY": MASTER_KEY},
        overrides={"base_url": encrypt_value(plaintext, MASTER_KEY)},
    )
    assert settings.base_url == plaintext


def test_wrong_or_missing_master_key_names_the_key_and_never_the_secret(tmp_path: Path) -> None:
    cfg = write(tmp_path, "gw.yaml", f"security:\n  signing_key: '{encrypt_value('s3cret', MASTER_KEY)}'\n")
    wrong = error_of(cfg, environ={"FHIR_GATEWAY_MASTER_KEY": generate_master_key()})
    assert wrong.startswith(f"security.signing_key (from {cfg}): cannot decrypt")
    not_fernet = error_of(cfg, environ={"FHIR_GATEWAY_MASTER_KEY": "not-a-key"})
    assert "security.signing_key" in not_fernet and "cannot decrypt" in not_fernet
    missing = error_of(cfg, environ={})
    assert "security.signing_key" in missing and "FHIR_GATEWAY_MASTER_KEY" in missing
    unreadable = error_of(cfg, environ={"FHIR_GATEWAY_MASTER_KEY_FILE": str(tmp_path / "absent.key")})
    assert "security.signing_key" in unreadable and "absent.key" in unreadable
    for message in (wrong, not_fernet, missing, unreadable):
        assert "s3cret" not in message


def test_damaged_encrypted_value_is_an_error() -> None:
    environ = {"FHIR_GATEWAY_MASTER_KEY": MASTER_KEY, "FHIR_GATEWAY_BASE_URL": "ENC[abc]"}
    message = error_of(None, environ=environ)
    assert message.startswith("base_url (from FHIR_GATEWAY_BASE_URL): cannot decrypt")


def test_encrypting_with_a_bad_master_key_says_how_to_make_one() -> None:
    with pytest.raises(SettingsError, match="config genkey"):
        encrypt_value("x", "too-short")


# --- validation errors --------------------------------------------------------------------------------------


def test_unknown_keys_are_named_with_their_dotted_path_and_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, "gw.yaml", "prot: 1\nsecurity:\n  signng_key: x\n")
    message = error_of(cfg, environ={})
    assert f"prot: unknown key (from {cfg})" in message
    assert f"security.signng_key: unknown key (from {cfg})" in message


def test_bad_values_name_every_key_and_their_source_but_not_the_value(tmp_path: Path) -> None:
    cfg = write(tmp_path, "gw.yaml", "port: hush-hush\nsecurity:\n  token_minutes: 0\n")
    message = error_of(cfg, environ={"FHIR_GATEWAY_SEARCH_HANDLING": "sloppy"})
    problems = message.split("; ")
    not_an_int = "Input should be a valid integer, unable to parse string as an integer"
    assert f"port: {not_an_int} (from {cfg})" in problems
    assert f"security.token_minutes: Input should be greater than 0 (from {cfg})" in problems
    assert (
        "search_handling: Input should be 'lenient' or 'strict' (from FHIR_GATEWAY_SEARCH_HANDLING)"
        in problems
    )
    assert "hush-hush" not in message


def test_a_section_given_as_a_scalar_is_named(tmp_path: Path) -> None:
    cfg = write(tmp_path, "gw.yaml", "security: none\n")
    assert error_of(cfg, environ={}).startswith("security: Input should be a valid dictionary")
    replaced = load_settings(cfg, environ={"FHIR_GATEWAY_SECURITY__ISSUER": "me"})
    assert replaced.security.issuer == "me"


def test_field_checks(tmp_path: Path) -> None:
    assert load_settings(None, environ={}, overrides={"log_level": "debug"}).log_level == "DEBUG"
    assert error_of(None, environ={}, overrides={"log_level": "chatty"}) == (
        "log_level: must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG (from command line)"
    )
    assert error_of(None, environ={}, overrides={"default_page_size": 600}) == (
        "default_page_size must not exceed max_page_size"
    )
    assert "dicom_ae_title" in error_of(None, environ={}, overrides={"dicom_ae_title": "X" * 17})


def test_malformed_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    cfg = write(tmp_path, "gw.yaml", "port: 8080\nsecurity: [a\n")
    message = error_of(cfg, environ={})
    assert message.startswith(f"{cfg}: line 3: not valid YAML")
    control = write(tmp_path, "bell.yaml", "port: \x07\n")
    assert error_of(control, environ={}) == f"{control}: not valid YAML"


def test_a_file_that_is_not_a_mapping_or_not_there_is_an_error(tmp_path: Path) -> None:
    listed = write(tmp_path, "list.yaml", "- port\n")
    assert error_of(listed, environ={}).startswith(f"{listed}: the top level must be a mapping")
    absent = tmp_path / "absent.yaml"
    assert error_of(absent, environ={}).startswith(f"{absent}: cannot read the config file")


# --- production safety --------------------------------------------------------------------------------------


def test_production_refuses_the_development_keys() -> None:
    message = error_of(None, environ={"FHIR_GATEWAY_ENVIRONMENT": "production"})
    assert "production refuses the development signing key: set security.signing_key" in message
    assert "production refuses the development encryption key: set security.encryption_key" in message
    environ = {"FHIR_GATEWAY_ENVIRONMENT": "production", "FHIR_GATEWAY_SECURITY__SIGNING_KEY": "real"}
    assert "signing key" not in error_of(None, environ=environ)


def test_production_accepts_real_keys() -> None:
    environ = {
        "FHIR_GATEWAY_ENVIRONMENT": "production",
        "FHIR_GATEWAY_SECURITY__SIGNING_KEY": "a-real-signing-key",
        "FHIR_GATEWAY_SECURITY__ENCRYPTION_KEY": generate_master_key(),
    }
    assert load_settings(None, environ=environ).environment == "production"


def test_hl7_timezone_is_an_iana_zone() -> None:
    chicago = load_settings(None, environ={}, overrides={"hl7": {"timezone": "America/Chicago"}}).hl7.zone()
    assert chicago is not None and str(chicago) == "America/Chicago"
    assert load_settings(None, environ={}).hl7.zone() is None
    assert "hl7.timezone" in error_of(None, environ={}, overrides={"hl7": {"timezone": "Mars/Olympus"}})
