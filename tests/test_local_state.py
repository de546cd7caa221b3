"""The local table stores survive an orderly stop and are discarded after any other."""

from __future__ import annotations

from pathlib import Path

from processors.local_state import ORDERLY_STOP, discard_after_crash, mark_orderly_stop


def _stores(datadir: Path) -> Path:
    tabledir = datadir / "v1" / "tables"
    (tabledir / "conversations-0.db").mkdir(parents=True)
    (tabledir / "conversations-0.db" / "000001.log").write_bytes(b"state")
    return tabledir


def test_stores_after_an_orderly_stop_are_kept_once(tmp_path: Path) -> None:
    tabledir = _stores(tmp_path)
    mark_orderly_stop(tmp_path)
    assert not discard_after_crash(tmp_path, tabledir)
    assert (tabledir / "conversations-0.db" / "000001.log").read_bytes() == b"state"
    # the mark is consumed: a crash of this run leaves none behind
    assert not (tmp_path / ORDERLY_STOP).exists()
    assert discard_after_crash(tmp_path, tabledir)
    assert not tabledir.exists()


def test_stores_without_the_mark_are_discarded(tmp_path: Path) -> None:
    tabledir = _stores(tmp_path)
    assert discard_after_crash(tmp_path, tabledir)
    assert not tabledir.exists()
    assert tmp_path.exists()


def test_a_first_start_has_nothing_to_discard(tmp_path: Path) -> None:
    assert not discard_after_crash(tmp_path, tmp_path / "v1" / "tables")
