"""The JSON Schema of every job's arguments: the contract other languages build on.

`python -m worker jobs --schema` prints it, `GET /v1/jobs` serves it, the OpenAPI document of
`python -m worker serve` is made from it and the TypeScript client's types are generated from it
(`worker.ops.typescript`). It is built from each `JobDefinition.args_model`, the same pydantic
model that validates arguments at enqueue, so a schema and a check can never disagree.

Shape (`SCHEMA_VERSION` 1): `{"$schema", "title", "version", "jobs": {name: {"description",
"fallback", "durable", "queue", "timeout_s", "max_tries", "args": {"$ref": "#/$defs/<name>_args"}}},
"$defs": {...}}`. Models shared by several jobs (an email message) appear once in `$defs`.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from core.registry import Registry

__all__ = ["SCHEMA_VERSION", "job_schemas"]

SCHEMA_VERSION = 1
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def job_schemas(registry: Registry, *, ref_prefix: str = "#/$defs/") -> dict[str, Any]:
    """The export document; `ref_prefix` places the shared definitions elsewhere (OpenAPI's
    `#/components/schemas/`), in which case the caller moves `$defs` there."""
    definitions = sorted(registry, key=lambda d: d.name)
    refs, top = models_json_schema(
        [(d.args_model, "validation") for d in definitions], ref_template=ref_prefix + "{model}"
    )
    jobs = {
        d.name: {
            "description": d.description,
            "fallback": d.fallback,
            "durable": d.durable,
            "queue": d.default_queue,
            "timeout_s": d.timeout,
            "max_tries": d.max_tries,
            "args": refs[(d.args_model, "validation")],
        }
        for d in definitions
    }
    return {
        "$schema": _DIALECT,
        "title": "Max Booster job arguments",
        "version": SCHEMA_VERSION,
        "jobs": jobs,
        "$defs": dict(sorted(top.get("$defs", {}).items())),
    }
