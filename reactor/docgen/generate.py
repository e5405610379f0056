"""Documentation as code: the generated files of ``docs/``, rendered from the code they describe.

``python -m reactor.docgen`` rewrites them; ``python -m reactor.docgen --check`` exits 1 and
names every file that disagrees with the code (the test suite runs the check). Generated:

- ``configuration.md`` from ``reactor.config.KEYS`` (key, environment variable, type, default,
  meaning): ``configuration.py``;
- ``asyncapi.yaml``, the message contract as AsyncAPI 3.0, from ``schemas/*.json`` (embedded
  verbatim) and the queue keys of ``reactor.config``: here;
- ``lifecycle.md`` (tables and the Mermaid diagram of ``reactor fsm``): ``lifecycle_text.py``,
  and ``lifecycle.svg`` (the states at fixed places): ``diagram.py``, both from
  ``reactor.domain.lifecycle``.

Everything is deterministic (no dates, sorted where order is not meaningful, no layout program),
so a regenerated file is byte-identical on every machine unless the code changed.
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from . import NOTICE
from .. import config
from ..contract import schemas
from .configuration import render_configuration
from .diagram import render_lifecycle_svg
from .lifecycle_text import render_lifecycle_md

REGENERATE = "python -m reactor.docgen"


def docs_dir() -> Path:
    """The repository's ``docs/`` folder."""
    return Path(__file__).resolve().parents[2] / "docs"


# ---------------------------------------------------------------------------------- asyncapi
# Message type -> (component name, title, how it reaches the reactor).
_MESSAGES = {
    "event": ("event", "queue: the message body; HTTP: POST /events body; invoke: MSG"),
    "delete": ("deleteAction", "queue: the message body; invoke: MSG"),
    "callback": ("jobStatusCallback", "HTTP: POST /callbacks (body + query parameters); "
                                      "invoke: MSG + environment"),
    "parameters": ("parameterEvent", "HTTP: POST /events query parameters; invoke: environment"),
}
_SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"


def _schema_docs() -> dict[str, dict]:
    base = schemas.schema_dir()
    return {name: json.loads((base / name).read_text())
            for name in sorted(p.name for p in base.glob("*.json"))}


def _dead_letter_headers() -> dict:
    from ..contract import headers as c
    from ..domain.outcomes import DEAD_LETTER_REASONS

    reasons = list(DEAD_LETTER_REASONS)
    props = {
        c.REASON: {"type": "string", "enum": reasons, "description": "Why it was dead-lettered."},
        c.DETAIL: {"type": "string", "description": "What was wrong (tokens masked)."},
        c.OUTCOME: {"type": "string", "description": "The outcome label, e.g. "
                                                     "rejected:schema_invalid."},
        c.ATTEMPTS: {"type": "integer", "minimum": 1,
                     "description": "Deliveries of this message so far."},
        c.FIRST_SEEN: {"type": "string", "description": "When the reactor first processed it."},
        c.DEAD_LETTERED_AT: {"type": "string", "description": "When it was dead-lettered."},
        c.ROUTING_KEY: {"type": "string", "description": "Its original routing key (job uuid)."},
        c.EXCHANGE: {"type": "string", "description": "The exchange it was published to."},
        c.QUEUE: {"type": "string", "description": "The main queue it was consumed from."},
        c.MESSAGE_ID: {"type": "string", "description": "Its AMQP message id (or empty)."},
    }
    return {"type": "object", "properties": props,
            "required": [c.REASON, c.DETAIL, c.OUTCOME, c.ATTEMPTS]}


def _retry_headers() -> dict:
    from ..contract import headers as c

    return {"type": "object", "properties": {
        c.RETRY_REASON: {"type": "string", "description": "Why the last attempt failed."},
        c.ATTEMPTS: {"type": "integer", "minimum": 1, "description": "Failed attempts so far."},
    }, "required": [c.RETRY_REASON, c.ATTEMPTS]}


def _queue_channel(key: str, summary: str, messages: dict) -> dict:
    k = config.KEYS_BY_NAME[key]
    return {
        "address": k.default,
        "title": f"Queue `{k.default}` (configuration key {key}, {k.env})",
        "description": summary,
        "servers": [_ref("servers", "rabbitmq")],
        "messages": messages,
        "bindings": {"amqp": {"is": "queue", "queue": {
            "name": k.default, "durable": True, "exclusive": False, "autoDelete": False,
            "vhost": "/"}, "bindingVersion": "0.3.0"}},
    }


def _ref(*parts: str) -> dict:
    return {"$ref": "#/" + "/".join(parts)}


# The two messages of the queue, as channels and operations refer to them.
_QUEUE_MESSAGES = {"event": _ref("components", "messages", "event"),
                   "deleteAction": _ref("components", "messages", "deleteAction")}


def _messages(docs: dict[str, dict]) -> dict[str, Any]:
    messages: dict[str, Any] = {}
    for kind, (name, how) in _MESSAGES.items():
        doc = docs[schemas.SCHEMA_FILES[kind]]
        messages[name] = {
            "name": name, "title": doc.get("title", name), "summary": how,
            "description": doc.get("description", ""), "contentType": "application/json",
            "payload": {"schemaFormat": _SCHEMA_FORMAT, "schema": doc},
        }
    messages["deadLetter"] = {
        "name": "deadLetter", "title": "Dead letter",
        "summary": "The original body, unchanged, with the reason in headers.",
        "description": "A message the reactor could not apply, copied to the dead-letter queue "
                       "(publisher-confirmed) before the original was acknowledged. Re-drive it "
                       "after a fix with `reactor publish`.",
        "headers": _dead_letter_headers(),
        "payload": {"description": "The original message body, byte for byte (any of the "
                                   "message types, or the malformed bytes that were refused)."},
    }
    messages["delayedRetry"] = {
        "name": "delayedRetry", "title": "Delayed retry",
        "summary": "The original body, parked for retry_delay_ms, then returned to its queue.",
        "headers": _retry_headers(),
        "payload": {"description": "The original message body, byte for byte."},
    }
    return messages


def _channels() -> dict[str, Any]:
    exchange = config.KEYS_BY_NAME["exchange"]
    return {
        "events": {
            "address": exchange.default,
            "title": f"Exchange `{exchange.default}` (configuration key exchange, {exchange.env})",
            "description": "Durable fanout exchange events are published to, with the job uuid "
                           "as routing key. With partitions it feeds a consistent-hash exchange "
                           "in front of one single-active-consumer queue per partition.",
            "servers": [_ref("servers", "rabbitmq")],
            "messages": dict(_QUEUE_MESSAGES),
            "bindings": {"amqp": {"is": "routingKey", "exchange": {
                "name": exchange.default, "type": "fanout", "durable": True,
                "autoDelete": False, "vhost": "/"}, "bindingVersion": "0.3.0"}},
        },
        "mainQueue": _queue_channel("queue", "The queue `reactor consume` reads; acknowledged "
                                    "only after the outcome is committed.", dict(_QUEUE_MESSAGES)),
        "retryQueue": _queue_channel("retry_queue", "Delayed-retry queue: per-queue TTL of "
                                     "retry_delay_ms, dead-lettering back to the main queue.",
                                     {"delayedRetry": _ref("components", "messages",
                                                           "delayedRetry")}),
        "deadLetterQueue": _queue_channel("dead_letter_queue", "Messages that ended rejected or "
                                          "exhausted their retries.",
                                          {"deadLetter": _ref("components", "messages",
                                                              "deadLetter")}),
        "httpCallbacks": {
            "address": "/callbacks",
            "title": "HTTP job-status callbacks (reactor serve)",
            "description": "POST with the HPC job JSON as body and uuid, token, status (or "
                           "event) as query parameters.",
            "servers": [_ref("servers", "callbacks")],
            "messages": {"jobStatusCallback": _ref("components", "messages",
                                                   "jobStatusCallback")},
        },
        "httpEvents": {
            "address": "/events",
            "title": "HTTP events (reactor serve)",
            "description": "POST an event body, or no body with uuid, event, token and note as "
                           "query parameters.",
            "servers": [_ref("servers", "callbacks")],
            "messages": {"event": _ref("components", "messages", "event"),
                         "parameterEvent": _ref("components", "messages", "parameterEvent")},
        },
    }


def _op(action: str, channel: str, names: Iterable[str], summary: str, **extra: Any) -> dict:
    return {"action": action, "channel": _ref("channels", channel), "summary": summary,
            "messages": [_ref("channels", channel, "messages", n) for n in names], **extra}


def _operations() -> dict[str, Any]:
    http = {"bindings": {"http": {"method": "POST", "bindingVersion": "0.3.0"}}}
    return {
        "publishEvent": _op("send", "events", _QUEUE_MESSAGES, "Publish an event or a delete "
                           "action (`reactor publish`, any AMQP client: persistent, with "
                           "publisher confirms)."),
        "consumeEvents": _op("receive", "mainQueue", _QUEUE_MESSAGES, "`reactor consume` applies "
                            "each message and acknowledges it after the commit."),
        "delayRetry": _op("send", "retryQueue", ["delayedRetry"], "The consumer parks a message "
                         "that may succeed later (store outage, out-of-order transition)."),
        "deadLetter": _op("send", "deadLetterQueue", ["deadLetter"], "The consumer dead-letters "
                         "a message with its reason in headers."),
        "receiveCallback": _op("receive", "httpCallbacks", ["jobStatusCallback"],
                              "`reactor serve` accepts a job-status callback (202 after the "
                              "broker confirmed it).", **http),
        "receiveHttpEvent": _op("receive", "httpEvents", ["event", "parameterEvent"],
                               "`reactor serve` accepts an event (202 after the broker "
                               "confirmed it).", **http),
    }


def asyncapi_document() -> dict:
    """The AsyncAPI 3.0 document as a dict (the schemas embedded verbatim)."""
    import reactor

    docs = _schema_docs()
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "PipelineJobs Reactor messages",
            "version": str(reactor.__version__),
            "description": "The message contract of the reactor (docs/contract.md §5). " + NOTICE
                           + " Payload schemas are the files of schemas/ (JSON Schema "
                             "2020-12), embedded verbatim; their relative $refs resolve "
                             "against their $id, which components.schemas also carries.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {"host": "localhost:5672", "protocol": "amqp", "protocolVersion": "0.9.1",
                         "description": "RabbitMQ named by broker_url (REACTOR_BROKER_URL)."},
            "callbacks": {"host": "localhost:8080", "protocol": "http",
                          "description": "`reactor serve` (callback_url names it to jobs)."},
        },
        "channels": _channels(),
        "operations": _operations(),
        "components": {
            "messages": _messages(docs),
            "schemas": {Path(name).stem: {"schemaFormat": _SCHEMA_FORMAT, "schema": doc}
                        for name, doc in docs.items()},
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block-style YAML that never emits anchors (every schema copy is written out)."""

    def ignore_aliases(self, data: Any) -> bool:
        """Never: every repeated node is written out in full."""
        return True


def render_asyncapi() -> str:
    """``asyncapi.yaml``: the AsyncAPI 3.0 document as YAML."""
    body = yaml.dump(asyncapi_document(), Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     width=100, default_flow_style=False)
    return f"# {NOTICE}\n# Sources: schemas/*.json, reactor/config.py, reactor/contract/headers.py.\n{body}"


# ------------------------------------------------------------------------------- the command
GENERATORS: dict[str, Callable[[], str]] = {
    "configuration.md": render_configuration,
    "asyncapi.yaml": render_asyncapi,
    "lifecycle.md": render_lifecycle_md,
    "lifecycle.svg": render_lifecycle_svg,
}


def render_all() -> dict[str, str]:
    """Every generated file's expected content, by name inside ``docs/``."""
    return {name: make() for name, make in GENERATORS.items()}


def stale(directory: Path | None = None) -> list[str]:
    """Names of generated files in ``directory`` that are missing or differ from the code."""
    directory = directory or docs_dir()
    out = []
    for name, text in render_all().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            out.append(name)
    return out


def write(directory: Path | None = None) -> list[str]:
    """Regenerate every file in ``directory``; names of the files that changed."""
    directory = directory or docs_dir()
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in render_all().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return changed


def _diff(path: Path, text: str, limit: int = 12) -> list[str]:
    old = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    lines = list(difflib.unified_diff(old, text.splitlines(), str(path), "generated",
                                      lineterm="", n=0))
    return lines[:limit] + (["  …"] if len(lines) > limit else [])


def main(argv: list[str] | None = None) -> int:
    """``python -m reactor.docgen [--check] [--docs DIR]``."""
    parser = argparse.ArgumentParser(prog=REGENERATE, description="Regenerate (or check) the "
                                     "generated documentation in docs/.")
    parser.add_argument("--check", action="store_true", help="Change nothing; exit 1 and name "
                        "every generated file that is missing or out of date.")
    parser.add_argument("--docs", type=Path, default=None, metavar="DIR",
                        help="The docs folder (default: the repository's docs/).")
    args = parser.parse_args(argv)
    directory = args.docs or docs_dir()
    if args.check:
        expected = render_all()
        bad = stale(directory)
        for name in bad:
            path = directory / name
            why = "missing" if not path.is_file() else "out of date"
            print(f"{path}: {why}; run `{REGENERATE}`", file=sys.stderr)
            for line in _diff(path, expected[name]) if path.is_file() else []:
                print(f"    {line}", file=sys.stderr)
        if not bad:
            print(f"{len(expected)} generated files in {directory} are up to date")
        return 1 if bad else 0
    changed = write(directory)
    for name in GENERATORS:
        print(f"{'wrote' if name in changed else 'unchanged'} {directory / name}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
