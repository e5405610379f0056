"""Replay message fixtures through the pipeline and compare outcomes with their expectations.

A fixture file (see ``message_examples/README.md``) declares the jobs it needs and a list of
steps; each step is one message and the outcome and resulting job state it must produce.
Placeholders such as ``{{job.uuid}}``, ``{{job.token}}`` and ``{{admin_token}}`` are filled in
at replay time, because tokens depend on the secret and must never be stored in files.
"""
from __future__ import annotations

import base64
import json
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..domain.errors import ValidationError
from ..domain.identifiers import pipeline_uuid, typed_uuid
from ..engine.jobs import Jobs
from ..domain.lifecycle import STATE_NAMES
from ..domain.outcomes import Outcome
from ..engine.pipeline import DEFAULT_MAX_BYTES, Item, Pipeline
from ..domain.tokens import Authority

PIPELINE_NAME = "reactor-replay"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)(?:\.(uuid|token))?\s*\}\}")
_FILE_KEYS = {"description", "jobs", "steps"}
_JOB_KEYS = {"data"}
_STEP_KEYS = {"comment", "job", "message", "raw", "raw_base64", "pad_to", "params", "message_id",
              "expect"}
_BODY_KEYS = ("message", "raw", "raw_base64")
_EXPECT_KEYS = {"outcome", "state", "history", "detail"}


@dataclass(frozen=True)
class Step:
    """One message of a fixture and what it must produce."""

    index: int
    spec: dict

    @property
    def expect(self) -> dict:
        return self.spec["expect"]


@dataclass(frozen=True)
class Example:
    """A fixture file: its jobs and steps."""

    path: Path
    name: str
    description: str
    jobs: dict[str, dict]
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class StepResult:
    """What one step produced, beside what it should have."""

    example: str
    index: int
    expected: str
    got: str
    expected_state: Any
    got_state: Any
    ok: bool
    problems: tuple[str, ...] = ()
    outcome: Outcome | None = field(default=None, repr=False)
    job_uuid: str | None = None

    @property
    def step(self) -> str:
        return f"{self.example}#{self.index}"


# --- loading ------------------------------------------------------------------------------------
def find_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every fixture file named by ``paths`` (folders are searched recursively for *.json)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*.json") if p.is_file()))
        elif path.is_file():
            out.append(path)
        else:
            raise ValidationError(f"{raw}: no such file or folder")
    if not out:
        raise ValidationError("no fixture files (*.json) found in " + ", ".join(map(str, paths)))
    return out


def load(paths: Iterable[str | Path]) -> list[Example]:
    """Load and check every fixture file under ``paths``."""
    files = find_files(list(paths))
    roots = [Path(p) for p in paths]
    return [load_file(f, _display_name(f, roots)) for f in files]


def _display_name(path: Path, roots: list[Path]) -> str:
    for root in roots:
        if root.is_dir():
            try:
                return str(path.relative_to(root).with_suffix(""))
            except ValueError:
                continue
    return path.stem


def load_file(path: Path, name: str | None = None) -> Example:
    """One fixture file, checked; ValidationError names the file and the problem."""
    where = str(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{where}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValidationError(f"{where}: a fixture must be a JSON object")
    _no_unknown(doc, _FILE_KEYS, where)
    jobs = doc.get("jobs", {"job": {}})
    if not isinstance(jobs, dict) or not jobs:
        raise ValidationError(f"{where}: 'jobs' must be a non-empty object of job names")
    for job_name, job in jobs.items():
        if not isinstance(job, dict):
            raise ValidationError(f"{where}: jobs.{job_name} must be an object")
        _no_unknown(job, _JOB_KEYS, f"{where}: jobs.{job_name}")
        if not isinstance(job.get("data", {}), dict):
            raise ValidationError(f"{where}: jobs.{job_name}.data must be an object")
    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ValidationError(f"{where}: 'steps' must be a non-empty list")
    checked = tuple(Step(i, _check_step(s, jobs, f"{where}: steps[{i}]"))
                    for i, s in enumerate(steps, 1))
    return Example(path, name or path.stem, str(doc.get("description", "")), jobs, checked)


def _no_unknown(doc: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ValidationError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: "
                              + ", ".join(sorted(allowed)))


def _check_step(step: Any, jobs: dict, where: str) -> dict:
    if not isinstance(step, dict):
        raise ValidationError(f"{where} must be an object")
    _no_unknown(step, _STEP_KEYS, where)
    bodies = [k for k in _BODY_KEYS if k in step]
    if len(bodies) > 1:
        raise ValidationError(f"{where}: give only one of {', '.join(_BODY_KEYS)}")
    if "raw" in step and not isinstance(step["raw"], str):
        raise ValidationError(f"{where}: 'raw' must be a string")
    if "raw_base64" in step:
        try:
            base64.b64decode(step["raw_base64"], validate=True)
        except (ValueError, TypeError):
            raise ValidationError(f"{where}: 'raw_base64' is not valid base64") from None
    if "pad_to" in step and (not isinstance(step["pad_to"], int) or step["pad_to"] < 0):
        raise ValidationError(f"{where}: 'pad_to' must be a non-negative integer")
    params = step.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise ValidationError(f"{where}: 'params' must be an object of strings")
    if step.get("job", next(iter(jobs))) not in jobs:
        raise ValidationError(f"{where}: job {step['job']!r} is not declared in 'jobs'")
    expect = step.get("expect")
    if not isinstance(expect, dict) or "outcome" not in expect:
        raise ValidationError(f"{where}: 'expect' must be an object with at least 'outcome'")
    _no_unknown(expect, _EXPECT_KEYS, f"{where}.expect")
    state = expect.get("state", "")
    if state not in ("", None) and state not in STATE_NAMES:
        raise ValidationError(f"{where}.expect: state {state!r} is not a lifecycle state")
    _check_placeholders(step, jobs, where)
    return step


def _check_placeholders(step: dict, jobs: dict, where: str) -> None:
    text = json.dumps({k: step[k] for k in ("message", "raw", "params") if k in step})
    for m in _PLACEHOLDER.finditer(text):
        name, attr = m.group(1), m.group(2)
        if attr is None and name != "admin_token":
            raise ValidationError(f"{where}: unknown placeholder {m.group(0)}; use "
                                  "{{<job>.uuid}}, {{<job>.token}} or {{admin_token}}")
        if attr is not None and name not in jobs:
            raise ValidationError(f"{where}: placeholder {m.group(0)} names an undeclared job")


# --- running ------------------------------------------------------------------------------------
class Replayer:
    """Creates each fixture's jobs (unique to this run) and feeds its steps to the pipeline."""

    def __init__(self, jobs: Jobs, max_bytes: int = DEFAULT_MAX_BYTES,
                 pipeline_name: str = PIPELINE_NAME):
        self.jobs = jobs
        self.pipeline = Pipeline(jobs, max_bytes)
        self.pipeline_uuid = pipeline_uuid(pipeline_name)
        jobs.store.add_pipeline({"uuid": self.pipeline_uuid, "name": pipeline_name,
                                 "description": "Pipeline of replayed message fixtures"})
        # A nonce per run: replaying twice into one store never re-attaches to older jobs.
        self.run_id = secrets.token_hex(8)
        self.created: dict[str, dict[str, str]] = {}
        self._count = 0

    def setup(self, example: Example) -> dict[str, str]:
        """Create the example's jobs; map each job name to its uuid."""
        uuids = {}
        self._count += 1
        for name, job in example.jobs.items():
            seed = f"replay:{self.run_id}:{self._count}:{example.name}:{name}"
            uid = typed_uuid("pipelinejob", seed)
            record, _ = self.jobs.create(self.pipeline_uuid, data=job.get("data", {}), uuid=uid)
            uuids[name] = record["uuid"]
        self.created[example.name] = uuids
        return uuids

    def run(self, example: Example, on_step: Callable[[], None] | None = None
            ) -> list[StepResult]:
        """Replay one example; one result per step."""
        uuids = self.setup(example)
        results = []
        for step in example.steps:
            results.append(self.run_step(example, step, uuids))
            if on_step:
                on_step()
        return results

    def run_step(self, example: Example, step: Step, uuids: dict[str, str]) -> StepResult:
        """Send one step's message and compare what happened with its expectation."""
        spec = step.spec
        values = self._values(uuids)
        body = _body(spec, values)
        params = {k: _fill(v, values) for k, v in spec.get("params", {}).items()}
        [outcome] = self.pipeline.process([Item(body, spec.get("message_id"), params)])
        job_name = spec.get("job", next(iter(uuids)))
        record = self.jobs.store.get_job(uuids[job_name])
        got_state = record["state"] if record else None
        expect = step.expect
        problems = []
        if outcome.label != expect["outcome"]:
            problems.append(f"outcome {outcome.label} ({outcome.detail})")
        if "state" in expect and expect["state"] != got_state:
            problems.append(f"state {got_state}, expected {expect['state']}")
        if "history" in expect:
            count = len(record["history"]) if record else 0
            if count != expect["history"]:
                problems.append(f"{count} history entries, expected {expect['history']}")
        if "detail" in expect and expect["detail"] not in outcome.detail:
            problems.append(f"detail {outcome.detail!r} lacks {expect['detail']!r}")
        return StepResult(example.name, step.index, expect["outcome"], outcome.label,
                          expect.get("state", got_state), got_state, not problems,
                          tuple(problems), outcome, uuids[job_name])

    def _values(self, uuids: dict[str, str]) -> dict[str, str]:
        values = {"admin_token": self.jobs.authority.admin_token()}
        for name, uid in uuids.items():
            values[f"{name}.uuid"] = uid
            values[f"{name}.token"] = self.jobs.authority.job_token(uid)
        return values


def _fill(text: str, values: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        key = m.group(1) + (f".{m.group(2)}" if m.group(2) else "")
        return values[key]

    return _PLACEHOLDER.sub(one, text)


def _fill_json(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _fill(value, values)
    if isinstance(value, list):
        return [_fill_json(v, values) for v in value]
    if isinstance(value, dict):
        return {_fill(k, values): _fill_json(v, values) for k, v in value.items()}
    return value


def _body(spec: dict, values: dict[str, str]) -> bytes:
    if "raw_base64" in spec:
        body = base64.b64decode(spec["raw_base64"])
    elif "raw" in spec:
        body = _fill(spec["raw"], values).encode("utf-8")
    elif "message" in spec:
        body = json.dumps(_fill_json(spec["message"], values)).encode("utf-8")
    else:
        body = b""
    pad = spec.get("pad_to", 0)
    return body + b" " * max(0, pad - len(body))


def iter_results(examples: list[Example], replayer: Replayer,
                 on_step: Callable[[], None] | None = None) -> Iterator[StepResult]:
    """Replay every example in order."""
    for example in examples:
        yield from replayer.run(example, on_step)


def open_replay_store(store_uri: str | None):
    """The store to replay into: ``store_uri``, else a fresh embedded store in a temp folder."""
    from ..store import open_store

    if store_uri:
        return open_store(store_uri), None
    tmp = tempfile.TemporaryDirectory(prefix="reactor-replay-")
    return open_store(f"sqlite:///{Path(tmp.name) / 'replay.db'}"), tmp


def replay_paths(paths: Iterable[str | Path], store_uri: str | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 on_step: Callable[[], None] | None = None) -> list[StepResult]:
    """Replay fixture files into ``store_uri`` (or a fresh embedded store) with a throwaway
    secret: replayed jobs are new, so no configured secret is ever needed or exposed."""
    examples = load(paths)
    store, tmp = open_replay_store(store_uri)
    try:
        jobs = Jobs(store, Authority(secrets.token_hex(32)))
        return list(iter_results(examples, Replayer(jobs, max_bytes), on_step))
    finally:
        store.close()
        if tmp is not None:
            tmp.cleanup()


def format_table(results: list[StepResult], failures_only: bool = False) -> str:
    """The results as a text table: step, expected, got, and what differed."""
    rows = [("STEP", "EXPECTED", "GOT", "STATE", "OK")]
    for r in results:
        if failures_only and r.ok:
            continue
        state = str(r.got_state) if r.ok or r.expected_state == r.got_state \
            else f"{r.got_state} (expected {r.expected_state})"
        rows.append((r.step, r.expected, r.got, state, "ok" if r.ok else "MISMATCH"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for r in results:
        for problem in r.problems:
            lines.append(f"  {r.step}: {problem}")
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results)} steps, {len(results) - failed} as expected, {failed} "
                 "mismatched")
    return "\n".join(lines)
