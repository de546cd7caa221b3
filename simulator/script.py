"""Sans-I/O conversation scripts: seeded, realistic monitor frames for one conversation.

A :class:`ConversationScript` is a pull-based state machine: the server asks for the next frame
with :meth:`ConversationScript.next_frame` and for the virtual time until the one after with
:meth:`ConversationScript.next_gap`. Everything derives from ``random.Random(f"{seed}:{number}")``
(content) and ``random.Random(f"{seed}:{number}:t")`` (timing), so a seed and a conversation
number always give the same frames; no wall clock is read (the only timestamp in a frame,
``mcp_tool_call.timestamp``, is ``VIRTUAL_EPOCH`` plus the conversation's virtual time).

Choices where the upstream is undocumented (UPSTREAM.md §2):
- ``event_id`` numbers turns from 1: each user utterance and each agent reply is its own turn,
  so an ``agent_response`` always has a larger id than the ``user_transcript`` it answers. All
  frames of a turn share the id; ``interruption`` and ``agent_response_correction`` carry the
  interrupted reply's id.
- Shapes of types the AsyncAPI file does not describe:
  ``agent_response_metadata``: ``{"agent_response_metadata_event": {"metadata": {...},
  "event_id"}}``; ``agent_response_complete``: ``{"agent_response_complete_event":
  {"event_id"}}``; ``dtmf_request``: ``{"dtmf_request_event": {"event_id", "digits",
  "prompt"}}``; ``client_error``: ``{"client_error_event": {"event_id", "error_type",
  "message"}}``; ``guardrail_triggered`` (AsyncAPI: only ``type``):
  ``{"guardrail_triggered_event": {"event_id", "guardrail_type", "action"}}``.
- ``asr_initiation_metadata_event`` holds ``{"asr_model", "language", "sample_rate"}``.
- Without ``repeat_ratio`` every frame is unique text within its conversation by construction
  (event ids, distinct tool-call ids per state, distinct prefixes/chunks);
  ``internal_tentative_agent_response``, which has no id, is made unique with a
  per-conversation check. With it, about that share of frames repeat the exact text of an
  earlier chat delta, status or metadata frame (half of them one of the last three such
  frames), drawn from a generator of their own so the other frames stay the same.
- With ``malformed_ratio`` about that share of frames cannot be read (type ``malformed``): a
  frame cut short, a JSON array, or an object without ``type``, each numbered so it is unique.
  The upstream is not documented to send any; they stand for a proxy or a bug between it and
  the collector, and exercise the dead-letter path end to end (replayed like any frame).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

Kind = Literal["voice", "chat"]
JSON = dict[str, Any]

VIRTUAL_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_ALNUM = "0123456789abcdefghjkmnpqrstvwxyz"

MODELS: dict[str, int] = {
    "gemini-2.5-flash": 1_048_576,
    "gpt-4o-mini": 128_000,
    "claude-sonnet-4": 200_000,
    "glm-45-air-fp8": 131_072,
}
AUDIO_FORMATS = ["pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "ulaw_8000"]
WEBHOOK_TOOLS = [
    "lookup_order",
    "check_availability",
    "book_appointment",
    "get_account_balance",
    "search_knowledge_base",
    "create_ticket",
]
# What an escalating user says (--escalation-ratio); rules match "talk to a human".
ESCALATION = "Can I talk to a human, please?"
CLIENT_TOOLS = ["show_product_card", "open_checkout", "highlight_field", "set_volume"]
MCP_TOOLS = [
    ("svc_crm", "crm_find_contact", "Find a contact in the CRM"),
    ("svc_calendar", "calendar_list_events", "List calendar events"),
    ("svc_payments", "payments_refund", "Issue a refund"),
]
GUARDRAILS = ["prompt_injection", "profanity", "medical_and_legal", "harassment", "custom"]
CLIENT_ERRORS = ["audio_device_error", "playback_failed", "network_degraded", "tool_timeout"]

_SUBJECTS = [
    "my order",
    "the invoice",
    "my appointment",
    "the delivery",
    "my subscription",
    "the refund",
    "my password",
    "the booking",
    "my account",
    "the warranty",
]
_VERBS = ["check", "change", "cancel", "understand", "update", "confirm", "move", "track"]
_FILLERS = [
    "please",
    "today",
    "if possible",
    "as soon as possible",
    "for next week",
    "before Friday",
    "again",
    "for my partner",
]
_OPENERS = [
    "Sure,",
    "Of course,",
    "Absolutely,",
    "Got it,",
    "Thanks for waiting,",
    "Okay,",
    "Right,",
    "Let me see,",
]
_BODIES = [
    "I can help you with {s}.",
    "I have found {s} in our system.",
    "{s} is now updated.",
    "I see a note on {s}.",
    "the status of {s} looks good.",
    "I need one more detail about {s}.",
    "{s} will be processed within two days.",
]
_CLOSERS = [
    "Is there anything else?",
    "Does that work for you?",
    "Shall I continue?",
    "Anything else I can do?",
    "Would you like a confirmation email?",
]
_GREETINGS = [
    "Hello! How can I help you today?",
    "Hi there, thanks for calling. What can I do for you?",
    "Welcome back! How may I assist?",
    "Good day, you are speaking with the virtual assistant.",
]
_GOODBYES = [
    "Thanks for calling, goodbye!",
    "Have a great day, bye!",
    "Glad I could help. Goodbye!",
    "Take care, talk soon.",
]


def conversation_id(seed: int, number: int) -> str:
    """A stable id shaped like the upstream's (``conv_`` + 28 base32 characters)."""
    rng = random.Random(f"{seed}:{number}:id")
    return "conv_" + "".join(rng.choice(_ALNUM) for _ in range(28))


@dataclass(frozen=True)
class Agent:
    agent_id: str
    name: str


def make_agents(seed: int, count: int) -> list[Agent]:
    """The run's agents; ids derive from the seed only."""
    rng = random.Random(f"{seed}:agents")
    names = ["Support", "Sales", "Billing", "Booking", "Concierge", "Helpdesk", "Onboarding"]
    return [
        Agent(
            "agent_" + "".join(rng.choice(_ALNUM) for _ in range(28)),
            f"{names[i % len(names)]} agent {i + 1}",
        )
        for i in range(count)
    ]


@dataclass
class Frame:
    """One generated frame: its type, exact JSON text, and per-conversation index."""

    type: str
    text: str
    index: int
    event_id: int | None


@dataclass
class ScriptParams:
    turns: float = 6.0
    chat_ratio: float = 0.3
    escalation_ratio: float = 0.0
    repeat_ratio: float = 0.0  # share of frames that repeat an earlier frame's exact text
    malformed_ratio: float = 0.0  # share of frames that cannot be read (the DLQ's)


# Unreadable frames (``{n}``: the frame's index): cut short, not an object, no ``type``.
MALFORMED = (
    '{{"type":"agent_response","agent_response_event":{{"agent_response":"Let me check that ({n})',
    '["agent_response",{n}]',
    '{{"agent_response_event":{{"agent_response":"no type ({n})","event_id":{n}}}}}',
)

# Frames whose text legitimately repeats upstream: chat deltas, status and metadata frames.
REPEATABLE = frozenset(
    {
        "agent_chat_response_part",
        "agent_response_metadata",
        "agent_response_complete",
        "mcp_connection_status",
        "context_usage",
        "tentative_user_transcript",
        "internal_tentative_agent_response",
    }
)


@dataclass
class ConversationScript:
    """The frames of one conversation, produced on demand; commands steer it."""

    seed: int
    number: int
    agent: Agent
    params: ScriptParams = field(default_factory=ScriptParams)
    start_virtual: float = 0.0

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.seed}:{self.number}")
        self.timing = random.Random(f"{self.seed}:{self.number}:t")
        self.conversation_id = conversation_id(self.seed, self.number)
        self.kind: Kind = "chat" if self.rng.random() < self.params.chat_ratio else "voice"
        mean = self.params.turns
        self.turns = max(1, round(self.rng.uniform(0.5 * mean, 1.5 * mean)))
        self.model = self.rng.choice(list(MODELS))
        self.ends_with_end_call = self.rng.random() < 0.6
        # Its own stream, so that the ratio leaves every other frame of the seed unchanged.
        escalation = random.Random(f"{self.seed}:{self.number}:escalation")
        self.escalation_turn: int | None = (  # early on, so that there is time to act
            escalation.randrange(max(1, self.turns // 2))
            if escalation.random() < self.params.escalation_ratio
            else None
        )
        self._user_turns = 0
        self.now = self.start_virtual
        self.index = 0
        self.event_id = 0
        self.finished = False
        self.takeover = False
        self.termination_reason = ""
        self.messages = 0  # user and agent turns said so far (the REST message_count)
        self.tool_names: list[str] = []
        self.call_successful = "unknown"
        self._pending: deque[JSON] = deque()
        self._injections: deque[str] = deque()
        self._seen_tentative: set[str] = set()
        self._context_tokens = self.rng.randint(800, 2500)
        self._tool_seq = 0
        self._repeat_rng = random.Random(f"{self.seed}:{self.number}:repeat")
        self._malformed_rng = random.Random(f"{self.seed}:{self.number}:malformed")
        # Some chat conversations number their parts with strings (as the client-events page
        # shows): a choice of their own, so the other frames stay the same.
        self.string_part_ids = random.Random(f"{self.seed}:{self.number}:ids").random() < 0.3
        self._repeatable: list[Frame] = []
        self._gen = self._script()

    # ----- pull interface -------------------------------------------------------------------
    def next_gap(self, rate: float) -> float:
        """Virtual seconds until the next frame (exponential, mean ``1/rate``)."""
        return self.timing.expovariate(rate)

    def next_frame(self, now: float) -> Frame | None:
        """The next frame at virtual time ``now``; None once the script is over."""
        if self.finished:
            return None
        self.now = now
        extra = self._repeat() or self._malformed()
        if extra is not None:
            return extra
        if not self._pending:
            try:
                self._pending.append(next(self._gen))
            except StopIteration:
                self.finished = True
                if not self.termination_reason:
                    self.termination_reason = (
                        "end_call tool" if self.ends_with_end_call else ("client disconnected")
                    )
                self.call_successful = "success" if self.rng.random() < 0.8 else "failure"
                return None
        return self._encode(self._pending.popleft())

    def _repeat(self) -> Frame | None:
        """Now and then the exact text of an earlier repeatable frame: half the time one of the
        last few (a chat delta or status frame sent again), else any earlier one."""
        ratio = self.params.repeat_ratio
        if not ratio or not self._repeatable or self._repeat_rng.random() >= ratio:
            return None
        pool = self._repeatable
        near = self._repeat_rng.random() < 0.5
        old = pool[self._repeat_rng.randrange(max(0, len(pool) - 3) if near else 0, len(pool))]
        index = self.index
        self.index += 1
        return Frame(old.type, old.text, index, old.event_id)

    def _malformed(self) -> Frame | None:
        """Now and then a frame no reader can parse (see the module docstring)."""
        ratio = self.params.malformed_ratio
        if not ratio or self._malformed_rng.random() >= ratio:
            return None
        index = self.index
        self.index += 1
        text = self._malformed_rng.choice(MALFORMED).format(n=index)
        return Frame("malformed", text, index, None)

    # ----- command effects (see simulator.commands) -------------------------------------------
    def end_call(self, now: float) -> list[Frame]:
        """End now: the agent's end_call system tool fires, nothing else follows."""
        self.now = now
        self._pending.clear()
        eid = self._turn()
        frames = [self._encode(f) for f in self._system_tool("end_call", eid, '{"ended":true}')]
        self.finished = True
        self.termination_reason = "end_call command"
        self.call_successful = "unknown"
        return frames

    def transfer(self, now: float, phone_number: str) -> list[Frame]:
        """Transfer to a number: the system tool succeeds and the call leaves the agent."""
        self.now = now
        self._pending.clear()
        eid = self._turn()
        result = orjson.dumps({"status": "success", "transfer_number": phone_number}).decode()
        frames = [self._encode(f) for f in self._system_tool("transfer_to_number", eid, result)]
        self.finished = True
        self.termination_reason = "transferred to number"
        self.call_successful = "success"
        return frames

    def error(self, now: float, code: int, number: int) -> Frame:
        """The ``error`` frame the upstream sends before closing with ``code`` (the ``number``
        of the drop keeps its text unique)."""
        self.now = now
        kind = "unknown" if code == 1011 else "transport_receive_timeout"
        return self._encode(
            {
                "type": "error",
                "error_event": {
                    "code": code,
                    "error_type": kind,
                    "reason": f"connection dropped ({number})",
                },
            }
        )

    def human_message(self, text: str) -> None:
        """Queue a human operator's message; emitted at the next turn boundary."""
        self._injections.append(text)

    # ----- helpers ----------------------------------------------------------------------------
    def _encode(self, payload: JSON) -> Frame:
        index = self.index
        self.index += 1
        kind = payload["type"]
        body = next((v for k, v in payload.items() if k != "type"), None)
        eid = body.get("event_id") if isinstance(body, dict) else None
        self._transcribe(kind, body)
        frame = Frame(
            kind, orjson.dumps(payload).decode(), index, eid if isinstance(eid, int) else None
        )
        if kind in REPEATABLE:
            self._repeatable.append(frame)
        return frame

    def _transcribe(self, kind: str, body: Any) -> None:
        """Count the turns and name the tools for the REST summary; the transcript itself is
        rebuilt from the frames (``simulator.transcript``), so it cannot disagree with them."""
        if kind in ("user_transcript", "agent_response"):
            self.messages += 1
        elif kind == "agent_tool_request":
            name = body["tool_name"]
            if name not in self.tool_names:
                self.tool_names.append(name)

    def _secs(self) -> int:
        return max(0, int(self.now - self.start_virtual))

    def _turn(self) -> int:
        self.event_id += 1
        return self.event_id

    def _timestamp(self) -> str:
        moment = VIRTUAL_EPOCH + timedelta(seconds=self.now)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _tool_call_id(self, prefix: str) -> str:
        self._tool_seq += 1
        tail = "".join(self.rng.choice(_ALNUM) for _ in range(12))
        return f"{prefix}_{self._tool_seq:03d}{tail}"

    def _user_text(self) -> str:
        r = self.rng
        return (
            f"I would like to {r.choice(_VERBS)} {r.choice(_SUBJECTS)} {r.choice(_FILLERS)}"
        ).strip()

    def _escalated(self, text: str) -> str:
        """The final transcript of a user turn; the escalation turn ends asking for a human
        (after the tentative transcripts, so that no other random draw changes)."""
        turn = self._user_turns
        self._user_turns += 1
        return f"{text} {ESCALATION}" if turn == self.escalation_turn else text

    def _agent_text(self) -> str:
        r = self.rng
        body = r.choice(_BODIES).format(s=r.choice(_SUBJECTS))
        return f"{r.choice(_OPENERS)} {body} {r.choice(_CLOSERS)}"

    def _drain_injections(self) -> Iterator[JSON]:
        while self._injections:
            text = self._injections.popleft()
            eid = self._turn()
            yield {
                "type": "agent_typing",
                "agent_typing_event": {"is_typing": True, "duration_ms": 200 + eid},
            }
            yield {
                "type": "agent_response",
                "agent_response_event": {"agent_response": text, "event_id": eid},
            }

    def operator(self, now: float, connected: bool) -> Frame:
        """``external_agent_connected`` / ``external_agent_disconnected``: a human operator
        takes over or hands back (the event object is empty upstream; a turn id keeps the
        text unique)."""
        self.now = now
        kind = "external_agent_connected" if connected else "external_agent_disconnected"
        return self._encode({"type": kind, f"{kind}_event": {"event_id": self._turn()}})

    # ----- the script -------------------------------------------------------------------------
    def _script(self) -> Iterator[JSON]:
        r = self.rng
        voice = self.kind == "voice"
        out_fmt = r.choice(AUDIO_FORMATS) if voice else "pcm_16000"
        in_fmt = "ulaw_8000" if out_fmt == "ulaw_8000" else r.choice(AUDIO_FORMATS[:2])
        yield {
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": self.conversation_id,
                "agent_output_audio_format": out_fmt,
                "user_input_audio_format": in_fmt,
            },
        }
        yield {
            "type": "asr_initiation_metadata",
            "asr_initiation_metadata_event": {
                "asr_model": "scribe_realtime" if voice else "none",
                "language": "en",
                "sample_rate": int(in_fmt.split("_")[1]),
            },
        }
        integrations = [
            {
                "integration_id": sid,
                "integration_type": "mcp_server" if i % 2 == 0 else "mcp_integration",
                "is_connected": r.random() < 0.9,
                "tool_count": r.randint(1, 12),
            }
            for i, (sid, _n, _d) in enumerate(MCP_TOOLS[: r.randint(0, len(MCP_TOOLS))])
        ]
        yield {
            "type": "mcp_connection_status",
            "mcp_connection_status": {"integrations": integrations},
        }
        # The agent's first message.
        yield from self._agent_turn(r.choice(_GREETINGS), first=True)
        for turn in range(self.turns):
            yield from self._drain_injections()
            yield from self._user_turn()
            yield from self._drain_injections()
            if self.takeover:
                continue  # a human operator answers instead (send_human_message)
            last = turn == self.turns - 1
            yield from self._agent_turn(
                r.choice(_GOODBYES) if last else self._agent_text(), last=last
            )
        yield from self._drain_injections()

    def _user_turn(self) -> Iterator[JSON]:
        r = self.rng
        eid = self._turn()
        text = self._user_text()
        if self.kind == "voice":
            words = text.split()
            cuts = sorted(r.sample(range(1, len(words)), k=min(len(words) - 1, r.randint(1, 3))))
            for cut in cuts:
                yield {
                    "type": "tentative_user_transcript",
                    "tentative_user_transcription_event": {
                        "user_transcript": " ".join(words[:cut]),
                        "event_id": eid,
                    },
                }
        yield {
            "type": "user_transcript",
            "user_transcription_event": {
                "user_transcript": self._escalated(text),
                "event_id": eid,
            },
        }
        if self.kind == "voice" and r.random() < 0.04:
            yield {
                "type": "dtmf_request",
                "dtmf_request_event": {
                    "event_id": eid,
                    "digits": "".join(r.choice("0123456789#") for _ in range(r.randint(1, 6))),
                    "prompt": "Please enter your account number.",
                },
            }

    def _agent_turn(self, text: str, first: bool = False, last: bool = False) -> Iterator[JSON]:
        r = self.rng
        eid = self._turn()
        if not first:
            yield from self._tools(eid)
        if self.kind == "voice":
            words = text.split()
            tentative = " ".join(words[: max(1, len(words) // 2)])
            extra = len(words) // 2
            while tentative in self._seen_tentative:
                extra += 1
                tentative = " ".join(words[:extra]) if extra <= len(words) else (f"{text} ({eid})")
            self._seen_tentative.add(tentative)
            yield {
                "type": "internal_tentative_agent_response",
                "tentative_agent_response_internal_event": {"tentative_agent_response": tentative},
            }
        else:
            yield from self._chat_parts(text, eid)
        if not first and r.random() < 0.04:
            yield {
                "type": "guardrail_triggered",
                "guardrail_triggered_event": {
                    "event_id": eid,
                    "guardrail_type": r.choice(GUARDRAILS),
                    "action": r.choice(["warn", "block"]),
                },
            }
        yield {
            "type": "agent_response",
            "agent_response_event": {"agent_response": text, "event_id": eid},
        }
        yield {
            "type": "agent_response_metadata",
            "agent_response_metadata_event": {
                "metadata": {
                    "llm": self.model,
                    "latency_ms": r.randint(180, 1400),
                    "tts_characters": len(text),
                },
                "event_id": eid,
            },
        }
        self._context_tokens += r.randint(120, 900)
        yield {
            "type": "context_usage",
            "context_usage_event": {
                "event_id": eid,
                "model": self.model,
                "context_tokens": self._context_tokens,
                "context_limit_tokens": MODELS[self.model],
            },
        }
        if r.random() < 0.25:
            yield {
                "type": "agent_response_complete",
                "agent_response_complete_event": {"event_id": eid},
            }
        if r.random() < 0.015:
            yield {
                "type": "client_error",
                "client_error_event": {
                    "event_id": eid,
                    "error_type": r.choice(CLIENT_ERRORS),
                    "message": "The client reported a recoverable error.",
                },
            }
        if self.kind == "voice" and not last and not first and r.random() < 0.2:
            yield {"type": "interruption", "interruption_event": {"event_id": eid}}
            words = text.split()
            corrected = " ".join(words[: max(1, len(words) // 3)]) + "..."
            yield {
                "type": "agent_response_correction",
                "agent_response_correction_event": {
                    "original_agent_response": text,
                    "corrected_agent_response": corrected,
                    "event_id": eid,
                },
            }
        if last and self.ends_with_end_call:
            yield from self._system_tool("end_call", eid, '{"ended":true}')

    def _chat_parts(self, text: str, turn: int) -> Iterator[JSON]:
        r = self.rng
        eid: int | str = f"evt_{turn:06d}" if self.string_part_ids else turn
        words = text.split()
        chunks: list[str] = []
        i = 0
        while i < len(words):
            n = r.randint(1, 4)
            chunk = " ".join(words[i : i + n]) + (" " if i + n < len(words) else "")
            if chunk in chunks and chunks:
                chunks[-1] += chunk
            else:
                chunks.append(chunk)
            i += n
        yield {
            "type": "agent_chat_response_part",
            "text_response_part": {"text": "", "type": "start", "event_id": eid},
        }
        for chunk in chunks:
            yield {
                "type": "agent_chat_response_part",
                "text_response_part": {"text": chunk, "type": "delta", "event_id": eid},
            }
        yield {
            "type": "agent_chat_response_part",
            "text_response_part": {"text": "", "type": "stop", "event_id": eid},
        }

    def _system_tool(self, name: str, eid: int, result: str) -> Iterator[JSON]:
        call_id = self._tool_call_id("toolu")
        yield {
            "type": "agent_tool_request",
            "agent_tool_request": {
                "tool_name": name,
                "tool_call_id": call_id,
                "tool_type": "system",
                "event_id": eid,
            },
        }
        response = {
            "tool_name": name,
            "tool_call_id": call_id,
            "tool_type": "system",
            "is_error": False,
            "is_called": True,
            "event_id": eid,
        }
        yield {"type": "agent_tool_response", "agent_tool_response": response}
        yield {
            "type": "agent_tool_response_full_payload",
            "agent_tool_response_full_payload": {
                **response,
                "full_tool_result": result,
                "is_blocked": False,
                "truncated": False,
            },
        }

    def _tools(self, eid: int) -> Iterator[JSON]:
        r = self.rng
        if r.random() < 0.22:
            name = r.choice(WEBHOOK_TOOLS)
            call_id = self._tool_call_id("toolu")
            error = r.random() < 0.15
            yield {
                "type": "agent_tool_request",
                "agent_tool_request": {
                    "tool_name": name,
                    "tool_call_id": call_id,
                    "tool_type": "webhook",
                    "event_id": eid,
                },
            }
            response = {
                "tool_name": name,
                "tool_call_id": call_id,
                "tool_type": "webhook",
                "is_error": error,
                "is_called": True,
                "event_id": eid,
            }
            yield {"type": "agent_tool_response", "agent_tool_response": response}
            result = (
                {"error": "upstream timed out"}
                if error
                else {
                    "ok": True,
                    "reference": f"REF-{r.randint(10000, 99999)}",
                    "items": [r.choice(_SUBJECTS) for _ in range(r.randint(1, 3))],
                }
            )
            yield {
                "type": "agent_tool_response_full_payload",
                "agent_tool_response_full_payload": {
                    **response,
                    "full_tool_result": orjson.dumps(result).decode(),
                    "is_blocked": False,
                    "truncated": False,
                },
            }
        if r.random() < 0.08:
            name = r.choice(CLIENT_TOOLS)
            call_id = self._tool_call_id("client")
            yield {
                "type": "agent_tool_request",
                "agent_tool_request": {
                    "tool_name": name,
                    "tool_call_id": call_id,
                    "tool_type": "client",
                    "event_id": eid,
                },
            }
            yield {
                "type": "client_tool_call",
                "client_tool_call": {
                    "tool_name": name,
                    "tool_call_id": call_id,
                    "parameters": {"item": r.choice(_SUBJECTS), "priority": r.randint(1, 5)},
                    "event_id": eid,
                },
            }
            yield {
                "type": "agent_tool_response",
                "agent_tool_response": {
                    "tool_name": name,
                    "tool_call_id": call_id,
                    "tool_type": "client",
                    "is_error": False,
                    "is_called": True,
                    "event_id": eid,
                },
            }
        if r.random() < 0.08:
            service, name, description = r.choice(MCP_TOOLS)
            base = {
                "service_id": service,
                "tool_call_id": self._tool_call_id("mcp"),
                "tool_name": name,
                "tool_description": description,
                "parameters": {"query": r.choice(_SUBJECTS)},
                "timestamp": self._timestamp(),
            }
            yield {"type": "mcp_tool_call", "mcp_tool_call": {**base, "state": "loading"}}
            if r.random() < 0.35:
                yield {
                    "type": "mcp_tool_call",
                    "mcp_tool_call": {
                        **base,
                        "state": "awaiting_approval",
                        "approval_timeout_secs": 300,
                    },
                }
            if r.random() < 0.8:
                yield {
                    "type": "mcp_tool_call",
                    "mcp_tool_call": {
                        **base,
                        "state": "success",
                        "result": [{"type": "text", "text": f"Found {r.randint(0, 9)} records"}],
                    },
                }
            else:
                yield {
                    "type": "mcp_tool_call",
                    "mcp_tool_call": {
                        **base,
                        "state": "failure",
                        "error_message": "MCP server returned 502",
                    },
                }
