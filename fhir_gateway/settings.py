"""Server configuration: one frozen `Settings` built from layers, every problem a `SettingsError`.

Layers, lowest precedence first (mappings deep-merge, anything else replaces):

1. the model defaults below;
2. the packaged `fhir_gateway/config/default.yaml` (the same values, documented);
3. the config file (`load_settings(path)`, else the file named by `FHIR_GATEWAY_CONFIG`);
4. its environment overlay `<stem>.<environment><suffix>` beside it (`gateway.production.yaml`);
5. `FHIR_GATEWAY_*` variables, nesting with `__` (`FHIR_GATEWAY_SECURITY__SIGNING_KEY`);
6. `overrides` (command-line flags; `None` means "flag not given").

The environment is decided before the overlay is read: `FHIR_GATEWAY_ENVIRONMENT`, else
`overrides["environment"]`, else the files' `environment`, else development.

YAML strings may hold `${VAR}` / `${VAR:default}` (the default applies when VAR is unset or empty).
Any string of the form `ENC[<fernet token>]` is decrypted with the master key from
`FHIR_GATEWAY_MASTER_KEY` or the file named by `FHIR_GATEWAY_MASTER_KEY_FILE`; `encrypt_value` and
`generate_master_key` make such values. Error messages name dotted keys, files and variables, never
a secret: pydantic's full error text echoes the inputs, so messages are rebuilt from its parts.

Exceptions: `SettingsError(ValueError)` for every configuration problem.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from importlib.resources import files
from pathlib import Path
from types import UnionType
from typing import Any, Literal, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from cryptography.fernet import Fernet, InvalidToken
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from fhir_gateway.audit.config import AuditSettings
from fhir_gateway.crypto.config import CryptoSettings
from fhir_gateway.pipeline.authority_config import AuthoritySettings

ENV_PREFIX = "FHIR_GATEWAY_"
CONFIG_VAR = f"{ENV_PREFIX}CONFIG"
ENVIRONMENT_VAR = f"{ENV_PREFIX}ENVIRONMENT"
MASTER_KEY_VAR = f"{ENV_PREFIX}MASTER_KEY"
MASTER_KEY_FILE_VAR = f"{ENV_PREFIX}MASTER_KEY_FILE"
_PACKAGED_DEFAULTS = "fhir_gateway/config/default.yaml"
# Variables that steer loading itself rather than naming a setting.
_LOADER_VARS = frozenset({CONFIG_VAR, ENVIRONMENT_VAR, MASTER_KEY_VAR, MASTER_KEY_FILE_VAR})

# Public development values so that a fresh clone runs with no setup; production refuses both.
# The encryption key is a valid Fernet key: the URL-safe base64 of "fhir-gateway-dev-key-not-for-use".
DEV_SIGNING_KEY = "fhir-gateway-development-signing-key-not-for-production"
DEV_ENCRYPTION_KEY = "Zmhpci1nYXRld2F5LWRldi1rZXktbm90LWZvci11c2U="

Environment = Literal["development", "staging", "production"]
ENVIRONMENTS: tuple[str, ...] = get_args(Environment)
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")

_VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")
_ENCRYPTED = re.compile(r"ENC\[([^\]]+)\]")
# Settings of these types take an environment variable verbatim, so a key like `0123` or `yes` stays text.
_TEXT_TYPES = (str, SecretStr)

Loc = tuple[str | int, ...]


class SettingsError(ValueError):
    """A configuration problem; the message names the key(s) and, where known, where the value came from."""


class _Section(BaseModel):
    """Base of every settings model: frozen, and a misspelt key is an error rather than silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SecuritySettings(_Section):
    signing_key: SecretStr = SecretStr(DEV_SIGNING_KEY)  # HS256 key for tokens minted by `fhir-gateway token`
    encryption_key: SecretStr = SecretStr(DEV_ENCRYPTION_KEY)  # Fernet key protecting PHI at rest
    issuer: str = "fhir-gateway"
    audience: str = "fhir-gateway"
    token_minutes: int = Field(default=60, gt=0)
    jwks_url: str | None = None  # the IdP's key set; production tokens are verified against it
    algorithms: tuple[str, ...] = ("RS256", "ES256")  # accepted for IdP tokens (RS*/PS*/ES* only)
    allow_hs256: bool = False  # HS256 (signing_key) tokens outside development
    clock_skew_seconds: int = Field(default=60, ge=0, le=600)
    roles_claim: str = "roles"  # claim holding the roles; a dotted path such as realm_access.roles works
    jwks_min_refresh_seconds: float = Field(
        default=30.0, ge=0
    )  # refetch on an unknown kid at most this often
    jwks_max_age_seconds: float = Field(default=3600.0, gt=0)
    token_cache_seconds: float = Field(default=60.0, ge=0)  # verified tokens remembered (0: off)
    authorization_endpoint: str | None = None  # advertised in .well-known/smart-configuration
    token_endpoint: str | None = None
    smart_capabilities: tuple[str, ...] | None = None
    # Development and tests only: a request without a token acts as an unrestricted administrator.
    # Off by default, and production refuses it.
    allow_anonymous: bool = False


class Hl7Settings(_Section):
    """The HL7v2 receiver (MLLP listener and `POST /hl7v2`)."""

    max_frame_bytes: int = Field(default=4 * 1024 * 1024, gt=0)  # larger MLLP frames are refused (AR)
    idle_timeout_seconds: float = Field(default=300.0, gt=0)  # an MLLP connection silent this long is closed
    tls_certfile: str | None = None  # PEM certificate; MLLP over TLS when set together with tls_keyfile
    tls_keyfile: str | None = None
    # Messages waiting at the same moment (several connections) are committed together, each in its own
    # savepoint and each ACKed after that commit; at most this many per commit (store/group.py).
    group_commit_max_messages: int = Field(default=64, ge=1)
    # The senders' local time zone (IANA name, e.g. "America/Chicago"), for times that carry no UTC
    # offset when MSH-7 has none either: most v2 feeds send local time. Unset, such times keep only
    # their date (FHIR needs a zone with a time, and a guessed one would shift every result).
    timezone: str | None = None
    # Map messages in a child process (ingest/hl7v2/mapper.py), so that ingest uses a second core;
    # only on a machine with more than one. Off: everything runs in the server's process.
    mapping_process: bool = True

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"hl7.timezone: {value!r} is not an IANA time zone") from None
        return value

    def zone(self) -> tzinfo | None:
        return ZoneInfo(self.timezone) if self.timezone else None


class DicomSettings(_Section):
    """The DICOM receivers (STOW-RS, C-STORE SCP) and the instance blob store."""

    blob_path: str = "./data/dicom"  # where received instances are kept, content-addressed
    dicomweb_base: str | None = (
        None  # public DICOMweb base for ImagingStudy endpoints; null = from the request
    )


class PrivacySettings(_Section):
    """Consent and break-glass policy (DESIGN.md "Privacy model")."""

    label_rules: str | None = None  # a label rule file; null = the packaged labels-v1
    clearance_rules: str | None = None  # a clearance rule file; null = the packaged clearance-v1
    # With no active patient-privacy Consent: permit (opt-out jurisdictions) or deny (opt-in).
    consent_default: Literal["permit", "deny"] = "permit"
    consent_cache_seconds: float = Field(default=2.0, ge=0, le=60)  # how stale consent decisions may be
    break_glass_max_minutes: int = Field(default=60, ge=1, le=24 * 60)
    break_glass_justify_hours: float = Field(default=24.0, gt=0)  # unjustified grants escalate after this
    # Labels a break-glass grant does NOT open (42 CFR Part 2 substance-use records stay protected).
    break_glass_exceptions: tuple[str, ...] = ("SUD", "ETHUD", "OPIOIDUD")
    notify_channel: Literal["log", "webhook", "smtp", "nats", "amqp"] = "log"
    notify_webhook_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_from: str | None = None
    smtp_to: str | None = None
    # NATS JetStream (routing/brokers.py): delivered = the stream acknowledged storing it (PubAck).
    nats_url: str | None = None  # e.g. nats://127.0.0.1:4222; the `nats` channel exists when set
    nats_subject: str = Field(default="fhir-gateway.privacy", min_length=1)
    nats_stream: str | None = None  # created for the subject when missing (dev); null = provisioned
    # RabbitMQ (routing/amqp.py): delivered = a publisher confirm for a routed, persistent message.
    amqp_url: str | None = None  # e.g. amqp://guest:guest@127.0.0.1:5672/; the `amqp` channel
    amqp_exchange: str = ""  # "" = the default exchange (routing key = a queue's name)
    amqp_routing_key: str = Field(default="fhir-gateway.privacy", min_length=1)
    amqp_queue: str | None = None  # a durable queue to declare and bind (dev); null = provisioned


ValidationMode = Literal["strict", "errors", "warn", "off"]


class ValidationSettings(_Section):
    """How the `validation` write stage treats issues: strict rejects on warnings too, errors rejects
    on errors, warn only reports, off skips. Feeds (HL7v2, DICOM) are messier than REST clients,
    so they get their own, more lenient mode by default."""

    mode: ValidationMode = "errors"  # REST and bundle writes
    feed_mode: ValidationMode = "warn"  # hl7v2 / dicom sources
    invariants: bool = True  # evaluate the FHIRPath constraints


DEFAULT_PIPELINE = (
    "fhir_gateway.validation.stage:validation_stage",
    "fhir_gateway.pipeline.provenance:provenance_stage",  # before authority, which records into it
    "fhir_gateway.pipeline.authority:authority_stage",
    "fhir_gateway.privacy.labels:labels_stage",  # last: the Provenance gets its target's labels
)


class Settings(_Section):
    """Everything the server and the CLI read from configuration; build it with `load_settings`."""

    environment: Environment = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)  # server processes on the port (api/serve.py)
    database_url: str = "sqlite+aiosqlite:///./data/fhir-gateway.db"
    mllp_port: int | None = Field(default=None, ge=1, le=65535)
    dicom_port: int | None = Field(default=None, ge=1, le=65535)
    dicom_ae_title: str = Field(default="FHIRGW", min_length=1, max_length=16)  # PS3.5 AE VR: ≤ 16 chars
    base_url: str | None = None
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    default_page_size: int = Field(default=20, ge=1)
    max_page_size: int = Field(default=500, ge=1)
    search_handling: Literal["lenient", "strict"] = "lenient"
    # A tuple, not a list, so that frozen settings cannot be edited in place and stay hashable.
    pipeline: tuple[str, ...] = DEFAULT_PIPELINE
    run_migrations: bool = True
    log_level: str = "INFO"
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    hl7: Hl7Settings = Field(default_factory=Hl7Settings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    crypto: CryptoSettings = Field(default_factory=CryptoSettings)
    authority: AuthoritySettings = Field(default_factory=AuthoritySettings)

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @model_validator(mode="after")
    def _page_sizes_agree(self) -> Settings:
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must not exceed max_page_size")
        return self

    @model_validator(mode="after")
    def _production_has_real_keys(self) -> Settings:
        """The development keys are public, so a production server using them would protect nothing."""
        if self.environment != "production":
            return self
        problems = []
        if self.security.signing_key.get_secret_value() == DEV_SIGNING_KEY:
            problems.append("production refuses the development signing key: set security.signing_key")
        if self.security.encryption_key.get_secret_value() == DEV_ENCRYPTION_KEY:
            problems.append("production refuses the development encryption key: set security.encryption_key")
        if self.security.allow_anonymous:
            problems.append("production refuses security.allow_anonymous: every request needs a token")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def generate_master_key() -> str:
    """A new master key for `ENC[...]` config values (`fhir-gateway config genkey`)."""
    return Fernet.generate_key().decode()


def encrypt_value(plaintext: str, master_key: str | bytes) -> str:
    """The `ENC[...]` form of a secret, to paste into a YAML file (`fhir-gateway config encrypt`)."""
    return f"ENC[{_fernet(master_key).encrypt(plaintext.encode()).decode()}]"


def load_settings(
    config_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from all layers (see the module docstring); `environ` defaults to os.environ."""
    env = os.environ if environ is None else environ
    flags = {key: value for key, value in (overrides or {}).items() if value is not None}
    layers = _Layers()
    layers.add(_parse_yaml(_packaged_defaults(), _PACKAGED_DEFAULTS, env), _PACKAGED_DEFAULTS)
    path = _config_path(config_file, env)
    if path is not None:
        layers.add(_read_yaml_file(path, env), str(path))
    environment, chosen_by = _choose_environment(env, flags, layers)
    if path is not None:
        overlay = path.with_name(f"{path.stem}.{environment}{path.suffix}")
        if overlay.is_file():
            layers.add(_read_yaml_file(overlay, env), str(overlay))
    for name, loc, value in _env_settings(env):
        layers.add(_nest(loc, value), name)
    layers.add(flags, "command line")
    layers.add({"environment": environment}, chosen_by)
    _decrypt_tree(layers.data, (), env, layers)
    try:
        return Settings.model_validate(layers.data)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, layers)) from None  # no chaining: pydantic's text shows inputs


@dataclass
class _Layers:
    """The merged configuration so far, and which layer set each key (for error messages)."""

    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[Loc, str] = field(default_factory=dict)

    def add(self, layer: Mapping[str, Any], origin: str) -> None:
        self._merge(self.data, layer, (), origin)

    def _merge(self, base: dict[str, Any], layer: Mapping[str, Any], loc: Loc, origin: str) -> None:
        for key, value in layer.items():
            here = (*loc, key)
            if isinstance(value, Mapping):
                if not isinstance(base.get(key), dict):
                    base[key] = {}  # a mapping replaces a scalar; its keys are then recorded one by one
                self._merge(base[key], value, here, origin)
            else:
                base[key] = copy.deepcopy(value)  # later in-place steps must not touch the caller's objects
                self.origins[here] = origin

    def origin_of(self, loc: Loc) -> str | None:
        """The layer that set `loc` or the nearest enclosing key (a whole section may come from one file)."""
        for end in range(len(loc), 0, -1):
            if (origin := self.origins.get(loc[:end])) is not None:
                return origin
        return None


def _packaged_defaults() -> str:
    return (files("fhir_gateway") / "config" / "default.yaml").read_text(encoding="utf-8")


def _config_path(config_file: str | Path | None, env: Mapping[str, str]) -> Path | None:
    chosen = config_file or env.get(CONFIG_VAR)
    return Path(chosen) if chosen else None


def _read_yaml_file(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the config file ({exc.strerror})") from None
    return _parse_yaml(text, str(path), env)


def _parse_yaml(text: str, origin: str, env: Mapping[str, str]) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"{origin}: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{origin}: the top level must be a mapping of setting names to values")
    substituted: dict[str, Any] = _substitute(data, (), origin, env)
    return substituted


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return "not valid YAML"
    return f"line {mark.line + 1}: not valid YAML ({getattr(exc, 'problem', None) or 'syntax error'})"


def _substitute(node: Any, loc: Loc, origin: str, env: Mapping[str, str]) -> Any:
    """Replace `${VAR}` / `${VAR:default}` in every string of a parsed YAML document."""
    if isinstance(node, dict):
        return {key: _substitute(value, (*loc, key), origin, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute(value, (*loc, i), origin, env) for i, value in enumerate(node)]
    if isinstance(node, str):
        return _VAR_REF.sub(lambda ref: _resolve(ref, loc, origin, env), node)
    return node


def _resolve(ref: re.Match[str], loc: Loc, origin: str, env: Mapping[str, str]) -> str:
    name, default = ref.group(1), ref.group(2)
    value = env.get(name)
    if default is not None and not value:
        return default
    if value is None:
        raise SettingsError(
            f"{_dotted(loc)}: environment variable {name} is not set and has no default (in {origin})"
        )
    return value


def _choose_environment(env: Mapping[str, str], flags: Mapping[str, Any], layers: _Layers) -> tuple[str, str]:
    """Which environment, and who said so; checked here because it names the overlay file."""
    if env.get(ENVIRONMENT_VAR):
        environment, origin = env[ENVIRONMENT_VAR], ENVIRONMENT_VAR
    elif "environment" in flags:
        environment, origin = flags["environment"], "command line"
    else:
        environment = layers.data.get("environment", "development")
        origin = layers.origin_of(("environment",)) or "defaults"
    if environment not in ENVIRONMENTS:
        raise SettingsError(f"environment: must be one of {', '.join(ENVIRONMENTS)} (from {origin})")
    return environment, origin


def _env_settings(env: Mapping[str, str]) -> list[tuple[str, Loc, Any]]:
    """`(variable, key path, value)` for every FHIR_GATEWAY_* setting variable; unknown names are an error.

    Sorted by name so that a whole-section variable comes before (and is refined by) its nested ones.
    """
    found: list[tuple[str, Loc, Any]] = []
    unknown: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in _LOADER_VARS:
            continue
        loc: Loc = tuple(name.removeprefix(ENV_PREFIX).lower().split("__"))
        annotation = _annotation_at(loc)
        if annotation is None:
            unknown.append(name)
        else:
            found.append((name, loc, _env_value(env[name], annotation)))
    if unknown:
        raise SettingsError(
            f"unknown environment variable(s) {', '.join(unknown)}: no such setting "
            f"(nest keys with '__', e.g. {ENV_PREFIX}SECURITY__ISSUER)"
        )
    return found


def _annotation_at(loc: Loc) -> Any:
    """The type of the setting at `loc`, walking into nested sections; None when there is no such setting."""
    annotation: Any = Settings
    for part in loc:
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        info = annotation.model_fields.get(str(part))
        if info is None:
            return None
        annotation = info.annotation
    return annotation


def _env_value(raw: str, annotation: Any) -> Any:
    """Text settings take the variable as written; others parse it as YAML ("8081", "true", "[a, b]")."""
    members = get_args(annotation) if get_origin(annotation) is UnionType else (annotation,)
    if all(member in _TEXT_TYPES for member in members if member is not type(None)):
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw  # validation then names the key and the variable


def _nest(loc: Loc, value: Any) -> dict[str, Any]:
    for key in reversed(loc[1:]):
        value = {key: value}
    return {str(loc[0]): value}


def _decrypt_tree(node: Any, loc: Loc, env: Mapping[str, str], layers: _Layers) -> None:
    """Decrypt every `ENC[...]` string in place; only the values that won the merge are touched."""
    items: Iterable[tuple[Any, Any]] = (
        node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    )
    for key, value in list(items):
        if isinstance(value, str) and (sealed := _ENCRYPTED.fullmatch(value.strip())):
            node[key] = _decrypt(sealed.group(1), (*loc, key), env, layers)
        else:
            _decrypt_tree(value, (*loc, key), env, layers)


def _decrypt(token: str, loc: Loc, env: Mapping[str, str], layers: _Layers) -> str:
    where = f"{_dotted(loc)} (from {layers.origin_of(loc)})"
    master_key = _master_key(env, where)
    try:
        return _fernet(master_key).decrypt(token.encode()).decode()
    except (InvalidToken, ValueError):
        raise SettingsError(
            f"{where}: cannot decrypt the ENC[...] value with the master key "
            f"(wrong or malformed master key, or a damaged value)"
        ) from None


def _master_key(env: Mapping[str, str], where: str) -> str:
    if key := env.get(MASTER_KEY_VAR):
        return key
    if key_file := env.get(MASTER_KEY_FILE_VAR):
        try:
            return Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(
                f"{where}: cannot read the master key file {key_file} ({exc.strerror})"
            ) from None
    raise SettingsError(
        f"{where}: the value is encrypted but neither {MASTER_KEY_VAR} nor {MASTER_KEY_FILE_VAR} is set"
    )


def _fernet(master_key: str | bytes) -> Fernet:
    try:
        return Fernet(master_key.encode() if isinstance(master_key, str) else master_key)
    except ValueError:
        raise SettingsError(
            "the master key is not a valid Fernet key (make one with `fhir-gateway config genkey`)"
        ) from None


def _describe(exc: ValidationError, layers: _Layers) -> str:
    """`dotted.key: message (from origin)` per problem, joined by "; ", built without the offending input."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc: Loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "value_error":
            message = str(error.get("ctx", {}).get("error", error["msg"]))
        else:
            message = error["msg"]
        origin = layers.origin_of(loc)
        line = f"{_dotted(loc)}: {message}" if loc else message
        lines.append(f"{line} (from {origin})" if origin else line)
    return "; ".join(lines)


def _dotted(loc: Loc) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
