"""Replaying message fixtures: every example passes on both backends; mismatches are caught."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reactor.ops import replay
from reactor.domain.errors import ValidationError
from reactor.domain.outcomes import REJECT_REASONS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "message_examples"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REACTOR_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["REACTOR_STATE_DIR"] = str(cwd / "state")
    return subprocess.run([sys.executable, "-m", "reactor.cli.main", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_every_message_example_replays_as_expected(store_uri):
    results = replay.replay_paths([EXAMPLES], store_uri=store_uri)
    failed = [f"{r.step}: {'; '.join(r.problems)}" for r in results if not r.ok]
    assert not failed, "\n".join(failed)
    labels = {r.got for r in results}
    assert {"applied", "duplicate"} | {f"rejected:{r}" for r in REJECT_REASONS} <= labels


def test_the_examples_cover_every_message_type():
    from reactor.contract import messages

    kinds = set()
    for example in replay.load([EXAMPLES]):
        values = {"admin_token": "a" * 32, **{f"{j}.uuid": "107" + "0" * 5 + "-0000-5000-8000-"
                                             "000000000000" for j in example.jobs},
                  **{f"{j}.token": "t" * 32 for j in example.jobs}}
        for step in example.steps:
            body = replay._body(step.spec, values)
            params = {k: replay._fill(v, values) for k, v in step.spec.get("params", {}).items()}
            try:
                kinds.add(messages.parse(body, params).kind)
            except messages.MessageRejected:
                pass
    assert kinds == {"event", "callback", "parameters", "delete"}


def test_replaying_twice_into_one_store_starts_from_new_jobs(sqlite_uri):
    scenarios = EXAMPLES / "scenarios"
    first = replay.replay_paths([scenarios], store_uri=sqlite_uri)
    second = replay.replay_paths([scenarios], store_uri=sqlite_uri)
    assert all(r.ok for r in first + second)
    assert {r.job_uuid for r in first}.isdisjoint({r.job_uuid for r in second})


def _fixture(tmp_path: Path, doc: dict, name: str = "case.json") -> Path:
    path = tmp_path / "fixtures" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


RUN = {"uuid": "{{job.uuid}}", "name": "run", "token": "{{job.token}}"}


def test_a_wrong_expectation_is_a_mismatch(tmp_path):
    path = _fixture(tmp_path, {"steps": [{"message": RUN,
                                          "expect": {"outcome": "applied", "state": "FAILED"}}]})
    [result] = replay.replay_paths([path])
    assert not result.ok
    assert result.problems == ("state RUNNING, expected FAILED",)


@pytest.mark.parametrize("doc, problem", [
    ({"steps": []}, "'steps' must be a non-empty list"),
    ({"steps": [{"message": RUN}]}, "'expect' must be an object"),
    ({"steps": [{"message": RUN, "expect": {"outcome": "applied"}, "colour": 1}]},
     "unknown key(s) colour"),
    ({"steps": [{"message": {"token": "{{other.token}}"}, "expect": {"outcome": "applied"}}]},
     "undeclared job"),
    ({"steps": [{"message": {"token": "{{secret}}"}, "expect": {"outcome": "applied"}}]},
     "unknown placeholder"),
    ({"steps": [{"message": RUN, "expect": {"outcome": "applied", "state": "DONE"}}]},
     "not a lifecycle state"),
])
def test_a_malformed_fixture_is_refused_naming_file_and_problem(tmp_path, doc, problem):
    path = _fixture(tmp_path, doc)
    with pytest.raises(ValidationError) as err:
        replay.load([path])
    assert str(path) in str(err.value) and problem in str(err.value)


def test_cli_replays_the_examples_and_prints_a_table(tmp_path):
    done = run_cli("replay", str(EXAMPLES), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 mismatched" in done.stdout
    assert "scenarios/full-lifecycle#1" in done.stdout
    assert "replaying" in done.stderr  # the progress display of a large set


def test_cli_exits_1_on_a_mismatch_and_2_on_a_bad_fixture(tmp_path):
    good = {"steps": [{"message": RUN, "expect": {"outcome": "applied", "state": "RUNNING"}}]}
    bad = {"steps": [{"message": RUN, "expect": {"outcome": "duplicate"}}]}
    _fixture(tmp_path, good, "a.json")
    _fixture(tmp_path, bad, "b.json")
    done = run_cli("replay", "--json", str(tmp_path / "fixtures"), cwd=tmp_path)
    assert done.returncode == 1
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["step"], r["ok"]) for r in rows] == [("a#1", True), ("b#1", False)]
    assert rows[1]["got"] == "applied" and rows[1]["expected"] == "duplicate"
    done = run_cli("replay", str(tmp_path / "missing"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no such file or folder" in done.stderr
    assert "Traceback" not in done.stderr
