"""JSON Schemas of the messages and the job record: loaded from local files, compiled once.

Every ``$ref`` is resolved locally: inlined from the loaded files for the hot path's compiled
check (``fast_validators``), and from a ``referencing.Registry`` with no retrieval function for
the error descriptions (``validators``); an unknown reference is an error and nothing is ever
fetched over the network. The event and
state enums in ``definitions.json`` are generated from ``reactor.domain.lifecycle`` (the single
source): ``python -m reactor.contract.schemas --write`` refreshes them, and loading refuses a stale file.
"""
from __future__ import annotations

import json
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import jsonschema_rs

from ..domain import lifecycle
from ..domain.errors import ConfigError
from ..domain.tokens import mask_text, shown

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError as SchemaError
    from referencing import Registry

# ``jsonschema`` and ``referencing`` are imported only when an error must be described (or the
# schema files are checked): a valid message never needs them, and importing them costs a
# one-shot ``reactor invoke`` about as much as everything else it does.

BASE_ID = "https://pipelinejobs-reactor.invalid/schemas/"
DEFINITIONS = "definitions.json"
# Message type -> schema file. The job record schema is not a message but shares the registry.
SCHEMA_FILES = {
    "event": "event.json",
    "callback": "job_status_callback.json",
    "parameters": "parameter_event.json",
    "delete": "delete_action.json",
    "job": "job.json",
}
MAX_DETAIL = 300


def schema_dir() -> Path:
    """The directory holding the schema files: inside the package, else the repository's."""
    import reactor

    packaged = Path(reactor.__file__).resolve().parent / "schemas"
    if (packaged / DEFINITIONS).is_file():
        return packaged
    return Path(reactor.__file__).resolve().parent.parent / "schemas"


def generated_enums() -> dict[str, list[str]]:
    """The enums of definitions.json as the lifecycle table defines them."""
    return {"event_name": list(lifecycle.EVENT_NAMES), "state_name": list(lifecycle.STATE_NAMES)}


def write_enums(directory: Path | None = None) -> Path:
    """Rewrite the generated enums of definitions.json from the lifecycle table."""
    path = (directory or schema_dir()) / DEFINITIONS
    doc = json.loads(path.read_text())
    for name, values in generated_enums().items():
        doc["$defs"][name]["enum"] = values
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return path


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"schema file {str(path)!r} is missing") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"schema file {str(path)!r} is not valid JSON: {exc}") from None


def stale_enums(definitions: dict) -> list[str]:
    """Names of generated enums in ``definitions`` that disagree with the lifecycle table."""
    defs = definitions.get("$defs", {})
    return [name for name, values in generated_enums().items()
            if defs.get(name, {}).get("enum") != values]


@lru_cache(maxsize=None)
def load_documents(directory: str | None = None) -> dict[str, dict]:
    """Every schema document by file name (definitions included), checked against the table."""
    base = Path(directory) if directory else schema_dir()
    docs = {name: _read(base / name) for name in (DEFINITIONS, *SCHEMA_FILES.values())}
    stale = stale_enums(docs[DEFINITIONS])
    if stale:
        raise ConfigError(f"{base / DEFINITIONS}: enums {', '.join(stale)} disagree with "
                          "reactor.domain.lifecycle; run `python -m reactor.contract.schemas --write`")
    for name, doc in docs.items():
        if doc.get("$id") != BASE_ID + name:
            raise ConfigError(f"schema file {name} must have $id {BASE_ID + name!r}")
    return docs


@lru_cache(maxsize=None)
def registry(directory: str | None = None) -> Registry:
    """A registry of the local schema files only (no retrieve function: never the network)."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    resources = [(doc["$id"], Resource.from_contents(doc, default_specification=DRAFT202012))
                 for doc in load_documents(directory).values()]
    return Registry().with_resources(resources).crawl()


@lru_cache(maxsize=None)
def validators(directory: str | None = None) -> dict[str, Draft202012Validator]:
    """One compiled validator per schema (by message type), built once and reused."""
    from jsonschema import Draft202012Validator

    from jsonschema.validators import extend

    docs = load_documents(directory)
    reg = registry(directory)
    # JSON Schema patterns are ECMA-262, where "$" is the end of the text; in Python's ``re``
    # it also matches before a final newline, which would let "FINISHED\n" pass as a status.
    strict = extend(Draft202012Validator, {"pattern": _ecma_pattern})
    out = {}
    for kind, name in SCHEMA_FILES.items():
        Draft202012Validator.check_schema(docs[name])
        out[kind] = strict(docs[name], registry=reg)
    return out


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: dict) -> Iterable:
    """The ``pattern`` keyword with ECMA-262's "$" (the end of the text, never before a "\n")."""
    from jsonschema.exceptions import ValidationError

    if isinstance(instance, str) and not _compiled(pattern).search(instance):
        yield ValidationError(f"{shown(instance)} does not match {pattern!r}")


@lru_cache(maxsize=None)
def _compiled(pattern: str) -> re.Pattern:
    # Our patterns end in an unescaped "$" only; "\Z" is Python's end of text.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


MAX_REF_CHAIN = 32  # a ``$ref`` chain this long can only be a cycle


def _resolve(ref: str, base: str, docs: dict[str, dict]) -> tuple[Any, str]:
    """What ``ref`` (``file.json#/json/pointer`` or ``#/json/pointer``) names when read in the
    schema file ``base``, and the file it is in: local files only, never the network."""
    name, _, pointer = ref.partition("#")
    name = name.removeprefix(BASE_ID) or base
    if name not in docs:
        raise ConfigError(f"schema {base}: $ref {ref!r} names no local schema file")
    node: Any = docs[name]
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ConfigError(f"schema {base}: $ref {ref!r} points at nothing") from None
    return node, name


def _inline(node: Any, base: str, docs: dict[str, dict], chain: int = 0) -> Any:
    """``node`` (read in file ``base``) with every ``$ref`` replaced by what it names."""
    if isinstance(node, list):
        return [_inline(item, base, docs, chain) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        if chain >= MAX_REF_CHAIN:
            raise ConfigError(f"schema {base}: $ref {node['$ref']!r} is part of a cycle")
        target, where = _resolve(node["$ref"], base, docs)
        target = _inline(target, where, docs, chain + 1)
        rest = {k: _inline(v, base, docs, chain) for k, v in node.items() if k != "$ref"}
        return {**target, **rest} if rest else target
    return {k: _inline(v, base, docs, chain) for k, v in node.items()
            if k not in ("$id", "$defs")}


@lru_cache(maxsize=None)
def fast_validators(directory: str | None = None) -> dict[str, Any]:
    """Compiled yes/no validators of the same schemas, for the hot path (``jsonschema-rs``).

    Checking a valid message with ``jsonschema`` costs ~25-100 µs, most of it resolving
    ``$ref``s; the compiled Rust validator answers in about a microsecond. It gets the schemas
    with every ``$ref`` inlined, so it never resolves (let alone fetches) anything, and it
    refuses a schema that breaks the 2020-12 meta-schema, so a broken file fails at start-up.
    Only an invalid message goes through ``validators()``, whose errors carry the original
    schema locations, and whose verdict is the one that counts (``errors``).
    """
    docs = load_documents(directory)
    out = {}
    for kind, name in SCHEMA_FILES.items():
        try:
            out[kind] = jsonschema_rs.Draft202012Validator(_inline(docs[name], name, docs))
        except jsonschema_rs.ValidationError as exc:
            raise ConfigError(f"schema file {name} is not a valid JSON Schema: "
                              f"{str(exc).splitlines()[0]}") from None
    return out


def validator(kind: str) -> Draft202012Validator:
    """The compiled validator of one message type (event, callback, parameters, delete, job)."""
    return validators()[kind]


def errors(kind: str, instance: Any) -> list[SchemaError]:
    """Every schema error of ``instance``, first problem first (document order of paths)."""
    if fast_validators()[kind].is_valid(instance):
        return []
    # ``jsonschema`` describes (with the schema locations); its pattern keyword is made
    # ECMA-262 like the fast one, so both engines give one verdict.
    return sorted(validator(kind).iter_errors(instance), key=_order)


def _order(error: SchemaError) -> tuple:
    # Paths in document order; at the same path the more specific (deeper schema) rule first.
    path = tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in error.absolute_path)
    return (path, -len(error.absolute_schema_path))


def short(value: Any, limit: int = 60) -> str:
    """``value`` as short JSON text for an error message."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def json_type(value: Any) -> str:
    """The JSON type name of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "integer",
            float: "number"}.get(type(value), type(value).__name__)


def describe(error: SchemaError) -> str:
    """``<JSON path>: <what is wrong> (rule: <keyword>)``: the offending value is echoed only
    when harmless (``tokens.shown``), so a token sent in the wrong field never is."""
    path = error.json_path
    rule = error.validator
    value = error.instance
    secret = any(str(p) == "token" for p in error.absolute_path)
    if secret:
        # Never echo a token; and no "token: …" text, which log masking would mangle.
        return clip(f"{path} must be a string of 1 to 256 characters, got {json_type(value)} "
                    f"(rule: {rule})")
    if rule == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        what = f"expected {expected}, got {json_type(value)}"
    elif rule == "pattern":
        what = f"{shown(value)} does not match {error.validator_value}"
    elif rule == "enum":
        what = f"{shown(value)} is not one of: {', '.join(map(str, error.validator_value))}"
    elif rule == "const":
        what = f"{shown(value)} must be {short(error.validator_value)}"
    elif rule in ("maxLength", "minLength"):
        what = f"string of length {len(value)} breaks {rule} {error.validator_value}"
    elif rule == "required":
        what = error.message  # names a property of the schema, never caller text
    elif rule == "additionalProperties" and isinstance(value, dict):
        allowed = error.schema.get("properties", {})
        extra = [shown(k) for k in value if k not in allowed]
        what = f"unexpected field(s) {', '.join(extra)}; allowed: {', '.join(allowed)}"
    else:
        # jsonschema's own text quotes the instance, which may be anything the caller sent.
        what = f"{shown(value)} breaks {rule} {short(error.validator_value)}"
    return clip(f"{path}: {what} (rule: {rule})")


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    """Mask tokens in ``text`` and cut it to ``limit`` characters."""
    text = mask_text(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def check_files(directory: Path | None = None) -> list[str]:
    """Problems with the schema files (empty when they load, compile and match the table)."""
    try:
        for cached in (load_documents, validators, registry, fast_validators):
            cached.cache_clear()
        validators(str(directory) if directory else None)
        fast_validators(str(directory) if directory else None)
    except Exception as exc:  # noqa: BLE001 - a check reports every kind of breakage
        return [str(exc)]
    return []


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m reactor.contract.schemas [--write]``: check (or regenerate) the schema enums."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--write"]:
        print(f"wrote {write_enums()}")
        return 0
    if args:
        print("usage: python -m reactor.contract.schemas [--write]", file=sys.stderr)
        return 2
    problems = check_files()
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
