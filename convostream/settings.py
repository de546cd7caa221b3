"""Configuration: one pydantic-settings model per command, exposed as CLI flags.

Every field of a settings model becomes a ``--flag`` whose environment variable is the model's
prefix plus the field name, so ``--help`` documents both and a ``.env`` file works too. Invalid
values fail at start-up with a message that names the variable and the flag, never the value of a
secret.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import click
from pydantic import (
    AliasChoices,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from convostream.kafka_security import KafkaSecurity, SaslMechanism, SecurityProtocol
from schemas.registry import RegistryAccess

ENV_PREFIX = "CONVOSTREAM_"

S = TypeVar("S", bound=BaseSettings)
F = TypeVar("F", bound=Callable[..., Any])


class ConfigError(click.ClickException):
    """Bad configuration, reported once at start-up with the variable to fix."""

    exit_code = 2


class CommonSettings(BaseSettings):
    """Settings every pipeline component shares."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", populate_by_name=True
    )

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated host:port."
    )
    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT",
        description="How clients reach Kafka: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        "PLAIN", description="SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name (SASL_* only).")
    kafka_sasl_password: SecretStr | None = Field(
        None,
        description="SASL password (environment only; prefer the _FILE variant).",
        json_schema_extra={"cli": False},
    )
    kafka_sasl_password_file: FilePath | None = Field(
        None, description="File holding the SASL password (a mounted Secret)."
    )
    kafka_ssl_ca_file: FilePath | None = Field(
        None, description="PEM CA bundle that signed the brokers' certificates (SSL, SASL_SSL)."
    )
    kafka_ssl_cert_file: FilePath | None = Field(
        None, description="PEM client certificate, for brokers that require mutual TLS."
    )
    kafka_ssl_key_file: FilePath | None = Field(
        None, description="PEM private key of the client certificate."
    )
    topic_prefix: str = Field("", description="Prefix put before every topic name.")
    schema_registry_url: str | None = Field(
        None,
        description="Confluent-compatible Schema Registry URL; unset: ids pinned in schemas/.",
    )
    schema_registry_username: str | None = Field(
        None, description="Schema Registry basic-auth user (an API key, for Confluent Cloud)."
    )
    schema_registry_password: SecretStr | None = Field(
        None,
        description="Schema Registry basic-auth password (environment only; prefer _FILE).",
        json_schema_extra={"cli": False},
    )
    schema_registry_password_file: FilePath | None = Field(
        None, description="File holding the Schema Registry password (a mounted Secret)."
    )
    schema_registry_ca_file: FilePath | None = Field(
        None, description="PEM CA bundle that signed the Schema Registry's certificate."
    )
    schema_registry_lookup_only: bool = Field(
        False,
        description="Never register schemas: find the ids of the schemas this component writes "
        "with GET requests (for credentials without write rights; someone else registers).",
    )
    group_session_timeout_ms: int = Field(
        10000,
        ge=1000,
        description="Consumer-group session timeout (ms): how soon a dead member's partitions "
        "move. Kafka refuses values below its group.min.session.timeout.ms (6000 by default); "
        "the embedded broker joins in half a session, so the demo and tests use 2000.",
    )
    broker_compat: Literal["none", "tansu"] = Field(
        "none",
        description="Workarounds for a broker that is not Apache Kafka. tansu (the embedded "
        "broker): 10 ms fetch waits, hand-over records written last on their own, Faust "
        "internal topics with one replica, no standbys, no recovery consistency check. "
        "none: Apache Kafka behaviour.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level (DEBUG, INFO, WARNING, ERROR; any case)."
    )
    log_format: Literal["json", "console", "auto"] = Field(
        "auto", description="Log format: json, console, or auto (console on a TTY)."
    )
    health_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between the readiness checks of the broker (and the SQL store) "
        "behind /readyz.",
    )
    startup_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds to retry an unreachable broker or schema registry at start-up "
        "before exiting with code 3.",
    )
    shutdown_timeout: float = Field(
        25.0,
        gt=0,
        description="Seconds a graceful stop (SIGTERM) may take before the component "
        "abandons what is left and exits; keep it below the pod's grace period.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _security(self) -> CommonSettings:
        """Passwords read from their files once, and settings that cannot work together
        refused at start-up rather than at the first connection."""
        self.kafka_sasl_password = _password(self, "kafka_sasl_password")
        self.schema_registry_password = _password(self, "schema_registry_password")
        protocol = self.kafka_security_protocol
        var = type(self)._var
        if protocol.startswith("SASL_"):
            missing = {
                "kafka_sasl_username": var("kafka_sasl_username"),
                "kafka_sasl_password": f"{var('kafka_sasl_password')} (or _FILE)",
            }
            for field, name in missing.items():
                if not getattr(self, field):
                    raise ValueError(
                        f"{name} is required when {var('kafka_security_protocol')} is {protocol}"
                    )
        elif self.kafka_sasl_username or self.kafka_sasl_password:
            raise ValueError(
                f"SASL credentials are set but {var('kafka_security_protocol')} is {protocol}; "
                "use SASL_SSL (or SASL_PLAINTEXT)"
            )
        tls_files = ("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file")
        if protocol not in ("SSL", "SASL_SSL") and any(getattr(self, f) for f in tls_files):
            raise ValueError(
                f"TLS files are set but {var('kafka_security_protocol')} is {protocol}; "
                "use SSL or SASL_SSL"
            )
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            raise ValueError(
                f"{var('kafka_ssl_cert_file')} and {var('kafka_ssl_key_file')} go together"
            )
        if self.schema_registry_password and not self.schema_registry_username:
            raise ValueError(
                f"{var('schema_registry_password')} is set without "
                f"{var('schema_registry_username')}"
            )
        try:
            self.kafka_security().ssl_context()
            self.registry_access().ssl()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ValueError(f"a TLS file cannot be used: {exc}") from None
        return self

    @classmethod
    def _var(cls, field: str) -> str:
        return env_name(cls, field)

    def kafka_security(self) -> KafkaSecurity:
        """The TLS and SASL options every Kafka client of this component uses."""
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            mechanism=self.kafka_sasl_mechanism,
            username=self.kafka_sasl_username,
            password=self.kafka_sasl_password,
            ca_file=self.kafka_ssl_ca_file,
            cert_file=self.kafka_ssl_cert_file,
            key_file=self.kafka_ssl_key_file,
        )

    def registry_access(self) -> RegistryAccess:
        """Credentials and trust for the Schema Registry."""
        return RegistryAccess(
            username=self.schema_registry_username,
            password=self.schema_registry_password,
            ca_file=self.schema_registry_ca_file,
        )

    def secrets(self) -> tuple[str, ...]:
        """Passwords of these settings, to keep out of every log line."""
        found = (self.kafka_sasl_password, self.schema_registry_password)
        return tuple(s.get_secret_value() for s in found if s is not None)

    @property
    def tansu(self) -> bool:
        """Talking to the embedded Tansu broker (see ``broker_compat``)."""
        return self.broker_compat == "tansu"

    def fetch_wait_ms(self, configured: int | None, on_tansu: int = 10) -> int:
        """A consumer's fetch.max.wait.ms: ``configured``, else ``on_tansu`` ms on Tansu (it
        answers a long poll only at its deadline: 10 ms where each record's latency counts)
        and Kafka's 500 ms elsewhere (Kafka answers as soon as data arrives)."""
        if configured is not None:
            return configured
        return on_tansu if self.tansu else 500

    def group_heartbeat_ms(self) -> int:
        """Heartbeats a few times per session, so one late beat never evicts a member."""
        return max(100, self.group_session_timeout_ms // 4)


def _password(settings: CommonSettings, field: str) -> SecretStr | None:
    """``field``, or the contents of ``<field>_file`` (one trailing newline dropped)."""
    given: SecretStr | None = getattr(settings, field)
    path: Path | None = getattr(settings, field + "_file")
    if path is None:
        return given
    var = env_name(type(settings), field)
    if given is not None:
        raise ValueError(f"set {var} or {var}_FILE, not both")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{var}_FILE cannot be read: {type(exc).__name__}") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"{var}_FILE is empty")
    return SecretStr(text)


def flag(name: str, **extra: Any) -> dict[str, Any]:
    """``json_schema_extra`` naming a field's CLI flag (see :func:`flag_name`)."""
    return {"flag": name, **extra}


class OpsSettings(CommonSettings):
    """Settings of long-running components: the operations port Prometheus and probes use."""

    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Operations port on all interfaces: /metrics, /healthz, /readyz (0: off).",
        json_schema_extra=flag("--metrics-port"),
    )


class UpstreamSettings(CommonSettings):
    """Settings of components that talk to the ElevenLabs API."""

    upstream_url: str = Field(
        "https://api.elevenlabs.io",
        description="ElevenLabs API base URL (regional hosts work; the simulator's URL for tests).",
    )
    api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("CONVOSTREAM_API_KEY", "ELEVENLABS_API_KEY", "api_key"),
        description="xi-api-key for the ElevenLabs API (also read from ELEVENLABS_API_KEY).",
        json_schema_extra={"cli": False},
    )


def env_name(model: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``model``."""
    prefix = str(model.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def flag_name(model: type[BaseSettings], field: str) -> str:
    """The CLI flag of ``field``: ``json_schema_extra={"flag": ...}`` or the field's name."""
    extra = model.model_fields[field].json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("flag"), str):
        return str(extra["flag"])
    return "--" + field.replace("_", "-")


def _annotation(info: FieldInfo) -> Any:
    annotation = info.annotation
    if get_origin(annotation) is not None:
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else str
    return annotation


def _metavar(info: FieldInfo) -> str:
    """What --help shows; values stay strings so that pydantic alone validates them."""
    if get_origin(info.annotation) is Literal:
        return "[" + "|".join(str(choice) for choice in get_args(info.annotation)) + "]"
    names = {int: "INTEGER", float: "NUMBER", SecretStr: "SECRET", Path: "PATH"}
    return names.get(_annotation(info), "TEXT")


def _cli_fields(model: type[BaseSettings]) -> list[tuple[str, FieldInfo]]:
    out = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("cli") is False:
            continue
        out.append((name, info))
    return out


def settings_options(model: type[BaseSettings]) -> Callable[[F], F]:
    """Add one click option per field of ``model``; values stay None unless given.

    Leaving them None lets pydantic-settings resolve environment, ``.env`` and defaults in one
    place, so flag, variable and default can never disagree.
    """

    def decorate(func: F) -> F:
        for name, info in reversed(_cli_fields(model)):
            if info.is_required():
                shown = "required"
            elif isinstance(info.default, SecretStr):
                shown = "default: ***"
            else:
                shown = f"default: {info.default}"
            kind = _annotation(info)
            envvar = env_name(model, name)
            help_text = f"{info.description or ''} [env: {envvar}; {shown}]"
            if kind is bool:
                flag = flag_name(model, name)
                option = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
            else:
                option = click.option(
                    flag_name(model, name),
                    name,
                    default=None,
                    help=help_text,
                    metavar=_metavar(info),
                )
            func = option(func)
        return func

    return decorate


def load_settings(model: type[S], cli_values: dict[str, Any]) -> S:
    """Build ``model`` from flags given on the command line over environment and defaults."""
    given = {k: v for k, v in cli_values.items() if v is not None and k in model.model_fields}
    try:
        return model(**given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err["loc"]:  # a check across fields: its message names the variables
                problems.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            field = str(err["loc"][0])
            where = env_name(model, field)
            if field in model.model_fields:
                where += f" / {flag_name(model, field)}"
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
