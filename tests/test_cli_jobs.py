"""``reactor jobs`` and ``reactor fsm``: tables for people, JSON for machines, one-line errors."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from conftest import TEST_SECRET
from reactor.domain import lifecycle
from reactor.cli.main import main
from reactor.domain.identifiers import pipeline_uuid
from reactor.domain.tokens import Authority

PIPELINE = pipeline_uuid("cli-tests")


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run ``reactor …`` in-process on a fresh embedded store with a registered pipeline."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("REACTOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REACTOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("REACTOR_STORE_URI", f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.setenv("REACTOR_SECRET", TEST_SECRET)
    from reactor.store import open_store

    with open_store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.add_pipeline({"uuid": PIPELINE, "name": "cli-tests"})
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return run


def create(cli, data: str = '{"sample": "A"}') -> tuple[str, str]:
    result = cli("jobs", "create", "--pipeline", PIPELINE, "--data", data, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    return out["uuid"], out["token"]


def assert_one_line_error(result, code: int, *words: str) -> None:
    assert result.exit_code == code
    assert result.stdout == ""
    assert result.stderr.startswith("reactor: error:") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


def test_jobs_create_prints_uuid_and_a_working_token(cli):
    result = cli("jobs", "create", "--pipeline", PIPELINE, "--data", '{"sample": "A"}')
    assert result.exit_code == 0
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["token"] == Authority(TEST_SECRET).job_token(lines["uuid"])
    again = cli("jobs", "create", "--pipeline", PIPELINE, "--data", '{"sample": "A"}')
    assert again.stdout == result.stdout
    assert "already exists" in again.stderr


def test_jobs_create_with_json_output(cli):
    uuid, token = create(cli)
    assert uuid.startswith("107") and token == Authority(TEST_SECRET).job_token(uuid)


@pytest.mark.parametrize("args, words", [
    (["--data", "{not json"], ["--data is not valid JSON"]),
    (["--data", "[1, 2]"], ["--data must be a JSON object"]),
    (["--pipeline", "106" + "0" * 5 + "-0000-5000-8000-000000000009"], ["not registered"]),
    (["--pipeline", "nonsense"], ["pipeline uuid"]),
    (["--uuid", "108" + "0" * 5 + "-0000-5000-8000-000000000000"], ["must start with 107"]),
    # No looser than a message: the same decoder and the same identifier rules.
    (["--uuid", "107" + "0" * 5 + "-0000-5000-8000-000000000000\n"], ["lower-case UUID"]),
    (["--child-of", '{"$ne": null}'], ["child_of must be a typed uuid"]),
    (["--child-of", PIPELINE + "\n"], ["child_of"]),
    (["--data", '{"a": 1, "a": 2}'], ["--data", "duplicate key"]),
    (["--data", '{"a": NaN}'], ["--data", "NaN"]),
    (["--data", '{"a": "\\ud800"}'], ["--data", "surrogate"]),
    (["--data", '{"a\\u0000": 1}'], ["--data", "NUL"]),
    (["--data", "[" * 10_000 + "]" * 10_000], ["--data", "nested too deeply"]),
    (["--data", '{"a":' * 70 + "1" + "}" * 70], ["--data", "nested deeper than 64"]),
    (["--data", '{"a": "\udcff"}'], ["--data", "UTF-8"]),  # a non-UTF-8 byte of argv
    (["--archive-path", "x\x00y"], ["NUL"]),
])
def test_jobs_create_refuses_bad_input_in_one_line(cli, args, words):
    base = {"--pipeline": PIPELINE, "--data": "{}"}
    options = dict(zip(args[::2], args[1::2]))
    merged = [x for k, v in {**base, **options}.items() for x in (k, v)]
    assert_one_line_error(cli("jobs", "create", *merged), 2, *words)
    assert json.loads(cli("jobs", "list", "--json").stdout) == []


def test_jobs_list_show_and_history(cli):
    from reactor.app import App
    from reactor.engine.pipeline import Item

    uuid, token = create(cli)
    other, _ = create(cli, '{"sample": "B"}')
    app = App.from_env()
    pipeline = app.pipeline()
    for name in ("run", "finish"):
        body = json.dumps({"uuid": uuid, "name": name, "token": token,
                           "data": {"step": name}}).encode()
        assert pipeline.process([Item(body)])[0].label == "applied"
    app.close()

    table = cli("jobs", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["UUID", "STATE", "LAST"]
    rows = {line.split()[0]: line.split()[1] for line in table[1:]}
    assert rows == {uuid: "FINISHED", other: "CREATED"}
    listed = json.loads(cli("jobs", "list", "--json", "--state", "finished").stdout)
    assert [j["uuid"] for j in listed] == [uuid]

    shown = cli("jobs", "show", uuid)
    assert shown.exit_code == 0 and "FINISHED" in shown.stdout and "3 entries" in shown.stdout
    assert token not in shown.stdout
    assert json.loads(cli("jobs", "show", uuid, "--json").stdout)["revision"] == 3

    history = cli("jobs", "history", uuid).stdout.splitlines()
    assert [line.split()[2:4] for line in history[1:]] == \
        [["create", "CREATED"], ["run", "RUNNING"], ["finish", "FINISHED"]]
    entries = json.loads(cli("jobs", "history", uuid, "--json").stdout)
    assert [e["data"] for e in entries[1:]] == [{"step": "run"}, {"step": "finish"}]


def test_show_and_history_of_an_unknown_job_fail_in_one_line(cli):
    missing = "107ffff0-0000-5000-8000-000000000000"
    assert_one_line_error(cli("jobs", "show", missing), 2, "no job with uuid")
    assert_one_line_error(cli("jobs", "history", "garbage"), 2, "pipelinejob uuid")


def test_an_unreachable_store_is_one_line_too(cli, monkeypatch):
    monkeypatch.setenv("REACTOR_STORE_URI", "mongodb://127.0.0.1:1/reactor")
    monkeypatch.setenv("REACTOR_SERVER_SELECTION_TIMEOUT_MS", "200")
    assert_one_line_error(cli("jobs", "list"), 2, "unavailable")


def test_fsm_table_lists_every_event_and_state(cli):
    result = cli("fsm")
    assert result.exit_code == 0
    words = result.stdout.split()
    for name in lifecycle.EVENT_NAMES + lifecycle.STATE_NAMES:
        assert name in words
    reset = next(line for line in result.stdout.splitlines() if line.startswith("reset "))
    assert "any state" in reset and "admin" in reset


def test_fsm_diagrams_have_an_edge_for_every_transition(cli):
    mermaid = cli("fsm", "--format", "mermaid").stdout
    dot = cli("fsm", "--format", "dot").stdout
    assert mermaid.startswith("stateDiagram-v2") and dot.startswith("digraph")
    for (src, event), dst in lifecycle.TABLE.items():
        edge = next(line for line in mermaid.splitlines() if line.strip().startswith(
            f"{src} --> {dst}:"))
        assert event in edge.split(":", 1)[1].replace(",", " ").split()
        assert f"{src} -> {dst} [" in dot
    assert cli("fsm", "--format", "png").exit_code == 2
