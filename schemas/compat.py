"""Backward-compatibility checks with Apache Avro's own checker.

Development tooling (``python -m schemas.pin`` and the tests): it needs the ``avro`` package
from the ``dev`` extra, which the pipeline itself never imports.
"""

from __future__ import annotations

import json
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType


def incompatibility(reader: dict[str, Any], writer: dict[str, Any]) -> str | None:
    """Why data written with ``writer`` cannot be read with ``reader``; None when it can."""
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    if result.compatibility is SchemaCompatibilityType.compatible:
        return None
    kinds = ", ".join(sorted(str(kind.value) for kind in result.incompatibilities))
    messages = "; ".join(sorted(result.messages))
    where = ", ".join(sorted(result.locations))
    return f"{kinds}: {messages} (at {where})"
