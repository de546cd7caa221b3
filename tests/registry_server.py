"""Schema registries for tests: Apicurio Registry 2.6 as its own process (Confluent-compatible
API under ``/apis/ccompat/v7``), and :class:`FakeRegistry`, an in-process stand-in for the few
Confluent endpoints the serde uses, with basic auth and a switchable outage.

Maven Central carries the Quarkus distribution of the registry app
(``io.apicurio:apicurio-registry-app:<version>:zip:all``: a runner jar and its ``lib/``); ``mvn``
fetches it once into ``.cache/apicurio`` and Java 17 runs it with in-memory storage on a free
loopback port. (Registry 3.x needs Java 21; 2.6 is the newest line that runs on Java 17.)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from filelock import FileLock

from convostream.broker import free_port
from tests.needs import missing_tool

VERSION = "2.6.13.Final"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{VERSION}:zip:all"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "apicurio"
HEAP = "-Xmx384m"


def _distribution() -> Path:
    """The unpacked distribution (downloaded on first use)."""
    home = CACHE / VERSION
    runner = home / f"apicurio-registry-app-{VERSION}-runner.jar"
    if runner.exists():
        return runner
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(CACHE / f"{VERSION}.lock"):  # parallel test workers download it once
        if not runner.exists():
            _download(home)
    return runner


def _download(home: Path) -> None:
    """Fetch the distribution with Maven and unpack it into ``home``."""
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            missing_tool(f"{tool} is needed to fetch and run Apicurio Registry from Maven Central")
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "dependency:copy",
            f"-Dartifact={ARTIFACT}",
            f"-DoutputDirectory={CACHE}",
        ],
        check=True,
        timeout=900,
    )
    archive = CACHE / f"apicurio-registry-app-{VERSION}-all.zip"
    partial = CACHE / f"{VERSION}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(partial)
    partial.rename(home)
    archive.unlink()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def apicurio_registry(log: Path, start_timeout: float = 180.0) -> Iterator[str]:
    """Run the registry until the block ends; yields its Confluent-compatible base URL."""
    runner = _distribution()
    port = free_port()
    url = f"http://127.0.0.1:{port}/apis/ccompat/v7"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "java",
                HEAP,
                "-Dquarkus.http.host=127.0.0.1",
                f"-Dquarkus.http.port={port}",
                "-jar",
                str(runner),
            ],
            cwd=runner.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + start_timeout
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Apicurio Registry did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:  # the JVM did not stop in time
            proc.kill()
            proc.wait()


@dataclass
class FakeRegistry:
    """Just enough of the Confluent Schema Registry REST API, with basic auth."""

    ids: dict[str, int] = field(default_factory=dict)  # schema text -> id
    subjects: dict[str, list[int]] = field(default_factory=dict)
    gets: list[int] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    outage: int = 0  # answer this many requests with 503 first

    def app(self) -> web.Application:
        @web.middleware
        async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.headers.get("Authorization") != "Basic dXNlcjpwYXNzd29yZA==":
                return web.json_response({"error_code": 401, "message": "Unauthorized"}, status=401)
            self.methods.append(request.method)
            if self.outage > 0:
                self.outage -= 1
                return web.json_response({"error_code": 50301, "message": "down"}, status=503)
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[auth])
        app.router.add_get("/subjects", self.list_subjects)
        app.router.add_post("/subjects/{subject}/versions", self.register)
        app.router.add_get("/subjects/{subject}/versions", self.versions)
        app.router.add_get("/subjects/{subject}/versions/{version}", self.version)
        app.router.add_get("/schemas/ids/{id}", self.get)
        return app

    def _text(self, schema_id: int) -> str | None:
        return next((t for t, known in self.ids.items() if known == schema_id), None)

    async def list_subjects(self, request: web.Request) -> web.Response:
        return web.json_response(sorted(self.subjects))

    async def versions(self, request: web.Request) -> web.Response:
        ids = self.subjects.get(request.match_info["subject"])
        if ids is None:
            return web.json_response({"error_code": 40401, "message": "no subject"}, status=404)
        return web.json_response(list(range(1, len(ids) + 1)))

    async def version(self, request: web.Request) -> web.Response:
        ids = self.subjects.get(request.match_info["subject"], [])
        schema_id = ids[int(request.match_info["version"]) - 1]
        return web.json_response({"id": schema_id, "schema": self._text(schema_id)})

    def add(self, subject: str, text: str) -> int:
        schema_id = self.ids.setdefault(text, len(self.ids) + 1)
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    async def register(self, request: web.Request) -> web.Response:
        body = await request.json()
        json.loads(body["schema"])  # a real registry parses it
        return web.json_response({"id": self.add(request.match_info["subject"], body["schema"])})

    async def get(self, request: web.Request) -> web.Response:
        schema_id = int(request.match_info["id"])
        self.gets.append(schema_id)
        text = self._text(schema_id)
        if text is not None:
            return web.json_response({"schema": text})
        return web.json_response({"error_code": 40403, "message": "Schema not found"}, status=404)


@contextlib.asynccontextmanager
async def fake_registry_server(
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[tuple[FakeRegistry, str]]:
    """A :class:`FakeRegistry` on a free loopback port (HTTPS with a ``tls`` server context);
    yields it and its URL (with the credentials it accepts)."""
    fake = FakeRegistry()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    host, port = runner.addresses[0][:2]
    scheme = "https" if tls else "http"
    try:
        yield fake, f"{scheme}://user:password@{host}:{port}"
    finally:
        await runner.cleanup()
