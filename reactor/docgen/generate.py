"""Documentation as code: the generated files of ``docs/``, rendered from the code they describe.

``python -m reactor.docgen`` rewrites them; ``python -m reactor.docgen --check`` exits 1 and
names every file that disagrees with the code (the test suite runs the check). Generated:

- ``configuration.md`` from ``reactor.config.KEYS`` (key, environment variable, type, default,
  meaning);
- ``asyncapi.yaml``, the message contract as AsyncAPI 3.0, from ``schemas/*.json`` (embedded
  verbatim) and the queue keys of ``reactor.config``;
- ``lifecycle.md`` (tables and the Mermaid diagram of ``reactor fsm``) and ``lifecycle.svg``
  from ``reactor.domain.lifecycle.TRANSITIONS``.

Everything is deterministic (no dates, sorted where order is not meaningful), so a regenerated
file is byte-identical unless the code changed. The SVG layout is a small layered
(Sugiyama-style) drawing in pure Python: no Graphviz, so it renders the same on every machine.
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from .. import config
from ..domain import lifecycle
from ..contract import schemas
from .diagram import NOTICE, render_lifecycle_svg

REGENERATE = "python -m reactor.docgen"
_TYPE_NAMES = {str: "string", int: "integer", bool: "boolean", float: "number"}


def docs_dir() -> Path:
    """The repository's ``docs/`` folder."""
    return Path(__file__).resolve().parents[2] / "docs"


# ------------------------------------------------------------------------------ configuration
def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default_text(key: config.Key) -> str:
    if key.type is bool:
        return f"`{str(key.default).lower()}`"
    if key.default == "":
        return "empty"
    return f"`{key.default}`"


def _yaml_value(value: Any) -> str:
    # The same text a user would write in config.yml (safe_dump quotes what needs quoting).
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def render_configuration() -> str:
    """``configuration.md``: every key of ``reactor.config.KEYS`` with its variable and default."""
    from ..ingress.invoke import MESSAGE_ID_VAR, MESSAGE_VAR
    from ..contract.messages import PARAM_NAMES

    keys = config.KEYS
    lines = [
        "# Configuration reference",
        "",
        f"<!-- {NOTICE} Source: reactor/config.py, KEYS. -->",
        "",
        "Values come from three places; a later one wins:",
        "",
        "1. the defaults below;",
        f"2. `config.yml` in the working directory, or the file named by `{config.CONFIG_ENV}` "
        "(or `reactor --config PATH`);",
        f"3. environment variables: every key `k` can be set as `{config.ENV_PREFIX}<K>` "
        "(upper case).",
        "",
        "An unknown key (in the file, or a `REACTOR_*` variable that names no key) and a bad "
        "value stop start-up with an error that names the key. Booleans accept `true/false`, "
        "`yes/no`, `on/off` and `1/0`.",
        "",
        f"## Keys ({len(keys)})",
        "",
        "| Key | Environment variable | Type | Default | Meaning |",
        "|---|---|---|---|---|",
    ]
    for key in keys:
        type_name = _TYPE_NAMES.get(key.type, key.type.__name__)
        lines.append(f"| `{key.name}` | `{key.env}` | {type_name} | {_default_text(key)} | "
                     f"{_md_cell(key.help)} |")
    lines += [
        "",
        "## The token secret",
        "",
        "Set exactly one of `secret` and `secret_file` (both at once is a start-up error); "
        "prefer `secret_file` (for example a mounted container secret), since environment "
        "variables leak into process listings and crash reports. The secret must be at least "
        "16 bytes. Only the embedded mode (no `store_uri`, so a SQLite file in `state_dir`) "
        "creates one by itself: a random secret in `state_dir/secret`, mode 0600. Job tokens "
        "and administrative tokens derive from it, so changing it invalidates every token "
        "handed out.",
        "",
        "## Environment variables that are not configuration keys",
        "",
        "| Variable | Used by |",
        "|---|---|",
    ]
    for var in sorted(config.NOT_CONFIG_ENV):
        if var == config.CONFIG_ENV:
            use = "the configuration loader: path of the configuration file (default `config.yml`)"
        else:
            use = "tools around the reactor (such as `scripts/services.sh`); ignored by the loader"
        lines.append(f"| `{var}` | {use} |")
    lines.append(f"| `{MESSAGE_VAR}` | `reactor invoke`: the message body (Abaco actor mode) |")
    params = ", ".join(f"`{p}`" for p in PARAM_NAMES)
    lines.append(f"| {params} | `reactor invoke`: message parameters (as an HTTP callback's "
                 "query parameters) |")
    lines.append(f"| `{MESSAGE_ID_VAR}` | `reactor invoke`: the message id used for duplicate "
                 "detection (default: a digest of body and parameters) |")
    lines += [
        "",
        "## `config.yml` with every default",
        "",
        "```yaml",
    ]
    for key in keys:
        lines.append(f"# {key.help} ({key.env})")
        lines.append(f"{key.name}: {_yaml_value(key.default)}")
    lines += ["```", ""]
    return "\n".join(lines)


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


def asyncapi_document() -> dict:
    """The AsyncAPI 3.0 document as a dict (the schemas embedded verbatim)."""
    import reactor

    docs = _schema_docs()
    exchange = config.KEYS_BY_NAME["exchange"]
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
    queue_messages = {"event": _ref("components", "messages", "event"),
                      "deleteAction": _ref("components", "messages", "deleteAction")}
    channels = {
        "events": {
            "address": exchange.default,
            "title": f"Exchange `{exchange.default}` (configuration key exchange, {exchange.env})",
            "description": "Durable fanout exchange events are published to, with the job uuid "
                           "as routing key. With partitions it feeds a consistent-hash exchange "
                           "in front of one single-active-consumer queue per partition.",
            "servers": [_ref("servers", "rabbitmq")],
            "messages": {**queue_messages},
            "bindings": {"amqp": {"is": "routingKey", "exchange": {
                "name": exchange.default, "type": "fanout", "durable": True,
                "autoDelete": False, "vhost": "/"}, "bindingVersion": "0.3.0"}},
        },
        "mainQueue": _queue_channel("queue", "The queue `reactor consume` reads; acknowledged "
                                    "only after the outcome is committed.", {**queue_messages}),
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

    def op(action: str, channel: str, names: Iterable[str], summary: str, **extra) -> dict:
        return {"action": action, "channel": _ref("channels", channel), "summary": summary,
                "messages": [_ref("channels", channel, "messages", n) for n in names], **extra}

    http = {"bindings": {"http": {"method": "POST", "bindingVersion": "0.3.0"}}}
    operations = {
        "publishEvent": op("send", "events", queue_messages, "Publish an event or a delete "
                           "action (`reactor publish`, any AMQP client: persistent, with "
                           "publisher confirms)."),
        "consumeEvents": op("receive", "mainQueue", queue_messages, "`reactor consume` applies "
                            "each message and acknowledges it after the commit."),
        "delayRetry": op("send", "retryQueue", ["delayedRetry"], "The consumer parks a message "
                         "that may succeed later (store outage, out-of-order transition)."),
        "deadLetter": op("send", "deadLetterQueue", ["deadLetter"], "The consumer dead-letters "
                         "a message with its reason in headers."),
        "receiveCallback": op("receive", "httpCallbacks", ["jobStatusCallback"],
                              "`reactor serve` accepts a job-status callback (202 after the "
                              "broker confirmed it).", **http),
        "receiveHttpEvent": op("receive", "httpEvents", ["event", "parameterEvent"],
                               "`reactor serve` accepts an event (202 after the broker "
                               "confirmed it).", **http),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "PipelineJobs Reactor messages",
            "version": str(reactor.__version__),
            "description": "The message contract of the reactor (SPEC section 5). " + NOTICE
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
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": {Path(name).stem: {"schemaFormat": _SCHEMA_FORMAT, "schema": doc}
                        for name, doc in docs.items()},
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block-style YAML that never emits anchors (every schema copy is written out)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_asyncapi() -> str:
    """``asyncapi.yaml``: the AsyncAPI 3.0 document as YAML."""
    body = yaml.dump(asyncapi_document(), Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     width=100, default_flow_style=False)
    return f"# {NOTICE}\n# Sources: schemas/*.json, reactor/config.py, reactor/consume/consumer.py.\n{body}"


# --------------------------------------------------------------------------------- lifecycle
def _sources_text(t: lifecycle.Transition) -> str:
    return "any state" if lifecycle.ANY in t.sources else ", ".join(t.sources)


def render_lifecycle_md() -> str:
    """``lifecycle.md``: states, the transition table, events per state, and the diagrams."""
    from ..cli.jobs import fsm_mermaid

    lines = [
        "# Job lifecycle",
        "",
        f"<!-- {NOTICE} Source: reactor/domain/lifecycle.py, STATES and TRANSITIONS. -->",
        "",
        "The table in `reactor/domain/lifecycle.py` is the single source: the schemas' enums, the "
        "state machine, `reactor fsm` and this page are derived from it. An event that is not "
        "allowed from the job's current state is the outcome `rejected:invalid_transition` and "
        "leaves the record unchanged. Events marked *admin* need an administrative token "
        "(`reactor token admin`); every other event needs the job's token (an admin token is "
        "accepted too).",
        "",
        "![The job lifecycle](lifecycle.svg)",
        "",
        "## States",
        "",
        "| State | Meaning |",
        "|---|---|",
    ]
    for s in lifecycle.STATES:
        initial = " (initial)" if s.name == lifecycle.INITIAL_STATE else ""
        lines.append(f"| `{s.name}`{initial} | {_md_cell(s.description)} |")
    lines += ["", "## Events", "", "| Event | From | To | Token | Meaning |",
              "|---|---|---|---|---|"]
    for t in lifecycle.TRANSITIONS:
        dest = "same state" if t.dest == lifecycle.SAME else f"`{t.dest}`"
        lines.append(f"| `{t.event}` | {_sources_text(t)} | {dest} | "
                     f"{'admin' if t.admin else 'job'} | {_md_cell(t.description)} |")
    lines += ["", f"`{lifecycle.CREATION_EVENT}` is recorded once, when a job is created: sent "
              "to an existing job it is refused on every path (an invalid transition), although "
              "the table keeps the replaced system's `CREATED → CREATED` row.",
              "", "## Events allowed in each state", "", "| State | Events |", "|---|---|"]
    for name in lifecycle.STATE_NAMES:
        events = ", ".join(f"`{e}`" for e in lifecycle.allowed_events(name))
        lines.append(f"| `{name}` | {events} |")
    lines += ["", "## Mermaid", "", "The same graph as `reactor fsm --format mermaid` prints it:",
              "", "```mermaid", fsm_mermaid(), "```", ""]
    return "\n".join(lines)


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
