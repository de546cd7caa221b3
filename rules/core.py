"""Rule evaluation, sans-I/O: events in, fires out.

State is per conversation and only grows until a rule fires: the distinct matching events of
each rule (by ``event_key``, so duplicates and replays count once), the channel once known, and
the rules that fired. A rule fires when its distinct matches reach ``count`` (within
``within`` seconds of event time, if set) and its channel condition is known to hold; it is
then recorded as fired and never fires again for that conversation. The set of matches does
not depend on arrival order, so any order and duplication of the same events fires the same
rules exactly once (``tests/test_rules_core.py`` checks this with hypothesis).

The channel (chat or voice) is not in the events reliably: the I/O edge looks it up when
:meth:`Evaluator.needs_channel` says so and hands the answer to :meth:`Evaluator.set_channel`.

Silence and latency rules look at the conversation's turns by event time (``received_at``): a
user turn at ``u`` is late when no agent_response falls in ``(u, u + limit]`` and the
conversation's time is known to be past ``u + limit``. For ``latency_over`` that time is the
latest agent_response (so a late answer was seen); for ``silence`` it is the latest event of
the conversation of any type (its *horizon*) or, for conversations that went quiet, the wall
clock minus a grace (:meth:`Evaluator.expire`). These conditions depend on arrival order: an
answer that arrives after a later event proved its turn late cannot undo the fire. What holds
for any order and duplication: each rule fires at most once per conversation, and a rule whose
condition holds over all the events fires in every order. Orders in which no agent_response
is overtaken by an event later than it in event time (user turns and other events may come in
any order, copies anywhere) fire exactly those rules: every order then agrees.

Events repaired after the call (``source=backfill``) are evaluated like live ones; the
:class:`Fire` says so, and the I/O edge sends no command for it (the conversation is over).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from rules.spec import Rule
from schemas.event_types import AGENT_RESPONSE, USER_TRANSCRIPT
from schemas.records import RuleState


class RuleEvent(NamedTuple):
    """The fields of a MonitorEvent that rules look at; ``received_at`` in epoch microseconds."""

    event_key: str
    conversation_id: str
    agent_id: str | None
    type: str
    raw: str
    received_at: int
    backfill: bool = False


@dataclass(frozen=True, slots=True)
class Fire:
    """A rule fired for a conversation; ``event_key`` is the event that completed it (the late
    user turn for silence and latency); ``backfill`` when a backfilled event caused it."""

    rule: Rule
    conversation_id: str
    agent_id: str | None
    event_key: str
    backfill: bool = False

    @property
    def fire_id(self) -> str:
        return fire_id(self.rule.name, self.conversation_id)


def fire_id(rule: str, conversation_id: str) -> str:
    """The command_id / alert_id of a fire: the same on every re-fire, so a second copy after a
    crash is a ``duplicate`` at the command worker and readers of alerts can drop it."""
    digest = hashlib.blake2b(f"{rule}\x00{conversation_id}".encode(), digest_size=16)
    return f"rule-{digest.hexdigest()}"


@dataclass
class ConversationRules:
    agent_id: str | None = None
    chat: bool | None = None
    fired: set[str] = field(default_factory=set)
    # rule name -> event_key -> received_at, for rules that have not fired yet
    matches: dict[str, dict[str, int]] = field(default_factory=dict)
    # event_key -> (is agent_response, received_at) of the turns, while a timed rule is pending
    turns: dict[str, tuple[bool, int]] = field(default_factory=dict)
    horizon: int | None = None  # latest received_at seen (written with other changes only)

    def to_record(self, conversation_id: str, now: int) -> RuleState:
        """The ``RuleState`` Avro record of this state."""
        return {
            "conversation_id": conversation_id,
            "agent_id": self.agent_id,
            "chat": self.chat,
            "fired": sorted(self.fired),
            "matches": [
                {"rule": rule, "event_key": key, "received_at": at}
                for rule, keys in sorted(self.matches.items())
                for key, at in sorted(keys.items())
            ],
            "turns": [
                {"event_key": key, "agent": agent, "received_at": at}
                for key, (agent, at) in sorted(self.turns.items())
            ],
            "horizon": self.horizon,
            "updated_at": now,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ConversationRules:
        state = cls(record.get("agent_id"), record.get("chat"), set(record.get("fired", ())))
        for match in record.get("matches", ()):
            state.matches.setdefault(match["rule"], {})[match["event_key"]] = match["received_at"]
        for turn in record.get("turns", ()):
            state.turns[turn["event_key"]] = (turn["agent"], turn["received_at"])
        state.horizon = record.get("horizon")
        return state


def _channel_ok(rule: Rule, chat: bool | None) -> bool | None:
    """True / False when decided, None while the channel is unknown."""
    if rule.channel is None:
        return True
    if chat is None:
        return None
    return chat == (rule.channel == "chat")


def _count_reached(rule: Rule, matches: Mapping[str, int]) -> bool:
    if len(matches) < rule.count:
        return False
    if rule.within_micros is None:
        return True
    times = sorted(matches.values())
    span = rule.count - 1
    return any(times[i + span] - times[i] <= rule.within_micros for i in range(len(times) - span))


def _is_error(raw: str) -> bool:
    """``is_error`` of a tool response frame (``{"type": t, t: {..., "is_error": true}}``)."""
    try:
        frame = orjson.loads(raw)
        body = frame[frame["type"]]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
    return isinstance(body, dict) and body.get("is_error") is True


def late_turn(
    turns: Mapping[str, tuple[bool, int]], limit: int, horizon: int | None
) -> tuple[str | None, int | None]:
    """(the earliest user turn with no agent_response within ``limit`` whose deadline is before
    ``horizon``, else None; the earliest deadline still open, else None)."""
    users = sorted((at, key) for key, (agent, at) in turns.items() if not agent)
    agents = sorted(at for agent, at in turns.values() if agent)
    for at, key in users:
        deadline = at + limit
        i = bisect_right(agents, at)
        if i < len(agents) and agents[i] <= deadline:
            continue  # answered in time
        if horizon is not None and horizon > deadline:
            return key, None
        return None, deadline
    return None, None


class Evaluation(NamedTuple):
    matched: list[str]
    fires: list[Fire]


class Evaluator:
    """Rule state of the conversations one engine owns."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.states: dict[str, ConversationRules] = {}
        self.dirty: set[str] = set()
        self.deadlines: dict[str, int] = {}  # conversation -> when a silence may fire
        self.replace_rules(rules)

    def replace_rules(self, rules: Iterable[Rule]) -> None:
        """New rules (hot reload): state of rules kept by name carries over."""
        self.rules = tuple(rules)
        self.by_name = {r.name: r for r in self.rules}
        by_type: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for kind in rule.types:
                by_type.setdefault(kind, []).append(rule)
        self.by_type = {k: tuple(v) for k, v in by_type.items()}
        self.timed = tuple(r for r in self.rules if r.kind != "count")
        self.by_channel = tuple(r for r in self.rules if r.channel is not None)

    def observe(self, event: RuleEvent) -> Evaluation:
        """Evaluate one event; returns the rules it matched and the fires it caused."""
        conversation = event.conversation_id
        state = self.states.get(conversation)
        moved = False
        if self.timed:
            if state is None:
                state = self.states[conversation] = ConversationRules(event.agent_id)
            if state.horizon is None or event.received_at > state.horizon:
                state.horizon = event.received_at
                moved = True
        candidates = self.by_type.get(event.type)
        if not candidates:
            if moved:
                return Evaluation([], self._timed(conversation, event, None))
            return Evaluation([], [])
        matched: list[str] = []
        fires: list[Fire] = []
        for rule in candidates:
            if rule.kind != "count":
                continue
            if state is not None and rule.name in state.fired:
                continue
            if rule.regex is not None and rule.regex.search(event.raw) is None:
                continue
            if rule.errors_only and not _is_error(event.raw):
                continue
            if state is None:
                state = self.states[conversation] = ConversationRules(event.agent_id)
            if _channel_ok(rule, state.chat) is False:
                continue
            keys = state.matches.setdefault(rule.name, {})
            if event.event_key in keys:
                continue
            keys[event.event_key] = event.received_at
            matched.append(rule.name)
            self.dirty.add(conversation)
            if state.agent_id is None:
                state.agent_id = event.agent_id
            fire = self._try_fire(conversation, state, rule, event.event_key, event.backfill)
            if fire is not None:
                fires.append(fire)
        if self.timed and state is not None and event.type in (USER_TRANSCRIPT, AGENT_RESPONSE):
            turn = (event.type == AGENT_RESPONSE, event.received_at)
            if event.event_key not in state.turns and self._timed_pending(state):
                state.turns[event.event_key] = turn
                self.dirty.add(conversation)
                moved = True
        if moved:
            fires += self._timed(conversation, event, None)
        return Evaluation(matched, fires)

    def _timed_pending(self, state: ConversationRules) -> bool:
        return any(r.name not in state.fired and r.name not in state.matches for r in self.timed)

    def _timed(self, conversation: str, event: RuleEvent | None, clock: int | None) -> list[Fire]:
        """Check the silence and latency rules of a conversation whose turns or time moved."""
        state = self.states[conversation]
        fires: list[Fire] = []
        deadline: int | None = None
        agents = [at for agent, at in state.turns.values() if agent]
        for rule in self.timed:
            if rule.name in state.fired or rule.name in state.matches:
                continue  # fired, or late and waiting for the channel
            if _channel_ok(rule, state.chat) is False:
                continue
            if rule.kind == "latency":
                horizon = max(agents, default=None)
            elif clock is not None and (state.horizon is None or clock > state.horizon):
                horizon = clock
            else:
                horizon = state.horizon
            key, due = late_turn(state.turns, rule.limit_micros, horizon)
            if key is None:
                if rule.kind == "silence" and due is not None:
                    deadline = due if deadline is None else min(deadline, due)
                continue
            state.matches[rule.name] = {key: state.turns[key][1]}
            self.dirty.add(conversation)
            backfill = event is not None and event.backfill
            fire = self._try_fire(conversation, state, rule, key, backfill)
            if fire is not None:
                fires.append(fire)
        if deadline is None:
            self.deadlines.pop(conversation, None)
        else:
            self.deadlines[conversation] = deadline
        if state.turns and not self._timed_pending(state):
            state.turns.clear()
            self.dirty.add(conversation)
        return fires

    def expire(self, clock: int) -> list[Fire]:
        """Wall-clock fallback: silences whose deadline is before ``clock`` (epoch µs, already
        less a grace for the pipeline's delay) in conversations that went quiet."""
        fires: list[Fire] = []
        for conversation in [c for c, due in self.deadlines.items() if due < clock]:
            if conversation in self.states:
                fires += self._timed(conversation, None, clock)
            else:
                del self.deadlines[conversation]
        return fires

    def _try_fire(
        self,
        conversation: str,
        state: ConversationRules,
        rule: Rule,
        event_key: str,
        backfill: bool = False,
    ) -> Fire | None:
        if not _count_reached(rule, state.matches.get(rule.name, {})):
            return None
        if not _channel_ok(rule, state.chat):
            return None
        state.fired.add(rule.name)
        state.matches.pop(rule.name, None)
        self.dirty.add(conversation)
        return Fire(rule, conversation, state.agent_id, event_key, backfill)

    def needs_channel(self, conversation: str) -> bool:
        """Whether a rule waits only for the channel of ``conversation`` to be known."""
        state = self.states.get(conversation)
        if state is None or state.chat is not None:
            return False
        matches = state.matches
        # the few rules with a channel condition, not every rule the conversation matched:
        # this runs for every matching event
        return any(
            (keys := matches.get(rule.name)) is not None and _count_reached(rule, keys)
            for rule in self.by_channel
        )

    def set_channel(self, conversation: str, chat: bool) -> list[Fire]:
        """The channel became known: drop matches of rules for the other one, fire the rest."""
        state = self.states.setdefault(conversation, ConversationRules())
        if state.chat is not None:
            return []
        state.chat = chat
        self.dirty.add(conversation)
        fires = []
        for name in list(state.matches):
            rule = self.by_name.get(name)
            if rule is None:
                continue
            if _channel_ok(rule, chat) is False:
                del state.matches[name]
                continue
            keys = state.matches[name]
            last = max(keys, key=lambda k: (keys[k], k)) if keys else ""
            fire = self._try_fire(conversation, state, rule, last)
            if fire is not None:
                fires.append(fire)
        return fires

    def take_dirty(self) -> list[str]:
        """Conversations whose state changed since the last call (to write to the changelog)."""
        dirty = sorted(self.dirty)
        self.dirty.clear()
        return dirty

    def restore(self, conversation: str, record: Mapping[str, Any]) -> None:
        state = self.states[conversation] = ConversationRules.from_record(record)
        if state.turns and self.timed:
            self.deadlines[conversation] = 0  # the next expire() checks it against the clock

    def forget(self, conversations: Iterable[str]) -> None:
        for conversation in conversations:
            self.states.pop(conversation, None)
            self.dirty.discard(conversation)
            self.deadlines.pop(conversation, None)
