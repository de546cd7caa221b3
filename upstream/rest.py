"""The one REST client of the upstream: ``GET`` with one retry policy and one error type.

HTTP 429 and 5xx, network errors and unreadable bodies are retried after ``Retry-After`` when
given, else after a jittered exponential delay (:class:`upstream.backoff.Backoff`). Any other
status is the caller's to interpret. The API key travels only in the ``xi-api-key`` header and
never appears in errors or logs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from convostream.logs import get_logger
from upstream.backoff import Backoff, retry_after

log = get_logger("upstream.rest")


class UpstreamError(ConnectionError):
    """The upstream could not answer: network, 401, repeated 429/5xx.

    ``retriable``: asking again later may help (busy, unreachable); false when it will not
    (a refused key, an unexpected answer). A ``ConnectionError`` so that callers which treat
    the upstream as one more connection keep doing so.
    """

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` tries, waiting ``Backoff(backoff_base, backoff_max)`` or ``Retry-After``
    (capped at ``backoff_max``) between them."""

    attempts: int
    backoff_base: float
    backoff_max: float


class UpstreamClient:
    """``GET`` JSON from the upstream; one ``aiohttp`` session, opened on first use.

    ``on_error`` is told each failed try (an HTTP status or an exception's class name), for
    the caller's metrics.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        retry: RetryPolicy,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"xi-api-key": api_key} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry = retry
        self._on_error = on_error or (lambda _reason: None)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> tuple[int, Any]:
        """``(status, JSON body)`` of the first answer that is not 429/5xx; ``UpstreamError``
        (retriable) after the policy's attempts."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        retry = self._retry
        backoff = Backoff(retry.backoff_base, retry.backoff_max)
        last = ""
        for attempt in range(1, retry.attempts + 1):
            wait: float | None = None
            try:
                async with self._session.get(self._base + path, params=list(params)) as resp:
                    if resp.status == 429 or resp.status >= 500:
                        last = f"HTTP {resp.status}"
                        self._on_error(str(resp.status))
                        wait = retry_after(
                            resp.headers.get("Retry-After"), time.time(), retry.backoff_max
                        )
                        log.warning("upstream busy", path=path, status=resp.status, retry=attempt)
                    else:
                        return resp.status, await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last = type(exc).__name__
                self._on_error(last)
                log.warning("REST request failed", path=path, error=last)
            if attempt == retry.attempts:
                break
            delay = backoff.next_delay()
            await asyncio.sleep(delay if wait is None else max(wait, delay / 2))
        raise UpstreamError(
            f"GET {path}: no answer after {retry.attempts} attempts (last: {last})",
            retriable=True,
        )
