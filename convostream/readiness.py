"""What a component depends on, checked from its own event loop: at start and behind /readyz.

- At start, :func:`dependencies_ready` waits for the broker (and the schema registry when one is
  configured) with logged, bounded retries: a component started before Kafka comes up waits for
  it instead of crashing, gives up after ``startup_timeout`` (:class:`Unreachable`, exit code 3)
  and stops at once on SIGTERM while it waits.
- While it runs, :func:`watch` keeps a readiness condition of :class:`~convostream.ops.Health`
  current by repeating a check every ``health_interval`` seconds.

A check returns ``None`` when the dependency answers, else a short reason that names no secret
(a registry URL may carry credentials, so it is never part of a reason). A broker that refuses
the component's credentials or certificate raises :class:`Refused` instead: waiting would not
help, so the component exits at once with code 2 (bad configuration). So does a group session
the broker will refuse (:func:`session_refusal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from convostream.kafka_security import PLAINTEXT, KafkaSecurity
from convostream.logs import get_logger
from convostream.ops import Health
from convostream.settings import CommonSettings
from schemas.registry import ANONYMOUS, RegistryAccess

log = get_logger(__name__)

Check = Callable[[], Awaitable[str | None]]
T = TypeVar("T")

CHECK_TIMEOUT = 5.0
FIRST_RETRY = 0.5
LONGEST_RETRY = 5.0


class Unreachable(Exception):
    """A dependency did not answer within the start-up budget."""


class Refused(Exception):
    """The broker answered but refused the credentials or the TLS handshake, or will refuse
    every group join."""


_REFUSALS = (
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
    ssl.SSLError,
)


async def broker_problem(
    bootstrap: str, security: KafkaSecurity = PLAINTEXT, timeout: float = CHECK_TIMEOUT
) -> str | None:
    """Ask for cluster metadata on a fresh connection, as any new client would."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(timeout * 1000),
        **security.client_kwargs(),
    )
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            await admin.describe_cluster()
    except (KafkaError, OSError, TimeoutError) as exc:
        refused = await refusal(bootstrap, security, timeout)
        if refused is not None:
            raise Refused(refused) from None
        return f"broker unreachable ({type(exc).__name__})"
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return None


async def refusal(
    bootstrap: str, security: KafkaSecurity, timeout: float = CHECK_TIMEOUT
) -> str | None:
    """Why the broker refuses these credentials or fails TLS verification, None if it does not.

    aiokafka reports any failed bootstrap as unreachable; one direct connection tells a
    refusal (bad password, unknown mechanism, untrusted certificate) from a broker that is down.
    """
    if security is PLAINTEXT:
        return None
    host, port, _ = collect_hosts(bootstrap, randomize=False)[0]
    try:
        async with asyncio.timeout(timeout):
            conn = await create_conn(
                host, port, request_timeout_ms=int(timeout * 1000), **security.client_kwargs()
            )
        conn.close()
    except _REFUSALS as exc:
        return f"Kafka at {bootstrap} refused the connection: {exc}"
    except (KafkaError, OSError, TimeoutError):
        return None
    return None


SESSION_LIMITS = ("group.min.session.timeout.ms", "group.max.session.timeout.ms")


async def session_refusal(settings: CommonSettings, timeout: float = CHECK_TIMEOUT) -> str | None:
    """Why every group join will be refused for its session timeout, None if it will not be or
    the broker does not say.

    Kafka refuses a JoinGroup whose session lies outside ``group.min.session.timeout.ms`` ..
    ``group.max.session.timeout.ms`` (InvalidSessionTimeoutError): an aiokafka consumer then
    fails deep in its start with a traceback, and Faust's consumer retries for ever while the
    worker looks alive. One DescribeConfigs of a broker at start turns that into an error that
    names the setting. A broker that does not answer it (no DESCRIBE_CONFIGS right, a broker
    without the API) is not checked.
    """
    session = settings.group_session_timeout_ms
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        request_timeout_ms=int(timeout * 1000),
        **settings.kafka_security().client_kwargs(),
    )
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            node = (await admin.describe_cluster())["brokers"][0]["node_id"]
            wanted = dict.fromkeys(SESSION_LIMITS)
            resource = ConfigResource(ConfigResourceType.BROKER, str(node), wanted)
            responses = await admin.describe_configs([resource])
        entries = {e[0]: e[1] for r in responses for res in r.resources for e in res[4]}
        low, high = (int(entries[name]) for name in SESSION_LIMITS)
    except (KafkaError, OSError, TimeoutError, LookupError, TypeError, ValueError) as exc:
        log.debug("group session limits not readable; not checked", error=type(exc).__name__)
        return None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    if low <= session <= high:
        return None
    return (
        f"CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS={session} is outside the {low}..{high} ms the "
        f"broker accepts ({SESSION_LIMITS[0]} .. {SESSION_LIMITS[1]}): it would refuse every "
        "consumer-group join"
    )


async def registry_problem(
    url: str, access: RegistryAccess = ANONYMOUS, timeout: float = CHECK_TIMEOUT
) -> str | None:
    """``GET /subjects``, which every Confluent-compatible registry answers."""
    base, headers = access.endpoint(url)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(base / "subjects", headers=headers, ssl=access.ssl()) as resp,
        ):
            if resp.status >= 400:
                return f"schema registry answered HTTP {resp.status}"
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return f"schema registry unreachable ({type(exc).__name__})"
    return None


def checks(settings: CommonSettings) -> dict[str, Check]:
    """The dependencies every component has: the broker, and the registry if configured."""
    security = settings.kafka_security()
    out: dict[str, Check] = {"broker": lambda: broker_problem(settings.kafka_bootstrap, security)}
    url = settings.schema_registry_url
    if url:
        access = settings.registry_access()
        out["schema_registry"] = lambda: registry_problem(url, access)
    return out


async def until_stopped(awaitable: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``awaitable``'s result, or None (and ``awaitable`` cancelled) as soon as ``stop`` is set."""
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


async def dependencies_ready(settings: CommonSettings, stop: asyncio.Event) -> bool:
    """Wait until every dependency answers: True, or False when stopped first.

    Raises :class:`Unreachable` once ``settings.startup_timeout`` has passed, and
    :class:`Refused` when the broker will refuse the group session (:func:`session_refusal`).
    """
    deadline = time.monotonic() + settings.startup_timeout
    for name, check in checks(settings).items():
        delay = FIRST_RETRY
        attempt = 0
        while True:
            attempt += 1
            problem = await until_stopped(check(), stop)
            if stop.is_set():
                log.info("stopped while waiting for a dependency", dependency=name)
                return False
            if problem is None:
                if attempt > 1:
                    log.info("dependency reachable", dependency=name, attempts=attempt)
                break
            left = deadline - time.monotonic()
            if left <= 0:
                log.error(
                    "dependency unreachable; giving up",
                    dependency=name,
                    problem=problem,
                    attempts=attempt,
                    startup_timeout=settings.startup_timeout,
                )
                raise Unreachable(f"{name}: {problem}")
            wait = min(delay, left)
            log.warning(
                "dependency unreachable; retrying",
                dependency=name,
                problem=problem,
                attempt=attempt,
                retry_in=round(wait, 2),
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
            if stop.is_set():
                log.info("stopped while waiting for a dependency", dependency=name)
                return False
            delay = min(delay * 2, LONGEST_RETRY)
    if settings.broker_compat != "tansu":  # Tansu drops the connection on DescribeConfigs
        refused = await session_refusal(settings)
        if refused is not None:
            raise Refused(refused)
    return True


async def watch(health: Health, name: str, check: Check, interval: float) -> None:
    """Keep condition ``name`` of ``health`` current; logs each change, not each check."""
    health.declare(name)
    was: bool | None = None
    while True:
        try:
            problem = await check()
        except Refused as exc:  # credentials revoked while running: not ready, say why
            problem = str(exc)
        health.set(name, problem is None, problem or "")
        if was is not (problem is None):
            if problem is None:
                log.info("readiness condition met", condition=name)
            else:
                log.warning("readiness condition failing", condition=name, problem=problem)
            was = problem is None
        await asyncio.sleep(interval)
