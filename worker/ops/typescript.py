"""TypeScript types from the job schema export: `python -m worker jobs --schema --typescript`.

The TypeScript client (`clients/typescript/`) commits the output as `src/jobs.generated.ts`, so
`client.enqueue("send_email", args)` is checked against the job's real arguments; a test fails
when the committed file no longer matches the registry.

The JSON Schema subset pydantic produces is covered: `$ref`, `anyOf`/`oneOf`/`allOf`, `enum`,
`const`, `type` (one or a list), arrays (`items`, `prefixItems`), objects (`properties`,
`required`, `additionalProperties`, `patternProperties`) and `{}` (any JSON value). A keyword
outside it widens the type to `unknown` rather than guessing.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["typescript_types"]

_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_DEF_REF = "#/$defs/"


def _type_name(def_name: str) -> str:
    """`ping_args` -> `PingArgs`; `Email` stays `Email`."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", def_name) if p]
    name = "".join(p[:1].upper() + p[1:] for p in parts) or "Anonymous"
    return name if not name[0].isdigit() else "T" + name


def _doc(text: str, indent: str) -> list[str]:
    lines = text.replace("*/", "*\\/").strip().splitlines()
    if not lines:
        return []
    if len(lines) == 1:
        return [f"{indent}/** {lines[0]} */"]
    return [f"{indent}/**", *(f"{indent} * {line}".rstrip() for line in lines), f"{indent} */"]


_CONSTRAINTS = (
    ("format", "format"),
    ("minLength", "min length"),
    ("maxLength", "max length"),
    ("pattern", "pattern"),
    ("minimum", "minimum"),
    ("exclusiveMinimum", "more than"),
    ("maximum", "maximum"),
    ("exclusiveMaximum", "less than"),
    ("minItems", "min items"),
    ("maxItems", "max items"),
    ("maxProperties", "max properties"),
)


def _property_doc(prop: dict[str, Any]) -> str:
    """The description, then the checks the runner applies that TypeScript cannot express."""
    found: dict[str, Any] = {}
    for schema in [prop, *prop.get("anyOf", [])]:
        if isinstance(schema, dict):
            found.update({label: schema[key] for key, label in _CONSTRAINTS if key in schema})
    notes = "; ".join(f"{label}: {json.dumps(value)}" for label, value in found.items())
    if prop.get("default") is not None:
        default = f"default: {json.dumps(prop['default'])}"
        notes = f"{notes}; {default}" if notes else default
    description = str(prop.get("description", "")).strip()
    return "\n".join(part for part in (description, notes) if part)


def _key(name: str) -> str:
    return name if _IDENTIFIER.match(name) else json.dumps(name)


class _Emitter:
    def __init__(self, defs: dict[str, Any]) -> None:
        self.names = {name: _type_name(name) for name in defs}
        clashes = {t for t in self.names.values() if list(self.names.values()).count(t) > 1}
        if clashes:
            raise ValueError(f"schema definitions map to the same TypeScript name: {sorted(clashes)}")

    def ref(self, ref: str) -> str:
        if not ref.startswith(_DEF_REF) or ref[len(_DEF_REF) :] not in self.names:
            raise ValueError(f"unsupported $ref {ref!r}: only local #/$defs/ references")
        return self.names[ref[len(_DEF_REF) :]]

    def type_of(self, schema: Any, indent: str = "") -> str:
        if schema is True or schema == {}:
            return "unknown"
        if schema is False:
            return "never"
        if not isinstance(schema, dict):
            return "unknown"
        if "$ref" in schema:
            return self.ref(schema["$ref"])
        if "const" in schema:
            return json.dumps(schema["const"])
        if "enum" in schema:
            return " | ".join(json.dumps(v) for v in schema["enum"])
        for combinator in ("anyOf", "oneOf"):
            if combinator in schema:
                return self._union([self.type_of(s, indent) for s in schema[combinator]])
        if "allOf" in schema:
            parts = [self.type_of(s, indent) for s in schema["allOf"]]
            return parts[0] if len(parts) == 1 else " & ".join(f"({p})" for p in parts)
        kind = schema.get("type")
        if isinstance(kind, list):
            return self._union([self.type_of({**schema, "type": k}, indent) for k in kind])
        if kind == "string":
            return "string"
        if kind in ("number", "integer"):
            return "number"
        if kind == "boolean":
            return "boolean"
        if kind == "null":
            return "null"
        if kind == "array":
            return self._array(schema, indent)
        if kind == "object" or "properties" in schema:
            return self._object(schema, indent)
        return "unknown"

    def _union(self, members: list[str]) -> str:
        unique = list(dict.fromkeys(members))
        return "unknown" if "unknown" in unique else " | ".join(unique)

    def _array(self, schema: dict[str, Any], indent: str) -> str:
        if "prefixItems" in schema:
            items = [self.type_of(s, indent) for s in schema["prefixItems"]]
            return "[" + ", ".join(items) + "]"
        item = self.type_of(schema.get("items", {}), indent)
        return f"Array<{item}>"

    def _object(self, schema: dict[str, Any], indent: str) -> str:
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        extra: list[str] = []
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            extra.append(self.type_of(additional, indent + "  "))
        extra += [self.type_of(s, indent + "  ") for s in schema.get("patternProperties", {}).values()]
        if not properties:
            if extra:
                return f"{{ [key: string]: {self._union(extra)} }}"
            return "{ [key: string]: unknown }" if additional is not False else "Record<string, never>"
        inner = indent + "  "
        lines = ["{"]
        for name, prop in properties.items():
            if isinstance(prop, dict):
                lines += _doc(_property_doc(prop), inner)
            optional = "" if name in required else "?"
            lines.append(f"{inner}{_key(name)}{optional}: {self.type_of(prop, inner)};")
        if extra or additional is True:
            lines.append(f"{inner}[key: string]: unknown;")
        lines.append(indent + "}")
        return "\n".join(lines)

    def declaration(self, def_name: str, schema: dict[str, Any]) -> list[str]:
        name = self.names[def_name]
        lines = _doc(str(schema.get("description", "")), "")
        body = self.type_of(schema)
        if body.startswith("{\n"):
            lines.append(f"export interface {name} {body}")
        else:
            lines.append(f"export type {name} = {body};")
        return lines


def typescript_types(export: dict[str, Any]) -> str:
    """The TypeScript module for a `job_schemas()` export document."""
    defs: dict[str, Any] = export["$defs"]
    jobs: dict[str, Any] = export["jobs"]
    emit = _Emitter(defs)
    out = [
        "// Generated by `python -m worker jobs --schema --typescript` from the job registry.",
        "// Do not edit: change the job's arguments and regenerate (a test fails while this file is stale).",
        "",
        f"export const SCHEMA_VERSION = {int(export['version'])};",
        "",
    ]
    for def_name in sorted(defs):
        out += [*emit.declaration(def_name, defs[def_name]), ""]
    out.append("/** Every registered job and the arguments it takes. */")
    out.append("export interface JobArgs {")
    for name, job in jobs.items():
        out += _doc(job["description"], "  ")
        out.append(f"  {_key(name)}: {emit.type_of(job['args'], '  ')};")
    out += ["}", "", "export type JobName = keyof JobArgs;", ""]
    out += [
        "/** What the runner does with a job while Redis is unusable, whether it is durable, and the",
        " * queue it goes to by default (null: the runner picks it from the arguments). */",
        "export interface JobInfo {",
        '  readonly fallback: "inline" | "spool" | "reject";',
        "  readonly durable: boolean;",
        "  readonly queue: string | null;",
        "}",
        "",
        "export const JOBS: { readonly [N in JobName]: JobInfo } = {",
    ]
    for name, job in jobs.items():
        fallback, durable = json.dumps(job["fallback"]), "true" if job["durable"] else "false"
        queue = json.dumps(job["queue"])
        out.append(f"  {_key(name)}: {{ fallback: {fallback}, durable: {durable}, queue: {queue} }},")
    out += ["};", ""]
    return "\n".join(out)
