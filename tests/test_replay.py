"""Replay de-duplication against a model of the upstream's replay-on-connect behaviour."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.replay import REPLAY_SIZE, ReplayFilter, event_key, frame_digest


class Session:
    """Feeds a ReplayFilter the way a monitor socket would and records what gets published."""

    def __init__(self) -> None:
        self.filter = ReplayFilter()
        self.now = 0.0
        self.published: list[str] = []
        self.keys: list[str] = []
        self.gaps = 0

    def connect(self, server: list[str]) -> None:
        self.now += 1.0
        self._gap(self.filter.connected(self.now))
        for text in server[-REPLAY_SIZE:]:  # the burst: back to back
            self.now += 0.001
            self._frame(text)

    def live(self, text: str) -> None:
        self.now += 0.5
        self._frame(text)

    def _frame(self, text: str) -> None:
        digest = frame_digest(text.encode())
        verdict, gap = self.filter.observe(digest, self.now)
        self._gap(gap)
        if not verdict.duplicate:
            self.published.append(text)
            self.keys.append(event_key("c1", digest, verdict.occurrence))

    def _gap(self, gap: object) -> None:
        if gap is not None:
            self.gaps += 1


@given(
    total=st.integers(1, 400),
    cuts=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 99)), max_size=6),
    shuffle_seed=st.integers(0, 2**32),
)
@settings(max_examples=150, deadline=None)
def test_unique_frames_published_exactly_once_when_replay_covers(
    total: int, cuts: list[tuple[int, int]], shuffle_seed: int
) -> None:
    """Disconnects that miss fewer than 100 frames lose nothing and duplicate nothing, even
    when live frames arrive out of generation order."""
    frames = [f'{{"type":"agent_response","n":{i}}}' for i in range(total)]
    rng = random.Random(shuffle_seed)
    for i in range(total - 1):  # local reordering of the live stream
        if rng.random() < 0.3:
            frames[i], frames[i + 1] = frames[i + 1], frames[i]
    disconnect_at = {at: missed for at, missed in cuts}
    session = Session()
    server: list[str] = []
    session.connect(server)
    i = 0
    while i < total:
        missed = disconnect_at.pop(i, None)
        if missed is not None:
            server.extend(frames[i : i + missed])  # generated while we were away
            i += missed
            session.connect(server)
            continue
        server.append(frames[i])
        session.live(frames[i])
        i += 1
    assert sorted(session.published) == sorted(frames)
    assert len(set(session.keys)) == len(session.keys)
    assert session.gaps == 0


def test_identical_frames_that_repeat_live_are_all_kept() -> None:
    """Two identical frames are two events, both live and through a reconnect's replay."""
    ping = '{"type":"agent_response_complete"}'
    session = Session()
    server: list[str] = []
    session.connect(server)
    for text in ["a", ping, "b", ping]:
        server.append(text)
        session.live(text)
    session.connect(server)  # replay of all four: all duplicates
    server.append(ping)
    session.live(ping)  # a third, live: kept
    assert session.published == ["a", ping, "b", ping, ping]
    assert len(set(session.keys)) == 5


def test_identical_frame_missed_during_disconnect_is_recovered() -> None:
    ping = '{"type":"agent_response_complete"}'
    session = Session()
    server = ["a", ping]
    session.connect([])
    for text in server:
        session.live(text)
    server += ["b", ping]  # missed while disconnected
    session.connect(server)
    assert session.published == ["a", ping, "b", ping]


def test_replay_that_cannot_cover_the_disconnect_reports_a_gap() -> None:
    session = Session()
    server = [f"f{i}" for i in range(50)]
    session.connect([])
    for text in server:
        session.live(text)
    server += [f"g{i}" for i in range(150)]  # 150 missed: replay holds only the last 100
    session.connect(server)
    session.live("h")
    assert session.gaps == 1
    assert session.published[-101:-1] == server[-100:]


def test_keys_are_the_same_for_any_collector_that_saw_the_same_frames() -> None:
    rng = random.Random(4)
    texts = [f"t{rng.randrange(5)}" for _ in range(60)]  # many identical repeats
    a, b = Session(), Session()
    a.connect([])
    b.connect([])
    for text in texts:
        a.live(text)
        b.live(text)
    assert a.keys == b.keys
    assert len(set(a.keys)) == 60
