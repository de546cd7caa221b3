"""The production image installs exactly the hash-pinned lock, without the embedded broker."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement

from tests.deploy_tools import ROOT

LOCK = ROOT / "requirements.lock"


def pinned() -> dict[str, str]:
    """name -> version of every ``name==version`` line of the lock."""
    out = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;\\]+)", line)
        if match:
            out[match.group(1).split("[")[0].lower().replace("_", "-")] = match.group(2)
    return out


def test_lock_covers_the_runtime_dependencies_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["rocksdb"]]
    versions = pinned()
    for spec in map(Requirement, wanted):
        name = spec.name.lower().replace("_", "-")
        assert name in versions, f"{name} is not in requirements.lock: run `make lock`"
        assert spec.specifier.contains(versions[name]), (name, versions[name], str(spec))
    entries = re.findall(
        r"^\S+==\S+(?:.*\n(?:\s+--hash=sha256:[0-9a-f]{64}.*\n?)+)", LOCK.read_text(), re.M
    )
    assert len(entries) == len(versions), "every pin carries its sha256 hashes"
    for embedded in project["optional-dependencies"]["embedded"]:
        assert Requirement(embedded).name not in versions, (
            "the embedded broker is not for production"
        )


def test_dockerfile_installs_only_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile
    assert "-r /src/requirements.lock" in dockerfile
    assert "--no-deps /src" in dockerfile
    assert "embedded" not in re.sub(r"#.*", "", dockerfile)
    (base,) = set(re.findall(r"ARG PYTHON_IMAGE=(\S+)", dockerfile))
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), "a full version tag, not :3.11-slim"
