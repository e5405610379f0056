"""Docs as tests: the tutorial runs, and the generated docs match the code they describe.

- every ```bash block of docs/tutorial.md runs, in order, in one ``bash`` with ``set -euo
  pipefail``, in an empty directory; the outcomes, the job record and the uuids shown in the
  tutorial are checked;
- ``python -m reactor.docgen --check`` passes, and fails naming the file when one is stale;
- the configuration reference, the AsyncAPI document and the lifecycle diagram are checked
  against ``reactor.config.KEYS``, ``schemas/*.json`` and ``reactor.domain.lifecycle``;
- every ``reactor …`` command line in the docs names a real command and real options, and
  every relative link resolves.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import click
import pytest
import yaml

from reactor import config
from reactor.docgen import generate as docgen
from reactor.domain import lifecycle
from reactor.contract import schemas

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SVG_NS = "{http://www.w3.org/2000/svg}"
SHELL_LANGS = ("bash", "sh", "console", "shell")
# Variables that would leak into the tutorial's `reactor invoke` calls or configuration.
INVOKE_VARS = ("MSG", "uuid", "token", "event", "status", "note", "message_id")


def fenced_blocks(text: str, langs: tuple[str, ...]) -> list[str]:
    """The contents of the fenced code blocks of ``text`` in one of ``langs`` (indent removed)."""
    pattern = re.compile(r"^([ \t]*)```(\w*)[ \t]*\n(.*?)^\1```[ \t]*$", re.S | re.M)
    return [textwrap.dedent(m.group(3)) for m in pattern.finditer(text) if m.group(2) in langs]


def clean_env(tmp_path: Path) -> dict[str, str]:
    """The test's environment without reactor settings, with the embedded state in tmp_path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("REACTOR_") and k not in INVOKE_VARS}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["REACTOR_STATE_DIR"] = str(tmp_path / ".reactor")
    return env


def run_bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``script`` in one bash process with ``set -euo pipefail``."""
    path = cwd / "doc-script.sh"
    path.write_text("set -euo pipefail\n" + script)
    return subprocess.run(["bash", str(path)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def reactor_json(args: list[str], cwd: Path, env: dict[str, str]):
    out = subprocess.run(["reactor", *args, "--json"], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# ------------------------------------------------------------------------------- tutorial
def test_tutorial_bash_blocks_run_and_move_a_job_through_its_lifecycle(tmp_path):
    text = (DOCS / "tutorial.md").read_text()
    blocks = fenced_blocks(text, ("bash",))
    assert len(blocks) >= 10, "the tutorial should walk through at least ten command blocks"
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env(work)
    script = "\n".join(blocks) + '\necho "TUTORIAL-RESULT $PIPELINE $JOB"\n'
    out = run_bash(script, work, env)
    assert out.returncode == 0, (f"tutorial failed (exit {out.returncode})\n--- stdout\n"
                                 f"{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}")

    result = [line.split()[1:] for line in out.stdout.splitlines()
              if line.startswith("TUTORIAL-RESULT ")]
    assert len(result) == 1 and len(result[0]) == 2, out.stdout[-2000:]
    pipeline, job = result[0]
    # The uuids shown in the tutorial's sample output are the ones its commands produce.
    assert pipeline in text and job in text, (pipeline, job)

    # One outcome line per `reactor invoke`, in the order the tutorial tells.
    outcomes = [json.loads(line)["outcome"] for line in out.stdout.splitlines()
                if line.startswith("{") and '"outcome"' in line]
    assert outcomes == ["applied", "applied", "applied",               # run, update, finish
                        "rejected:auth_failed", "rejected:invalid_transition", "duplicate",
                        "rejected:auth_failed",                        # reset with a job token
                        "applied", "applied", "applied"], outcomes     # reset, ready, run
    assert out.stdout.count("refused, exit code 1") == 3
    assert "4 history entries" in out.stdout
    assert "EVENT" in out.stdout and "ready" in out.stdout  # `reactor fsm` printed the table

    record = reactor_json(["jobs", "show", job], work, env)
    assert record["state"] == "RUNNING"
    assert [h["name"] for h in record["history"]] == [
        "create", "run", "update", "finish", "reset", "ready", "run"]
    assert record["history"][2]["data"] == {"note": "halfway there"}
    assert record["history"][3]["data"]["status"] == "FINISHED"
    assert (work / ".reactor" / "secret").stat().st_mode & 0o077 == 0

    # The job token never reaches a log line.
    token = subprocess.run(["reactor", "token", "job", job], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert len(token) == 32 and token not in out.stderr


# ------------------------------------------------------------------------------ docgen check
def test_generated_docs_are_in_sync_with_the_code():
    out = subprocess.run([sys.executable, "-m", "reactor.docgen.generate", "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{out.stderr}\nrun `python -m reactor.docgen` and commit"
    assert docgen.stale() == []


def test_docgen_check_fails_naming_each_stale_file_and_regenerating_fixes_it(tmp_path):
    docs = tmp_path / "docs"
    assert sorted(docgen.write(docs)) == sorted(docgen.GENERATORS)
    with (docs / "configuration.md").open("a") as f:
        f.write("| `hand_edited` | `REACTOR_HAND_EDITED` | string | empty | edited by hand |\n")
    (docs / "lifecycle.svg").unlink()
    before = {p.name: p.read_bytes() for p in docs.iterdir()}

    check = [sys.executable, "-m", "reactor.docgen.generate", "--check", "--docs", str(docs)]
    out = subprocess.run(check, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert f"{docs / 'configuration.md'}: out of date" in out.stderr
    assert "hand_edited" in out.stderr          # the diff shows what differs
    assert f"{docs / 'lifecycle.svg'}: missing" in out.stderr
    assert "asyncapi.yaml" not in out.stderr and "lifecycle.md" not in out.stderr
    assert {p.name: p.read_bytes() for p in docs.iterdir()} == before  # --check wrote nothing

    out = subprocess.run(check[:3] + check[4:], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(check, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_docgen_check_notices_a_new_configuration_key(monkeypatch):
    extra = config.Key("dashboard_port", int, 9090, "Port of a dashboard that does not exist")
    monkeypatch.setattr(config, "KEYS", config.KEYS + (extra,))
    assert docgen.stale() == ["configuration.md"]
    assert "| `dashboard_port` | `REACTOR_DASHBOARD_PORT` | integer | `9090` |" in \
        docgen.render_configuration()


def test_docgen_check_notices_a_changed_lifecycle_table(monkeypatch):
    extra = lifecycle.Transition("archive", ("REJECTED",), "FAILED", "Archive the outputs")
    monkeypatch.setattr(lifecycle, "TRANSITIONS", lifecycle.TRANSITIONS + (extra,))
    assert docgen.stale() == ["lifecycle.md", "lifecycle.svg"]
    assert ">archive</text>" in docgen.render_lifecycle_svg()


def test_docgen_usage_errors_exit_2():
    out = subprocess.run([sys.executable, "-m", "reactor.docgen.generate", "--chek"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "--chek" in out.stderr


# ------------------------------------------------------------------- configuration reference
def test_configuration_reference_lists_every_key_with_env_type_and_default():
    text = (DOCS / "configuration.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\| `(\w+)` \| `(REACTOR_\w+)` \| (\w+) \| (.+?) \| ", line)
        if m:
            rows[m.group(1)] = m.groups()[1:]
    assert list(rows) == [k.name for k in config.KEYS]
    for key in config.KEYS:
        env, type_name, default = rows[key.name]
        assert env == key.env
        assert type_name == {str: "string", int: "integer", bool: "boolean"}[key.type]
        shown = "empty" if key.default == "" else f"`{str(key.default).lower()}`" \
            if key.type is bool else f"`{key.default}`"
        assert default == shown, key.name


def test_configuration_reference_sample_config_is_a_valid_config_yml(tmp_path):
    (block,) = fenced_blocks((DOCS / "configuration.md").read_text(), ("yaml",))
    path = tmp_path / "config.yml"
    path.write_text(block)
    settings = config.load(env={}, path=path)
    assert dict(settings.values) == {k.name: k.default for k in config.KEYS}
    assert set(settings.sources.values()) == {str(path)}  # every key is in the sample


# ------------------------------------------------------------------------------- asyncapi
def _pointer(doc: dict, ref: str):
    node = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node, skip_schemas: bool = True):
    """Every ``$ref`` of the AsyncAPI document itself (not inside embedded JSON Schemas)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            elif not (skip_schemas and k == "schema"):
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_asyncapi_document_is_asyncapi_3_with_every_schema_verbatim():
    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    for section in ("servers", "channels", "operations", "components"):
        assert isinstance(doc[section], dict) and doc[section], section

    files = {p.name: json.loads(p.read_text()) for p in sorted((ROOT / "schemas").glob("*.json"))}
    assert set(files) == {schemas.DEFINITIONS, *schemas.SCHEMA_FILES.values()}
    # Every schema file is in components.schemas, unchanged.
    comp_schemas = doc["components"]["schemas"]
    assert {f"{k}.json" for k in comp_schemas} == set(files)
    for name, content in files.items():
        assert comp_schemas[Path(name).stem]["schema"] == content, name
    # Every message type has a message whose payload is its schema file, unchanged.
    payloads = {}
    for name, message in doc["components"]["messages"].items():
        payload = message["payload"]
        if "schemaFormat" in payload:
            assert payload["schemaFormat"].startswith("application/schema+json")
            payloads[payload["schema"]["$id"]] = name
            assert files[payload["schema"]["$id"].rsplit("/", 1)[1]] == payload["schema"]
    for kind, file in schemas.SCHEMA_FILES.items():
        if kind != "job":  # the job record is a stored document, not a message
            assert schemas.BASE_ID + file in payloads, f"no message for {file}"

    # Every reference resolves; operations name a channel and messages of that channel.
    for ref in _refs(doc):
        assert ref.startswith("#/"), ref
        _pointer(doc, ref)
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel = op["channel"]["$ref"]
        for m in op["messages"]:
            assert m["$ref"].startswith(channel + "/messages/"), (name, m)
    used = {m["$ref"] for ch in doc["channels"].values() for m in ch["messages"].values()}
    assert {f"#/components/messages/{n}" for n in doc["components"]["messages"]} == used

    # Channel addresses are the configured names (their defaults) of the queue keys.
    addresses = {ch["address"] for ch in doc["channels"].values()}
    for key in ("exchange", "queue", "dead_letter_queue", "retry_queue"):
        assert config.KEYS_BY_NAME[key].default in addresses, key


def test_asyncapi_dead_letter_headers_are_the_ones_the_consumer_writes():
    from reactor.contract import headers as consumer
    from reactor.domain.outcomes import REJECT_REASONS, Reason

    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    headers = doc["components"]["messages"]["deadLetter"]["headers"]["properties"]
    for name in (consumer.REASON, consumer.DETAIL, consumer.ATTEMPTS, consumer.FIRST_SEEN,
                 consumer.ROUTING_KEY, consumer.MESSAGE_ID):
        assert name in headers, name
    assert set(REJECT_REASONS) | {Reason.RETRIES_EXHAUSTED} == \
        set(headers[consumer.REASON]["enum"])


# ------------------------------------------------------------------------------- lifecycle
def test_lifecycle_svg_draws_every_state_event_and_transition():
    svg = (DOCS / "lifecycle.svg").read_text()
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == SVG_NS + "svg"
    texts = [t.text for t in root.iter(SVG_NS + "text")]
    for state in lifecycle.STATE_NAMES:
        assert texts.count(state) == 1, state
    label_words = {w.strip(",") for t in texts for w in t.split()}
    for event in lifecycle.EVENT_NAMES:
        assert event in label_words, event

    any_events = [t for t in lifecycle.TRANSITIONS if lifecycle.ANY in t.sources]
    pairs = {(s, t.dest if t.dest != lifecycle.SAME else s)
             for t in lifecycle.TRANSITIONS if lifecycle.ANY not in t.sources for s in t.sources}
    between = {p for p in pairs if p[0] != p[1]}
    looping = {p[0] for p in pairs if p[0] == p[1]}
    arrows = [p for p in root.iter(SVG_NS + "path") if p.get("marker-end")]
    # One arrow per pair of states, one loop per state with reflexive events, one per
    # "from any state" note, and the initial-state arrow.
    assert len(arrows) == len(between) + len(looping) + len(any_events) + 1
    assert texts.count("any state") == len(any_events)
    assert "reset (admin)" in texts and "ready (admin)" in texts
    assert docgen.render_lifecycle_svg() == svg  # deterministic


def test_lifecycle_diagram_places_every_state_and_routes_every_edge_exactly_once():
    from reactor.docgen import diagram

    assert diagram.layout_problems() == []
    placed = [p.state for p in diagram.PLACES]
    assert sorted(placed) == sorted([*lifecycle.STATE_NAMES, lifecycle.ANY])
    routed = sorted((r.source, r.dest) for r in diagram.ROUTES)
    assert routed == sorted((e.source, e.dest) for e in lifecycle.edges(fold_any=True)
                            if e.source != e.dest)


def test_a_new_state_or_edge_fails_the_diagram_with_a_message_saying_to_place_it(monkeypatch):
    from reactor.docgen import diagram

    monkeypatch.setattr(lifecycle, "STATE_NAMES", (*lifecycle.STATE_NAMES, "ARCHIVED"))
    monkeypatch.setattr(lifecycle, "TRANSITIONS", (*lifecycle.TRANSITIONS, lifecycle.Transition(
        "archive", ("REJECTED",), "ARCHIVED", "Outputs are archived")))
    problems = diagram.layout_problems()
    assert any("state ARCHIVED" in p and "Place in PLACES" in p for p in problems), problems
    assert any("edge REJECTED -> ARCHIVED" in p and "Route in ROUTES" in p
               for p in problems), problems
    with pytest.raises(ValueError, match="no place for ARCHIVED"):
        diagram.render_lifecycle_svg()


def test_a_place_or_route_given_twice_or_for_nothing_is_named(monkeypatch):
    from reactor.docgen import diagram

    monkeypatch.setattr(diagram, "ROUTES", (*diagram.ROUTES, diagram.ROUTES[0],
                                            diagram.Route("RETIRED", "CREATED")))
    monkeypatch.setattr(diagram, "PLACES", diagram.PLACES[1:] + diagram.PLACES[-1:])
    problems = diagram.layout_problems()
    assert any(f"{lifecycle.ANY} -> RESET is routed 2 times" in p for p in problems), problems
    assert any("RETIRED -> CREATED, which is no edge" in p for p in problems), problems
    assert any("RETIRED is placed 2 times" in p for p in problems), problems
    assert any(f"state {lifecycle.ANY} is placed 0 times" in p for p in problems), problems


Rect = tuple[float, float, float, float]


def _diagram_rects() -> list[tuple[str, Rect, object]]:
    """Everything drawn that takes room: (name, rectangle, what it belongs to)."""
    from reactor.docgen import diagram as d

    rects: list[tuple[str, Rect, object]] = []
    for p in d.PLACES:
        rects.append((f"box {p.state}", (p.x - d.BOX_W / 2, p.y - d.BOX_H / 2, d.BOX_W,
                                         d.BOX_H), p.state))
        if p.loop:
            rects.append((f"loop of {p.state}", d.loop_box(p), p.state))
    for route, events in d.routes()[1:]:
        rects.append((f"label of {route.source} -> {route.dest}",
                      d.label_box(d.label_centre(route), d.label_text(events)),
                      (route.source, route.dest)))
    x, y = d.START
    rects.append(("start dot", (x - d.START_R, y - d.START_R, 2 * d.START_R, 2 * d.START_R),
                  "start"))
    rects.append(("title and legend", (d.MARGIN, d.MARGIN, len(d.LEGEND) * d.LABEL_CHAR_W, 32),
                  None))
    return rects


def _points(points: list[tuple[float, float]], step: float = 1.0):
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        n = max(1, int(max(abs(x1 - x0), abs(y1 - y0)) / step))
        yield from ((x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(n + 1))


def test_lifecycle_diagram_labels_overlap_nothing_and_arrows_cross_no_box():
    from reactor.docgen import diagram as d

    def overlap(a: Rect, b: Rect, pad: float = 2) -> bool:
        return (a[0] < b[0] + b[2] + pad and b[0] < a[0] + a[2] + pad
                and a[1] < b[1] + b[3] + pad and b[1] < a[1] + a[3] + pad)

    def inside(pt, r: Rect) -> bool:
        return r[0] + 1 < pt[0] < r[0] + r[2] - 1 and r[1] + 1 < pt[1] < r[1] + r[3] - 1

    rects = _diagram_rects()
    problems = [f"{na} overlaps {nb}" for i, (na, a, oa) in enumerate(rects)
                for nb, b, ob in rects[i + 1:]
                if not (oa == ob and isinstance(oa, str)) and overlap(a, b)]
    arrows = {(r.source, r.dest): list(_points(d.route_points(r))) for r, _ in d.routes()}
    for (source, dest), points in arrows.items():
        for name, rect, owner in rects:
            if owner not in (source, dest, (source, dest)) and any(inside(p, rect)
                                                                    for p in points):
                problems.append(f"the arrow {source} -> {dest} crosses the {name}")
        if source != "start":  # a label is nearer to its own arrow than to any other
            cx, cy = d.label_centre(next(r for r, _ in d.routes() if (r.source, r.dest) ==
                                         (source, dest)))
            distance = {pair: min(((x - cx) ** 2 + (y - cy) ** 2) ** 0.5 for x, y in pts)
                        for pair, pts in arrows.items()}
            if min(distance, key=distance.get) != (source, dest):
                problems.append(f"the label of {source} -> {dest} is nearer another arrow")
    inside_canvas = [n for n, (x, y, w, h), _ in rects
                     if x < 0 or y < 0 or x + w > d.WIDTH or y + h > d.HEIGHT]
    assert not problems + inside_canvas, problems + inside_canvas


def test_lifecycle_md_mermaid_is_what_reactor_fsm_prints():
    from click.testing import CliRunner

    from reactor.cli.main import main

    out = CliRunner().invoke(main, ["fsm", "--format", "mermaid"], catch_exceptions=False)
    assert out.exit_code == 0
    (mermaid,) = fenced_blocks((DOCS / "lifecycle.md").read_text(), ("mermaid",))
    assert mermaid.strip() == out.output.strip()
    text = (DOCS / "lifecycle.md").read_text()
    for t in lifecycle.TRANSITIONS:
        assert f"| `{t.event}` |" in text and t.description in text


# ------------------------------------------------------------------------ operations guide
def test_operations_guide_sqlite_backup_commands_run(tmp_path):
    from reactor.store import open_store

    work = tmp_path / "work"
    work.mkdir()
    env = clean_env(work)
    setup = ('P=$(reactor pipelines add --name backup-test)\n'
             'JOB=$(reactor jobs create --pipeline "$P" --data \'{"n": 1}\' --json '
             '| python3 -c \'import json, sys; print(json.load(sys.stdin)["uuid"])\')\n'
             'echo "JOB $JOB"\n')
    blocks = fenced_blocks((DOCS / "operations.md").read_text(), ("bash",))
    assert blocks, "operations.md has no runnable bash block"
    out = run_bash(setup + "\n".join(blocks), work, env)
    assert out.returncode == 0, out.stderr
    job = re.search(r"^JOB (\S+)$", out.stdout, re.M).group(1)
    assert (work / "backup" / "secret").read_text() == (work / ".reactor" / "secret").read_text()
    with open_store(f"sqlite:///{work / 'backup' / 'reactor.db'}") as store:
        record = store.get_job(job)
    assert record is not None and record["state"] == "CREATED"


# ---------------------------------------------------------------- commands and links in docs
def _command_lines(text: str) -> list[str]:
    """Every ``reactor …`` command in shell blocks and inline code of a Markdown page."""
    found = []
    sources = fenced_blocks(text, SHELL_LANGS)
    sources += [m.group(1) for m in re.finditer(r"(?<!`)`([^`\n]+)`(?!`)", text)
                if m.group(1).startswith("reactor ")]
    for source in sources:
        for line in source.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#.*$", "", line)
            for m in re.finditer(r"(?:^|(?<=[\s(=]))reactor(?=\s|$)", line):
                rest = re.split(r"\||\)|;|&&|`", line[m.start():])[0]
                found.append(rest.strip())
    return found


def _check_command(line: str) -> list[str]:
    from reactor.cli.main import main

    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    problems = []
    cmd: click.Command = main
    ctx = click.Context(main)
    i = 1
    while True:
        while i < len(words) and words[i].startswith("-"):
            problems += _check_option(cmd, words, i)
            i += 1 + _takes_value(cmd, words[i])
        if not isinstance(cmd, click.Group) or i >= len(words):
            break
        sub = cmd.get_command(ctx, words[i])
        if sub is None:
            return [f"{line!r}: no command {words[i]!r}"]
        cmd, i = sub, i + 1
    while i < len(words):
        if words[i].startswith("--") or words[i] == "-h":
            problems += _check_option(cmd, words, i)
            i += _takes_value(cmd, words[i])
        i += 1
    return [f"{line!r}: {p}" for p in problems]


def _param(cmd: click.Command, word: str):
    name = word.split("=", 1)[0]
    return next((p for p in cmd.get_params(click.Context(cmd)) if name in p.opts), None)


def _takes_value(cmd: click.Command, word: str) -> int:
    p = _param(cmd, word)
    return int(p is not None and not p.is_flag and "=" not in word)


def _check_option(cmd: click.Command, words: list[str], i: int) -> list[str]:
    p = _param(cmd, words[i])
    if p is None:
        return [f"{cmd.name} has no option {words[i]!r}"]
    if isinstance(p.type, click.Choice):
        value = words[i].split("=", 1)[1] if "=" in words[i] else \
            (words[i + 1] if i + 1 < len(words) else "")
        if value not in p.type.choices:
            return [f"{words[i]} {value!r} is not one of {list(p.type.choices)}"]
    return []


def test_every_reactor_command_in_the_docs_exists_with_its_options():
    problems, seen = [], 0
    for page in sorted(DOCS.glob("*.md")):
        for line in _command_lines(page.read_text()):
            seen += 1
            problems += [f"{page.name}: {p}" for p in _check_command(line)]
    assert seen >= 30, f"only {seen} command lines found: is the extraction broken?"
    assert not problems, "\n".join(problems)


def test_command_checker_catches_unknown_commands_options_and_choices():
    assert _check_command("reactor jobs create --pipeline X --json") == []
    assert _check_command("reactor --config c.yml fsm --format dot") == []
    assert _check_command("reactor deploy")
    assert _check_command("reactor jobs purge")
    assert _check_command("reactor jobs create --colour red")
    assert _check_command("reactor fsm --format png")


def test_relative_links_in_the_docs_resolve():
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{page.name}: {target}")
    assert not broken, broken
