"""The simulator's record of one conversation: its script, REST status and replay buffer."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from simulator.script import ConversationScript

REPLAY_SIZE = 100


@dataclass(eq=False)
class SimConversation:
    """A conversation as the simulated upstream knows it.

    ``status`` moves ``initiated`` → ``in-progress`` → ``processing`` → ``done`` (or
    ``failed``); the first frame is generated as it becomes ``in-progress``. ``ended``
    is set when the script is over (or a command ended the call); the status leaves
    ``in-progress`` only once the last frame has been sent, so a monitor that reconnects in
    between still gets it.
    ``replay`` keeps the last :data:`REPLAY_SIZE` frame texts in generation order for monitors
    that (re)connect.
    ``monitors`` holds the open monitor connections (server objects).
    ``generated`` keeps every frame of the types a transcript is built from, with its time in
    the call: the REST transcript is built from it (``simulator.transcript``).
    """

    seq: int
    slot: int
    script: ConversationScript
    start_unix: float
    status: str = "in-progress"
    streamed: frozenset[str] | None = None  # the agent's monitoring_events; None: every type
    fails: bool = False  # ends "failed" rather than "done"
    end_unix: float | None = None
    ended: bool = False
    frames: int = 0
    replay: deque[str] = field(default_factory=lambda: deque(maxlen=REPLAY_SIZE))
    monitors: set[Any] = field(default_factory=set)
    generated: list[tuple[float, str]] = field(default_factory=list)  # (secs in call, frame)

    @property
    def conversation_id(self) -> str:
        return self.script.conversation_id

    @property
    def agent_id(self) -> str:
        return self.script.agent.agent_id

    @property
    def live(self) -> bool:
        return self.status == "in-progress"

    def duration(self, now_unix: float) -> int:
        end = self.end_unix if self.end_unix is not None else now_unix
        return max(0, int(end - self.start_unix))
