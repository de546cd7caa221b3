"""The rules file (DESIGN.md §2): parsed and validated once, before anything runs.

Every problem is reported with the rule's name (or position) and the field, e.g.
``rule 'wants-human' when.match: invalid regex: ...``, so ``convostream rules check FILE`` can
point an operator at the line to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.commands import CHAT_ONLY, COMMAND_TYPES, E164, REQUIRED_FIELD
from schemas.event_types import (
    AGENT_RESPONSE,
    CORRECTION,
    INTERRUPTION,
    TOOL_RESPONSE,
    USER_TRANSCRIPT,
)

Channel = Literal["chat", "voice"]
Severity = Literal["info", "warning", "critical"]
Metric = Literal["tool_errors", "tool_calls", "interruptions", "corrections", "user_turns"]
Kind = Literal["count", "silence", "latency"]
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# The event type each metric counts: the processors' definitions (DESIGN.md §3), so a rule's
# threshold and the conversation's metrics agree. tool_errors also needs ``is_error``.
METRIC_TYPES: dict[str, str] = {
    "tool_errors": TOOL_RESPONSE,
    "tool_calls": TOOL_RESPONSE,
    "interruptions": INTERRUPTION,
    "corrections": CORRECTION,
    "user_turns": USER_TRANSCRIPT,
}
TURN_TYPES = (USER_TRANSCRIPT, AGENT_RESPONSE)


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the rule and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class When(_Strict):
    """The condition, one of: matching events of a conversation (counted once per event_key),
    a metric threshold, a silence after a user turn, or a response latency over a limit."""

    type: str | list[str] | None = Field(None, description="Event type(s) that can match.")
    metric: Metric | None = Field(None, description="A live conversation metric to threshold.")
    at_least: int | None = Field(None, ge=1, description="The metric's threshold.")
    silence: float | None = Field(
        None, gt=0, description="No agent_response within this many seconds of a user turn."
    )
    latency_over: float | None = Field(
        None, gt=0, description="An agent_response came more than this many seconds late."
    )
    match: str | None = Field(None, description="Regex searched in the frame's JSON text.")
    channel: Channel | None = Field(None, description="Only chat or only voice conversations.")
    count: int = Field(1, ge=1, description="Fire on the Nth distinct matching event.")
    within: float | None = Field(
        None, gt=0, description="The count must fall within this many seconds of event time."
    )

    @field_validator("type")
    @classmethod
    def _types(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is None:
            return value
        names = [value] if isinstance(value, str) else value
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError("expected an event type or a non-empty list of them")
        return value

    @model_validator(mode="after")
    def _one_condition(self) -> When:
        given = [
            name
            for name in ("type", "metric", "silence", "latency_over")
            if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "expected exactly one of 'type', 'metric', 'silence' or 'latency_over'"
                + (f" (got {', '.join(given)})" if given else "")
            )
        fields = self.model_fields_set
        if self.metric is not None:
            if self.at_least is None:
                raise ValueError("metric needs 'at_least' (the threshold)")
            if fields & {"match", "count"}:
                raise ValueError("metric takes 'at_least' (and 'within'), not 'match' or 'count'")
        elif self.at_least is not None:
            raise ValueError("'at_least' only goes with 'metric'")
        if self.type is None and self.metric is None:
            extra = sorted(fields & {"match", "count", "within"})
            if extra:
                raise ValueError(f"{given[0]} takes no {', '.join(repr(f) for f in extra)}")
        return self

    @field_validator("match")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from None
        return value

    def kind(self) -> Kind:
        if self.silence is not None:
            return "silence"
        return "latency" if self.latency_over is not None else "count"

    def types(self) -> tuple[str, ...]:
        if self.metric is not None:
            return (METRIC_TYPES[self.metric],)
        if self.type is None:
            return TURN_TYPES
        return (self.type,) if isinstance(self.type, str) else tuple(self.type)

    def limit(self) -> float | None:
        return self.silence if self.silence is not None else self.latency_over


class Then(_Strict):
    """The action: one command (with the parameter its type needs) or one alert."""

    command: str | None = None
    phone_number: str | None = None
    text: str | None = None
    contextual_update: str | None = None
    alert: Severity | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Then:
        if (self.command is None) == (self.alert is None):
            raise ValueError("expected exactly one of 'command' or 'alert'")
        if self.alert is not None:
            extra = [f for f in ("phone_number", "text", "contextual_update") if getattr(self, f)]
            if extra:
                raise ValueError(f"{', '.join(extra)} only go with a command")
            return self
        if self.command not in REQUIRED_FIELD:
            raise ValueError(
                f"unknown command {self.command!r}; expected one of {', '.join(COMMAND_TYPES)}"
            )
        needed = REQUIRED_FIELD[self.command]
        for name in ("phone_number", "text", "contextual_update"):
            given = getattr(self, name) is not None
            if name == needed and not given:
                raise ValueError(f"{self.command} needs '{name}'")
            if name != needed and given:
                raise ValueError(f"{self.command} takes no '{name}'")
        if self.phone_number is not None and not E164.match(self.phone_number):
            raise ValueError("phone_number: expected E.164, e.g. +14155550100")
        return self

    def action(self) -> str:
        """The metric label: the command type, or ``alert``."""
        return self.command or "alert"

    def parameter(self) -> str | None:
        """The text the command carries (``text`` or ``contextual_update``)."""
        return self.text if self.text is not None else self.contextual_update


class RuleModel(_Strict):
    name: str
    when: When
    then: Then

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError("expected 1-64 characters of [A-Za-z0-9_.-]")
        return value

    @model_validator(mode="after")
    def _channel_fits(self) -> RuleModel:
        if self.then.command in CHAT_ONLY and self.when.channel != "chat":
            raise ValueError(
                f"then.command {self.then.command} works in chat conversations only: "
                "set when.channel: chat"
            )
        if self.then.command == "transfer_to_number" and self.when.channel != "voice":
            raise ValueError(
                "then.command transfer_to_number is a phone-call tool: set when.channel: voice"
            )
        return self


class RulesFile(_Strict):
    rules: list[RuleModel]


@dataclass(frozen=True, slots=True)
class Rule:
    """A validated rule, prepared for evaluation (compiled regex, type tuple).

    ``kind`` count: the Nth distinct matching event (``errors_only``: of tool responses with
    ``is_error``); silence / latency: a user turn without an agent_response within
    ``limit_micros`` (see ``rules.core``).
    """

    name: str
    types: tuple[str, ...]
    regex: re.Pattern[str] | None
    channel: Channel | None
    count: int
    within_micros: int | None
    then: Then
    kind: Kind = "count"
    limit_micros: int = 0
    errors_only: bool = False
    metric: str | None = None

    @classmethod
    def of(cls, model: RuleModel) -> Rule:
        when = model.when
        limit = when.limit()
        return cls(
            model.name,
            when.types(),
            re.compile(when.match) if when.match is not None else None,
            when.channel,
            when.at_least if when.at_least is not None else when.count,
            None if when.within is None else _micros(when.within),
            model.then,
            when.kind(),
            0 if limit is None else _micros(limit),
            when.metric == "tool_errors",
            when.metric,
        )

    def describe(self) -> str:
        """What the rule waits for, in words (the alert's ``detail``)."""
        if self.kind != "count":
            what = "silence" if self.kind == "silence" else "response latency over"
            parts = [f"{what} {self.limit_micros / 1e6:g}s after a user turn"]
        elif self.metric is not None:
            parts = [f"{self.metric} at least {self.count}"]
        else:
            parts = [f"type {'|'.join(self.types)}"]
            if self.regex is not None:
                parts.append(f"matching /{self.regex.pattern}/")
            parts.append(f"count {self.count}")
        if self.channel is not None:
            parts.append(f"in {self.channel}")
        if self.within_micros is not None:
            parts.append(f"within {self.within_micros / 1e6:g}s")
        return ", ".join(parts)


def _micros(seconds: float) -> int:
    return int(seconds * 1_000_000)


def _where(loc: tuple[int | str, ...], raw: Any) -> str:
    """``rule 'name' when.match`` from a pydantic error location."""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        index = loc[1]
        name = None
        if isinstance(raw, dict) and isinstance(raw.get("rules"), list):
            entries = raw["rules"]
            if index < len(entries) and isinstance(entries[index], dict):
                name = entries[index].get("name")
        who = f"rule {name!r}" if isinstance(name, str) else f"rule #{index + 1}"
        field = ".".join(str(p) for p in loc[2:]) or "(the rule)"
        return f"{who} {field}"
    return ".".join(str(p) for p in loc) or "(file)"


def parse_rules(raw: Any) -> tuple[Rule, ...]:
    """Validate a loaded document; raises :class:`RulesError` listing every problem."""
    try:
        doc = RulesFile.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{_where(tuple(err['loc']), raw)}: {message}")
        raise RulesError("; ".join(problems)) from None
    seen: set[str] = set()
    for model in doc.rules:
        if model.name in seen:
            raise RulesError(f"rule {model.name!r} name: used twice (names must be unique)")
        seen.add(model.name)
    return tuple(Rule.of(model) for model in doc.rules)


def load_rules(path: Path) -> tuple[Rule, ...]:
    """Read and validate a YAML rules file."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None
    return parse_rules(raw)
