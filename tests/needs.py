"""Missing external tools: a skip with directions locally, a failure in CI (where all must run)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing_tool(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} — CI must provide it (see .ci/run)")
    pytest.skip(reason)
