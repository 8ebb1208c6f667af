"""The job schema export and the TypeScript generated from it, for schema shapes the registry
does not use today (a job added tomorrow may)."""

from __future__ import annotations

from typing import Any

import pytest

from worker.ops.typescript import typescript_types


def _export(args: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "version": 1,
        "jobs": {
            "j": {
                "description": "A job.",
                "fallback": "spool",
                "durable": True,
                "queue": "bulk",
                "args": args,
            }
        },
        "$defs": defs or {},
    }


def test_schema_shapes_become_typescript() -> None:
    args = {"$ref": "#/$defs/j_args"}
    defs = {
        "j_args": {
            "type": "object",
            "additionalProperties": False,
            "required": ["pair", "kind"],
            "properties": {
                "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
                "kind": {"const": "fixed"},
                "either": {"type": ["string", "null"], "description": "One or none.", "maxLength": 5},
                "weird-key": {"allOf": [{"$ref": "#/$defs/Inner"}]},
                "both": {"allOf": [{"$ref": "#/$defs/Inner"}, {"type": "object"}]},
                "free": {"type": "object", "additionalProperties": True},
                "anything": {},
                "choice": {"oneOf": [{"type": "boolean"}, {"enum": [1, "two"]}]},
            },
        },
        "Inner": {"type": "object", "properties": {"x": {"type": "number", "default": 2}}},
    }
    ts = typescript_types(_export(args, defs))
    assert "export interface JArgs {" in ts
    assert "  pair: [string, number];" in ts
    assert '  kind: "fixed";' in ts
    assert "  /**\n   * One or none.\n   * max length: 5\n   */\n  either?: string | null;" in ts
    assert '  "weird-key"?: Inner;' in ts
    assert "  both?: (Inner) & ({ [key: string]: unknown });" in ts
    assert "  free?: { [key: string]: unknown };" in ts
    assert "  anything?: unknown;" in ts
    assert '  choice?: boolean | 1 | "two";' in ts
    assert "  /** default: 2 */\n  x?: number;" in ts
    assert "  j: JArgs;" in ts
    assert '  j: { fallback: "spool", durable: true, queue: "bulk" },' in ts


def test_unsupported_references_and_name_clashes_are_refused() -> None:
    with pytest.raises(ValueError, match="only local #/\\$defs/ references"):
        typescript_types(_export({"$ref": "https://example.com/schema"}))
    with pytest.raises(ValueError, match="same TypeScript name"):
        typescript_types(_export({}, {"a_b": {"type": "string"}, "AB": {"type": "string"}, "a-b": {}}))
