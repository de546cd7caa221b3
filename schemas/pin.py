"""Pin schema ids: ``python -m schemas.pin`` gives every changed schema a new version and id.

Run it after editing a ``schemas/avro/*.avsc`` file and commit ``schemas/registry.json`` with the
change. Old versions stay pinned, so data written with them remains decodable; a change that
would make that data unreadable with the current schema (not backward compatible) is refused.
``python -m schemas.pin --check`` changes nothing and exits 1 if a schema needs pinning (CI).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fastavro.schema import SchemaParseException

from schemas.avro_schemas import SCHEMA_NAMES, canonical_form, fingerprint_of, schema_json
from schemas.compat import incompatibility
from schemas.registry import PINNED_ID_BASE, PinnedVersion, dump_pinned, load_pinned

REGISTRY_FILE = Path(__file__).with_name("registry.json")


class PinError(Exception):
    """A schema change that cannot be pinned."""


def pin(
    versions: Sequence[PinnedVersion], current: Mapping[str, dict[str, Any]]
) -> tuple[list[PinnedVersion], list[str]]:
    """``versions`` plus a new version for each schema of ``current`` not pinned as it is.

    Returns the new list and one line per change. New ids continue after the largest id ever
    pinned, so an id is never reused.
    """
    result = list(versions)
    changes: list[str] = []
    next_id = max((v.schema_id for v in versions), default=PINNED_ID_BASE) + 1
    for name, schema in current.items():
        try:
            canonical = canonical_form(schema)
        except SchemaParseException as exc:
            raise PinError(f"{name}: invalid schema: {exc}") from None
        digest = fingerprint_of(canonical)
        history = sorted((v for v in versions if v.name == name), key=lambda v: v.version)
        if history and history[-1].fingerprint == digest:
            continue
        for old in history:
            problem = incompatibility(schema, json.loads(old.canonical))
            if problem:
                raise PinError(
                    f"{name}: data written with pinned v{old.version} (id {old.schema_id}) "
                    f"could not be read with the edited schema: {problem}"
                )
        version = history[-1].version + 1 if history else 1
        result.append(PinnedVersion(name, version, next_id, digest, canonical))
        changes.append(f"{name}: pinned v{version} as id {next_id}")
        next_id += 1
    return result, changes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.pin", description=__doc__)
    parser.add_argument("--check", action="store_true", help="report only; exit 1 if unpinned")
    args = parser.parse_args(argv)
    versions = load_pinned(REGISTRY_FILE.read_text("utf-8")) if REGISTRY_FILE.exists() else []
    try:
        updated, changes = pin(versions, {name: schema_json(name) for name in SCHEMA_NAMES})
    except PinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not changes:
        print("every schema is pinned")
        return 0
    if args.check:
        print("unpinned schema changes; run `python -m schemas.pin`:", *changes, sep="\n  ")
        return 1
    REGISTRY_FILE.write_text(dump_pinned(updated), "utf-8")
    print(*changes, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
