"""Configuration: one pydantic-settings model per command, exposed as CLI flags.

Every field of a settings model becomes a ``--flag`` whose environment variable is the model's
prefix plus the field name, so ``--help`` documents both and a ``.env`` file works too. Invalid
values fail at start-up with a message that names the variable and the flag, never the value of a
secret.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import click
from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    topic_prefix: str = Field("", description="Prefix put before every topic name.")
    schema_registry_url: str | None = Field(
        None,
        description="Confluent-compatible Schema Registry URL; unset: ids pinned in schemas/.",
    )
    group_session_timeout_ms: int = Field(
        10000,
        ge=1000,
        description="Consumer-group session timeout (ms): how soon a dead member's partitions "
        "move. Kafka refuses values below its group.min.session.timeout.ms (6000 by default); "
        "the embedded broker joins in half a session, so the demo and tests use 2000.",
    )
    log_level: str = Field("INFO", description="Log level (DEBUG, INFO, WARNING, ERROR).")
    log_format: str = Field(
        "auto", description="Log format: json, console, or auto (console on a TTY)."
    )

    def group_heartbeat_ms(self) -> int:
        """Heartbeats a few times per session, so one late beat never evicts a member."""
        return max(100, self.group_session_timeout_ms // 4)


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


def _metavar(annotation: Any) -> str:
    """What --help shows; values stay strings so that pydantic alone validates them."""
    names = {int: "INTEGER", float: "NUMBER", SecretStr: "SECRET", Path: "PATH"}
    return names.get(annotation, "TEXT")


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
                    metavar=_metavar(kind),
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
            field = str(err["loc"][0]) if err["loc"] else "?"
            where = env_name(model, field)
            if field in model.model_fields:
                where += f" / {flag_name(model, field)}"
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
