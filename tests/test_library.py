"""The client library (contract §8) against both stores: ManagedPipelineJob and
ManagedPipelineJobInstance, through the same job operations every entry point uses."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

from pathlib import Path

import pytest
from conftest import STATE_PATHS
from transitions.core import MachineError

from reactor import ManagedPipelineJob, ManagedPipelineJobError, ManagedPipelineJobInstance
from reactor.domain import errors
from reactor.domain import lifecycle
from reactor.domain.errors import ArchiveError, AuthError, ConfigError, UnknownJob, UnknownPipeline
from reactor.domain.identifiers import job_uuid, pipeline_uuid, typed_uuid
from reactor.engine.jobs import Jobs
from reactor.domain.tokens import Authority

SECRET = "library-test-secret-" + "y" * 20
AUTH = Authority(SECRET)
EXPERIMENT = typed_uuid("experiment", "experiment.lab.1")
SAMPLE = typed_uuid("sample", "sample.lab.1")
MEASUREMENT = typed_uuid("measurement", "measurement.lab.1")
GENERATED = [e for e in lifecycle.EVENT_NAMES if e not in ("create", "reset")]
# contract §2, restated for the events that have a library method (see test_lifecycle for all).
ALLOWED = {
    "run": {"CREATED": "RUNNING", "RUNNING": "RUNNING"},
    "update": {s: s for s in ("CREATED", "RUNNING", "VALIDATING", "INDEXING")},
    "resource": {"CREATED": "CREATED", "RUNNING": "RUNNING"},
    "fail": {s: "FAILED" for s in ("CREATED", "RUNNING", "VALIDATING", "INDEXING")},
    "finish": {"RUNNING": "FINISHED", "FINISHED": "FINISHED"},
    "index": {"FINISHED": "INDEXING", "INDEXING": "INDEXING"},
    "indexed": {"FINISHED": "FINISHED", "INDEXING": "FINISHED"},
    "validate": {"FINISHED": "VALIDATING", "VALIDATED": "VALIDATING"},
    "validated": {"VALIDATING": "VALIDATED", "VALIDATED": "VALIDATED"},
    "reject": {"VALIDATING": "REJECTED"},
    "finalize": {"VALIDATED": "FINALIZED"},
    "retire": {s: "RETIRED" for s in ("FAILED", "FINALIZED", "FINISHED", "REJECTED",
                                      "VALIDATING", "VALIDATED")},
    "ready": {"RESET": "CREATED"},
}
PATHS = STATE_PATHS


@pytest.fixture(autouse=True)
def _isolated(isolated_cwd):
    """Every test runs isolated (see conftest.isolated_cwd)."""


@pytest.fixture
def pipeline(store) -> str:
    uid = pipeline_uuid("library-pipeline")
    store.add_pipeline({"uuid": uid, "name": "library-pipeline"})
    return uid


@pytest.fixture
def root(tmp_path):
    return tmp_path / "archive"


@pytest.fixture
def ops(store):
    """Job operations on the same store, to move jobs behind the library's back."""
    return Jobs(store, AUTH)


@pytest.fixture
def make(store_uri, pipeline, root):
    """Build ManagedPipelineJobs on the test store; closed afterwards."""
    made = []

    def _make(data=None, mongodb=None, pipelines=None, **kw):
        kw.setdefault("secret", SECRET)
        kw.setdefault("archive_root", root)
        if pipelines is None:
            pipelines = {"pipeline_uuid": pipeline, "job_manager_id": "jobs-manager",
                         "job_manager_nonce": "nonce-not-for-logs"}
        m = ManagedPipelineJob(mongodb or {"uri": store_uri}, pipelines, data=data, **kw)
        made.append(m)
        return m

    yield _make
    for m in made:
        m.close()


@pytest.fixture
def instance(store_uri):
    made = []

    def _instance(uuid, token=None, **kw):
        kw.setdefault("secret", SECRET)
        i = ManagedPipelineJobInstance({"uri": store_uri}, uuid, token=token, **kw)
        made.append(i)
        return i

    yield _instance
    for i in made:
        i.close()


def snapshot(store, uuid: str) -> str:
    return json.dumps(store.get_job(uuid, include_hidden=True), sort_keys=True)


# --- the documented tour ----------------------------------------------------------------------

def test_documented_tour(make, store):
    mpj = make(data={"sample": "S1"})
    assert mpj.setup() is mpj
    assert mpj.uuid.startswith("107") and mpj.state == "CREATED"
    mpj.run(data={"msg": "Job is now running!"}).update(data={"msg": "an update"})
    mpj.finish()
    assert mpj.state == "FINISHED"
    before = snapshot(store, mpj.uuid)
    with pytest.raises(MachineError) as info:
        mpj.run()
    assert "FINISHED" in str(info.value) and "'run'" in str(info.value)
    assert snapshot(store, mpj.uuid) == before
    names = [h["name"] for h in mpj.history]
    assert names == ["create", "run", "update", "finish"]
    assert mpj.history[1]["data"] == {"msg": "Job is now running!"}
    assert mpj.last_event == "finish"
    assert mpj.record["revision"] == 4


def test_event_methods_are_generated_for_every_event_but_create_and_reset():
    for event in GENERATED:
        method = getattr(ManagedPipelineJob, event)
        assert method.__name__ == event and method.__doc__
        assert getattr(ManagedPipelineJobInstance, event) is method
    assert not hasattr(ManagedPipelineJob, "create")
    assert ManagedPipelineJob.reset.__doc__ and "archive" in ManagedPipelineJob.reset.__doc__


@pytest.mark.parametrize("state", list(PATHS))
def test_every_library_event_from_every_state(make, ops, store, state):
    for event in GENERATED:
        mpj = make(data={"state": state, "event": event}).setup()
        for step in PATHS[state]:
            token = AUTH.admin_token() if step == "reset" else mpj.token
            ops.apply(mpj.uuid, step, None, token)
        assert mpj.state == state
        token = AUTH.admin_token() if event == "ready" else None
        destination = ALLOWED[event].get(state)
        before = snapshot(store, mpj.uuid)
        if destination is None:
            with pytest.raises(MachineError):
                getattr(mpj, event)(data={"n": 1}, token=token)
            assert snapshot(store, mpj.uuid) == before, (state, event)
        else:
            assert getattr(mpj, event)(data={"n": 1}, token=token) is mpj
            assert mpj.state == destination, (state, event)
            assert mpj.last_event == event and mpj.history[-1]["data"] == {"n": 1}


def test_event_before_setup_runs_setup_first(make, store):
    mpj = make(data={"lazy": True})
    assert mpj.uuid is None and mpj.token is None
    mpj.run()
    assert mpj.uuid is not None
    assert [h["name"] for h in store.get_job(mpj.uuid)["history"]] == ["create", "run"]


# --- setup: identity, idempotence, archive, callback ----------------------------------------

def test_setup_is_idempotent_and_reattaches(make, store):
    a = make(data={"x": 1}).setup()
    a.setup()
    b = make(data={"x": 1}).setup()
    assert a.uuid == b.uuid and a.token == b.token and a.callback == b.callback
    record = store.get_job(a.uuid)
    assert record["revision"] == 1 and len(record["history"]) == 1
    a.run()
    c = make(data={"x": 1}).setup()  # re-attaches whatever the job's state
    assert c.uuid == a.uuid and c.state == "RUNNING"
    assert store.get_job(a.uuid)["revision"] == 2


def test_uuid_is_deterministic_from_pipeline_child_of_and_data(make, store):
    other = pipeline_uuid("other-pipeline")
    store.add_pipeline({"uuid": other, "name": "other-pipeline"})
    base = make(data={"x": 1}, child_of=[EXPERIMENT]).setup()
    assert base.uuid == job_uuid(base.pipeline_uuid, [EXPERIMENT], {"x": 1})
    same = make(data={"x": 1}, child_of=[EXPERIMENT]).setup()
    assert same.uuid == base.uuid
    variants = [
        make(data={"x": 1}, child_of=[EXPERIMENT], pipelines={"pipeline_uuid": other}),
        make(data={"x": 1}, child_of=[SAMPLE]),
        make(data={"x": 1}),
        make(data={"x": 2}, child_of=[EXPERIMENT]),
    ]
    uuids = {v.setup().uuid for v in variants}
    assert len(uuids) == 4 and base.uuid not in uuids


def test_caller_supplied_uuid_wins(make, store):
    chosen = typed_uuid("pipelinejob", "my own id")
    mpj = make(data={"x": 1}, uuid=chosen).setup()
    assert mpj.uuid == chosen and store.get_job(chosen)["data"] == {"x": 1}


def test_setup_data_is_merged_and_part_of_the_identity(make):
    mpj = make(data={"a": 1}).setup(data={"b": 2})
    assert mpj.data == {"a": 1, "b": 2}
    assert mpj.uuid == job_uuid(mpj.pipeline_uuid, [], {"a": 1, "b": 2})
    assert mpj.record["data"] == {"a": 1, "b": 2}
    mpj.setup(data={"b": 2})  # same identity: still idempotent
    with pytest.raises(ManagedPipelineJobError):
        mpj.setup(data={"b": 3})
    assert mpj.record["data"] == {"a": 1, "b": 2}


def test_child_of_from_metadata_keywords_first_present_wins(make):
    m = make(experiment_id=EXPERIMENT, sample_id=SAMPLE).setup()
    assert m.record["child_of"] == [EXPERIMENT]
    m = make(sample_id=[SAMPLE], measurement_id=MEASUREMENT).setup()
    assert m.record["child_of"] == [SAMPLE]
    m = make(measurement_id=MEASUREMENT).setup()
    assert m.record["child_of"] == [MEASUREMENT]
    m = make(child_of=[SAMPLE, MEASUREMENT], experiment_id=EXPERIMENT).setup()
    assert m.record["child_of"] == [SAMPLE, MEASUREMENT]


def test_record_fields(make):
    m = make(data={"p": 1}, session="brave-otter", agent="agent-x", task="task-y",
             archive_system="my-storage").setup()
    r = m.record
    assert r["pipeline_uuid"] == m.pipeline_uuid and r["generated_by"] == [m.pipeline_uuid]
    assert (r["session"], r["agent"], r["task"]) == ("brave-otter", "agent-x", "task-y")
    assert r["archive_system"] == m.archive_system == "my-storage"
    assert r["archive_path"] == m.archive_path
    assert r["history"][0]["data"] == {"p": 1}


def test_default_archive_path_is_created_under_the_root(make, root):
    m = make(data={"a": 1}).setup()
    expected = root / "products" / "v2" / m.pipeline_uuid.replace("-", "") / \
        m.uuid.replace("-", "")
    assert m.archive_path == str(expected)
    assert expected.is_dir()


def test_relative_archive_path_is_taken_below_the_root(make, root):
    m = make(archive_path="custom/place").setup()
    assert m.archive_path == str(root / "custom" / "place")
    assert (root / "custom" / "place").is_dir()


def _all_jobs(store) -> str:
    return json.dumps(store.list_jobs(include_hidden=True), sort_keys=True)


def test_archive_path_outside_the_root_is_refused_and_nothing_is_written(make, store,
                                                                          tmp_path):
    elsewhere = tmp_path / "remote-system" / "job"
    m = make(archive_path=str(elsewhere))
    with pytest.raises(ArchiveError) as info:
        m.setup()
    assert "outside the archive root" in str(info.value) and str(elsewhere) in str(info.value)
    assert store.list_jobs(include_hidden=True) == [] and m.uuid is None
    assert not elsewhere.exists()


def _legacy_job(store, pipeline, n, archive_path, **fields):
    """A job written straight through the store, bypassing Jobs.create and its checks (as
    records made before archives had to be their own, or by a race)."""
    from reactor.domain import records

    uid = typed_uuid("pipelinejob", f"legacy {n}")
    record = records.new_job_record(uuid=uid, pipeline_uuid=pipeline, data={"legacy": n},
                                    date=records.now_iso(), archive_path=str(archive_path),
                                    **fields)
    store.create_job(record)
    return uid


# --- a job's archive must be its own ------------------------------------------------------------

def test_a_parent_of_another_jobs_archive_is_refused_at_setup(make, store, root):
    victim = make(data={"victim": 1}).setup()
    _fill(Path(victim.archive_path))
    before = _all_jobs(store)
    for parent in (root / "products" / "v2", root / "products",
                   Path(victim.archive_path).parent):
        attacker = make(data={"attacker": str(parent)}, archive_path=str(parent))
        with pytest.raises(ArchiveError) as info:
            attacker.setup()
        text = str(info.value)
        assert "contains the archive of job" in text and victim.uuid in text
        assert "must be its own" in text
        assert attacker.uuid is None and attacker.token is None
        assert _all_jobs(store) == before
    assert (Path(victim.archive_path) / "out.txt").read_text() == "result"


def test_a_relative_parent_is_refused_too(make, store, root):
    victim = make(data={"victim": 2}).setup()
    before = _all_jobs(store)
    with pytest.raises(ArchiveError) as info:
        make(data={"attacker": 2}, archive_path="products/v2").setup()
    assert victim.uuid in str(info.value)
    assert _all_jobs(store) == before


def test_the_same_or_an_inside_path_of_another_job_is_refused(make, store, root):
    first = make(data={"own": 1}, archive_path="mine/one").setup()
    before = _all_jobs(store)
    for path, words in ((str(root / "mine" / "one"), "is the archive of job"),
                        ("mine/one/", "is the archive of job"),
                        ("mine/./one", "is the archive of job"),
                        ("mine/one/deeper", "lies inside the archive of job"),
                        (str(root / "mine" / "one" / "a" / "b"), "lies inside the archive of job")):
        with pytest.raises(ArchiveError) as info:
            make(data={"other": path}, archive_path=path).setup()
        assert words in str(info.value) and first.uuid in str(info.value), path
        assert _all_jobs(store) == before
    # A sibling whose name merely starts with the same letters is not inside.
    sibling = make(data={"other": "sibling"}, archive_path="mine/one-more").setup()
    assert sibling.archive_path == str(root / "mine" / "one-more")


def test_a_hidden_jobs_archive_is_still_its_own(make, store):
    hidden = make(data={"hidden": 1}, archive_path="kept/by-hidden").setup()
    hidden.delete(token=AUTH.admin_token(), force=False)
    before = _all_jobs(store)
    with pytest.raises(ArchiveError) as info:
        make(data={"hidden": 2}, archive_path="kept").setup()
    assert hidden.uuid in str(info.value)
    assert _all_jobs(store) == before


def test_a_symlink_alias_of_another_jobs_archive_is_refused(make, store, root):
    victim = make(data={"alias": 1}).setup()
    alias = root / "alias"
    alias.symlink_to(Path(victim.archive_path).parent, target_is_directory=True)
    before = _all_jobs(store)
    with pytest.raises(ArchiveError) as info:
        make(data={"alias": 2}, archive_path=str(alias)).setup()
    assert "contains the archive of job" in str(info.value)
    with pytest.raises(ArchiveError):
        make(data={"alias": 3}, archive_path=str(alias / Path(victim.archive_path).name)).setup()
    assert _all_jobs(store) == before


@pytest.mark.parametrize("bad, words", [
    ("jobs/a\x00b", "NUL"),
    ("jobs/\udcff", "UTF-8"),
])
def test_unusable_archive_path_text_is_refused(make, store, root, bad, words):
    with pytest.raises(ArchiveError) as info:
        make(archive_path=bad).setup()
    assert words in str(info.value)
    assert store.list_jobs(include_hidden=True) == []
    assert not (root / "jobs").exists()


def test_setup_again_with_the_same_archive_path_reattaches(make, store, root):
    a = make(data={"again": 1}, archive_path="again/here").setup().run()
    b = make(data={"again": 1}, archive_path="again/here").setup()
    c = make(data={"again": 1}, archive_path=str(root / "again" / "here")).setup()
    assert a.uuid == b.uuid == c.uuid and c.state == "RUNNING"
    assert a.archive_path == b.archive_path == c.archive_path == str(root / "again" / "here")
    assert store.get_job(a.uuid)["revision"] == 2
    a.setup()  # the same object, too


def test_setup_of_an_existing_job_keeps_its_record_whatever_path_is_asked(make, store):
    other = make(data={"keep": "other"}, archive_path="keep/other").setup()
    job = make(data={"keep": 1}, archive_path="keep/mine").setup()
    before = _all_jobs(store)
    # Re-attaching creates nothing, so asking for an overlapping path changes nothing either.
    again = make(data={"keep": 1}, archive_path="keep/other/inside").setup()
    assert again.uuid == job.uuid and again.archive_path == job.archive_path
    assert _all_jobs(store) == before and other.archive_path != again.archive_path


def test_jobs_without_an_archive_root_refuse_archive_paths(store, pipeline, root):
    ops = Jobs(store, AUTH)
    with pytest.raises(ArchiveError) as info:
        ops.create(pipeline, {"no-root": 1}, archive_path=str(root / "x"))
    assert "archive root" in str(info.value)
    assert store.list_jobs(include_hidden=True) == []
    record, created = ops.create(pipeline, {"no-root": 2}, archive_path="")
    assert created and record["archive_path"] == ""
    record, created = ops.create(pipeline, {"no-root": 3})
    assert created and record["archive_path"] == ""


def test_jobs_create_stores_the_normalised_real_path(store, pipeline, root):
    ops = Jobs(store, AUTH, archive_root=str(root))
    record, _ = ops.create(pipeline, {"norm": 1}, archive_path=str(root) + "//a/./b/../c/")
    assert record["archive_path"] == str(root / "a" / "c")
    record, _ = ops.create(pipeline, {"norm": 2}, archive_path="rel/d")
    assert record["archive_path"] == str(root / "rel" / "d")
    with pytest.raises(ArchiveError):
        ops.create(pipeline, {"norm": 3}, archive_path=str(root))
    with pytest.raises(ArchiveError):
        ops.create(pipeline, {"norm": 4}, archive_path=5)
    assert len(store.list_jobs(include_hidden=True)) == 2


@pytest.fixture
def cli(store_uri, root, tmp_path, monkeypatch):
    """``reactor …`` in-process on the test store, with the test archive root and secret."""
    from click.testing import CliRunner
    from reactor.cli.main import main

    monkeypatch.setenv("REACTOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("REACTOR_STORE_URI", store_uri)
    monkeypatch.setenv("REACTOR_SECRET", SECRET)
    monkeypatch.setenv("REACTOR_ARCHIVE_ROOT", str(root))
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False)


def _cli_refuses(result, *words):
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("reactor: error:") and result.stderr.count("\n") == 1
    for word in words:
        assert word in result.stderr


def test_cli_jobs_create_refuses_what_reset_would_refuse(cli, make, store, pipeline, root,
                                                         tmp_path):
    victim = make(data={"cli-victim": 1}).setup()
    _fill(Path(victim.archive_path))
    before = _all_jobs(store)
    base = ("jobs", "create", "--pipeline", pipeline)
    for path in (str(root / "products" / "v2"), "products", str(Path(victim.archive_path))):
        _cli_refuses(cli(*base, "--data", json.dumps({"p": path}), "--archive-path", path),
                     victim.uuid, "must be its own")
    _cli_refuses(cli(*base, "--data", '{"p": "inside"}', "--archive-path",
                     str(Path(victim.archive_path) / "x")), "lies inside")
    _cli_refuses(cli(*base, "--data", '{"p": "outside"}', "--archive-path",
                     str(tmp_path / "elsewhere")), "outside the archive root")
    _cli_refuses(cli(*base, "--data", '{"p": "root"}', "--archive-path", str(root)),
                 "archive root itself")
    assert _all_jobs(store) == before
    assert (Path(victim.archive_path) / "out.txt").read_text() == "result"
    # Without --archive-path: a job without an archive, as before.
    result = cli(*base, "--data", '{"p": "none"}', "--json")
    assert result.exit_code == 0, result.output
    assert store.get_job(json.loads(result.stdout)["uuid"])["archive_path"] == ""
    result = cli(*base, "--data", '{"p": "own"}', "--archive-path", "cli/own", "--json")
    assert result.exit_code == 0, result.output
    assert store.get_job(json.loads(result.stdout)["uuid"])["archive_path"] == \
        str(root / "cli" / "own")


def test_token_and_callback(make, monkeypatch):
    monkeypatch.setenv("REACTOR_CALLBACK_URL", "https://jobs.example.org/callback?x-nonce=N")
    m = make(data={"cb": 1}).setup()
    assert m.token == AUTH.job_token(m.uuid) and len(m.token) == 32
    assert m.callback == (f"https://jobs.example.org/callback?x-nonce=N&uuid={m.uuid}"
                          f"&token={m.token}")
    assert m.token not in repr(m) and "nonce-not-for-logs" not in repr(m)


def test_properties_are_read_from_the_store_not_cached(make, ops):
    m = make(data={"fresh": 1}).setup()
    assert m.state == "CREATED"
    ops.apply(m.uuid, "run", {"by": "someone else"}, m.token)
    assert m.state == "RUNNING" and m.last_event == "run"
    assert m.history[-1]["data"] == {"by": "someone else"}


# --- cancel, fail ------------------------------------------------------------------------------

def test_cancel_before_any_event_deletes_the_record(make, store):
    m = make(data={"c": 1}).setup()
    m.cancel()
    assert store.get_job(m.uuid, include_hidden=True) is None
    with pytest.raises(ManagedPipelineJobError):
        m.run()
    with pytest.raises(ManagedPipelineJobError):
        m.cancel()
    assert store.get_job(m.uuid, include_hidden=True) is None
    m.setup()  # an explicit setup creates it again
    assert m.state == "CREATED"


def test_cancel_after_an_event_is_refused_and_keeps_the_record(make, store):
    m = make(data={"c": 2}).setup().run()
    before = snapshot(store, m.uuid)
    with pytest.raises(ManagedPipelineJobError) as info:
        m.cancel()
    assert "fail()" in str(info.value)
    assert snapshot(store, m.uuid) == before


def test_cancel_is_decided_from_the_stored_record(make, instance, store):
    # A fresh object re-attached to a job that already ran must not be able to cancel it.
    first = make(data={"c": 3}).setup()
    instance(first.uuid, token=first.token).run()
    second = make(data={"c": 3}).setup()
    with pytest.raises(ManagedPipelineJobError):
        second.cancel()
    with pytest.raises(ManagedPipelineJobError):
        first.cancel()  # this object never sent an event itself
    assert store.get_job(first.uuid)["state"] == "RUNNING"


def test_cancel_removes_linkage_references(make, store):
    m = make(data={"c": 4}).setup()
    store.put_document("files", {"uuid": typed_uuid("file", "f"), "child_of": [m.uuid, SAMPLE]})
    m.cancel()
    assert store.get_document("files", typed_uuid("file", "f"))["child_of"] == [SAMPLE]


@pytest.mark.parametrize("path", [[], ["run"]])
def test_fail_marks_failed(make, path):
    m = make(data={"f": len(path)}).setup()
    for step in path:
        getattr(m, step)()
    assert m.fail(data={"reason": "oom"}).state == "FAILED"
    assert m.history[-1] == {**m.history[-1], "name": "fail", "data": {"reason": "oom"}}


# --- reset, ready --------------------------------------------------------------------------------

def _fill(path):
    (path / "out.txt").write_text("result")
    (path / "sub").mkdir()
    (path / "sub" / "x.bin").write_bytes(b"\0\1")


def test_reset_clears_the_archive_contents_and_returns_to_created(make):
    m = make(data={"r": 1}).setup().run().finish()
    _fill(Path(m.archive_path))
    assert m.reset(data={"why": "rerun"}, token=AUTH.admin_token()) is m
    assert m.state == "CREATED"
    assert os.path.isdir(m.archive_path) and os.listdir(m.archive_path) == []
    names = [h["name"] for h in m.history]
    assert names == ["create", "run", "finish", "reset", "ready"]
    assert m.history[3]["data"] == {"why": "rerun"}
    m.run()  # the job can run again
    assert m.state == "RUNNING"


def test_reset_with_no_clear_path_keeps_the_files(make):
    m = make(data={"r": 2}).setup().run()
    _fill(Path(m.archive_path))
    m.reset(token=AUTH.admin_token(), no_clear_path=True)
    assert m.state == "CREATED" and (Path(m.archive_path) / "out.txt").exists()


@pytest.mark.parametrize("bad", [None, "", "job", "tampered", "expired", "future"])
def test_reset_ready_delete_refuse_anything_but_a_valid_admin_token(make, store, bad):
    m = make(data={"bad-token": str(bad)}).setup().run()
    _fill(Path(m.archive_path))
    token = {
        "job": m.token,
        "tampered": AUTH.admin_token()[:-1] + ("0" if AUTH.admin_token()[-1] != "0" else "1"),
        "expired": AUTH.admin_token(time.time() - 2 * AUTH.window),
        "future": AUTH.admin_token(time.time() + AUTH.window),
    }.get(bad, bad)
    before = snapshot(store, m.uuid)
    for call in (lambda: m.reset(token=token), lambda: m.ready(token=token),
                 lambda: m.delete(token=token)):
        with pytest.raises(AuthError):
            call()
    assert snapshot(store, m.uuid) == before
    assert (Path(m.archive_path) / "out.txt").exists()


def test_ready_needs_admin_token_and_moves_reset_to_created(make, instance, store):
    m = make(data={"ready": 1}).setup()
    instance(m.uuid).handle({"name": "reset", "token": AUTH.admin_token()})
    assert m.state == "RESET"
    with pytest.raises(AuthError):
        m.ready()
    assert m.state == "RESET"
    m.ready(token=AUTH.admin_token())
    assert m.state == "CREATED"


def test_reset_refuses_an_archive_outside_the_root_and_changes_nothing(store, pipeline,
                                                                      instance, tmp_path, root):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    # setup() refuses such a path now; a record from before may still hold one.
    uid = _legacy_job(store, pipeline, 3, outside)
    before = snapshot(store, uid)
    with pytest.raises(ArchiveError):
        instance(uid, archive_root=root).reset(token=AUTH.admin_token())
    assert (outside / "keep.txt").read_text() == "keep"
    assert snapshot(store, uid) == before


def test_reset_refuses_a_symlink_escaping_the_root(make, store, root, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    link = root / "jobs" / "link"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ArchiveError):  # refused at setup now
        make(data={"r": 4}, archive_path=str(link)).setup()
    assert store.list_jobs(include_hidden=True) == []
    # A job set up before the link was planted is refused at reset.
    m = make(data={"r": 4}, archive_path="jobs/planted").setup()
    os.rmdir(m.archive_path)
    os.symlink(outside, m.archive_path, target_is_directory=True)
    before = snapshot(store, m.uuid)
    with pytest.raises(ArchiveError):
        m.reset(token=AUTH.admin_token())
    assert (outside / "keep.txt").exists()
    assert snapshot(store, m.uuid) == before


def test_reset_of_a_legacy_parent_of_other_archives_refuses_and_changes_nothing(
        make, store, pipeline, instance, root):
    victim = make(data={"victim": "legacy"}).setup()
    _fill(Path(victim.archive_path))
    neighbour = make(data={"victim": "legacy", "n": 2}, archive_path="elsewhere/n").setup()
    _fill(Path(neighbour.archive_path))
    parent = root / "products" / "v2"
    uid = _legacy_job(store, pipeline, 10, parent)
    before = _all_jobs(store)
    legacy = instance(uid, archive_root=root)
    with pytest.raises(ArchiveError) as info:
        legacy.reset(token=AUTH.admin_token())
    assert "contains the archive of job" in str(info.value) and victim.uuid in str(info.value)
    assert "clear it" in str(info.value)
    assert AUTH.admin_token() not in str(info.value)
    assert _all_jobs(store) == before
    assert (Path(victim.archive_path) / "out.txt").read_text() == "result"
    assert (Path(victim.archive_path) / "sub" / "x.bin").read_bytes() == b"\0\1"
    # Stored in other spellings (relative to the root, with a trailing slash): still refused.
    for n, spelling in ((11, "products/v2"), (12, str(parent) + "/")):
        other = _legacy_job(store, pipeline, n, spelling)
        with pytest.raises(ArchiveError):
            instance(other, archive_root=root).reset(token=AUTH.admin_token())
    assert store.get_job(uid)["state"] == "CREATED" and len(store.get_job(uid)["history"]) == 1
    assert (Path(victim.archive_path) / "out.txt").exists()
    # The victim's own reset still clears its own archive (and only it): a record claiming
    # an enclosing directory does not stop the jobs inside from being reset.
    victim.reset(token=AUTH.admin_token())
    assert victim.state == "CREATED" and os.listdir(victim.archive_path) == []
    assert (Path(neighbour.archive_path) / "out.txt").exists()


def test_reset_refuses_when_another_job_has_the_same_archive(make, store, pipeline, root):
    m = make(data={"same": 1}, archive_path="shared/dir").setup().run()
    _fill(Path(m.archive_path))
    twin = _legacy_job(store, pipeline, 20, m.archive_path)
    before = _all_jobs(store)
    with pytest.raises(ArchiveError) as info:
        m.reset(token=AUTH.admin_token())
    assert "is the archive of job" in str(info.value) and twin in str(info.value)
    assert _all_jobs(store) == before and (Path(m.archive_path) / "out.txt").exists()
    # With no_clear_path the state still moves: nothing is deleted.
    m.reset(token=AUTH.admin_token(), no_clear_path=True)
    assert m.state == "CREATED" and (Path(m.archive_path) / "out.txt").exists()


def test_reset_of_a_legacy_archive_inside_another_clears_only_its_own_directory(
        make, store, pipeline, instance, root):
    outer = make(data={"outer": 1}, archive_path="outer").setup()
    _fill(Path(outer.archive_path))
    inner_path = Path(outer.archive_path) / "sub"
    uid = _legacy_job(store, pipeline, 30, inner_path)
    # The outer job's reset would empty the inner job's archive: refused.
    before = _all_jobs(store)
    with pytest.raises(ArchiveError) as info:
        outer.reset(token=AUTH.admin_token())
    assert "contains the archive of job" in str(info.value) and uid in str(info.value)
    assert _all_jobs(store) == before and (inner_path / "x.bin").exists()
    instance(uid, archive_root=root).reset(token=AUTH.admin_token())
    assert os.listdir(inner_path) == []
    assert (Path(outer.archive_path) / "out.txt").exists()


def test_reset_counts_hidden_jobs_archives(make, store, pipeline, instance, root):
    hidden = make(data={"hidden-reset": 1}).setup()
    _fill(Path(hidden.archive_path))
    hidden.delete(token=AUTH.admin_token(), force=False)
    uid = _legacy_job(store, pipeline, 40, root / "products")
    before = _all_jobs(store)
    with pytest.raises(ArchiveError):
        instance(uid, archive_root=root).reset(token=AUTH.admin_token())
    assert _all_jobs(store) == before and (Path(hidden.archive_path) / "out.txt").exists()


def test_reset_through_an_instance_clears_too(make, instance):
    m = make(data={"r": 5}).setup().run()
    _fill(Path(m.archive_path))
    i = instance(m.uuid, token=m.token, archive_root=m.archive_root)
    i.reset(token=AUTH.admin_token())
    assert i.state == "CREATED" and os.listdir(m.archive_path) == []


# --- delete ------------------------------------------------------------------------------------

def test_delete_removes_the_job_and_every_reference(make, store):
    m = make(data={"d": 1}).setup().run()
    other = typed_uuid("pipelinejob", "another job")
    fid, rid, eid = typed_uuid("file", "f1"), typed_uuid("reference", "r1"), EXPERIMENT
    store.put_document("files", {"uuid": fid, "child_of": [m.uuid, other],
                                 "generated_by": [m.uuid], "derived_using": [m.uuid]})
    store.put_document("references", {"uuid": rid, "acted_on": [other, m.uuid],
                                      "derived_from": [m.uuid]})
    store.put_document("experiments", {"uuid": eid, "acted_using": [m.uuid], "title": "kept"})
    archive_dir = m.archive_path
    m.delete(token=AUTH.admin_token())
    assert store.get_job(m.uuid, include_hidden=True) is None
    f, r, e = (store.get_document("files", fid), store.get_document("references", rid),
               store.get_document("experiments", eid))
    assert f["child_of"] == [other] and f["generated_by"] == [] and f["derived_using"] == []
    assert r["acted_on"] == [other] and r["derived_from"] == []
    assert e["acted_using"] == [] and e["title"] == "kept"
    assert os.path.isdir(archive_dir)  # the archive is left intact
    with pytest.raises(ManagedPipelineJobError):
        m.update()


def test_soft_delete_hides_the_job(make, store):
    m = make(data={"d": 2}).setup()
    m.delete(token=AUTH.admin_token(), force=False)
    assert store.get_job(m.uuid) is None
    assert store.get_job(m.uuid, include_hidden=True)["uuid"] == m.uuid
    with pytest.raises(UnknownJob):
        m.record


def test_delete_without_setup_uses_the_deterministic_uuid(make, store):
    uid = make(data={"d": 3}).setup().uuid
    make(data={"d": 3}).delete(token=AUTH.admin_token())
    assert store.get_job(uid, include_hidden=True) is None


def test_delete_of_a_missing_job_is_unknown_job(make):
    with pytest.raises(UnknownJob):
        make(data={"never": "created"}).delete(token=AUTH.admin_token())


# --- ManagedPipelineJobInstance ----------------------------------------------------------------

def test_instance_deferred_update(make, instance, store):
    m = make(data={"i": 1}).setup().run()
    i = instance(m.uuid, token=m.token)
    assert i.update(data={"progress": 50}) is i
    assert store.get_job(m.uuid)["history"][-1]["data"] == {"progress": 50}
    assert i.state == "RUNNING" and i.last_event == "update"
    i.finish()
    assert m.state == "FINISHED"


def test_instance_token_only_works_for_its_own_job(make, instance, store):
    a = make(data={"who": "a"}).setup()
    b = make(data={"who": "b"}).setup()
    before = snapshot(store, b.uuid)
    with pytest.raises(AuthError):
        instance(b.uuid, token=a.token).run()
    with pytest.raises(AuthError):
        instance(b.uuid, token=b.token[:-1] + ("0" if b.token[-1] != "0" else "1")).run()
    with pytest.raises(AuthError):
        instance(b.uuid).run()  # no token at all
    with pytest.raises(AuthError):
        b.run(token=a.token)
    assert snapshot(store, b.uuid) == before
    instance(b.uuid, token=AUTH.admin_token()).run()  # an admin token works everywhere
    assert b.state == "RUNNING"


def test_instance_handle(make, instance):
    m = make(data={"h": 1}).setup()
    i = instance(m.uuid, token="wrong-token-value")
    record = i.handle({"uuid": m.uuid, "name": "RUN", "data": {"x": 1}, "token": m.token})
    assert record["state"] == "RUNNING" and record["history"][-1]["name"] == "run"
    assert i.handle({"name": "update"}, token=m.token)["last_event"] == "update"
    with pytest.raises(AuthError):
        i.handle({"name": "update"})  # falls back to the (wrong) constructor token


@pytest.mark.parametrize("doc, error", [
    ("run", TypeError),
    ({"data": {}}, ValueError),
    ({"name": "launch"}, ValueError),
    ({"name": "create"}, MachineError),  # as on every path: recorded once, at creation
    ({"name": "run", "extra": 1}, ValueError),
    ({"name": "run", "uuid": typed_uuid("pipelinejob", "someone else")}, ValueError),
    ({"name": "run", "data": ["not", "a", "dict"]}, TypeError),
    ({"name": "reset"}, AuthError),
])
def test_instance_handle_bad_documents(make, instance, store, doc, error):
    m = make(data={"hb": 1}).setup()
    i = instance(m.uuid, token=m.token)
    before = snapshot(store, m.uuid)
    with pytest.raises(error):
        i.handle(doc)
    assert snapshot(store, m.uuid) == before


def test_instance_of_unknown_job_and_bad_arguments(store_uri, pipeline):
    with pytest.raises(UnknownJob):
        ManagedPipelineJobInstance({"uri": store_uri}, typed_uuid("pipelinejob", "nobody"),
                                   secret=SECRET)
    with pytest.raises(ValueError):
        ManagedPipelineJobInstance({"uri": store_uri}, pipeline, secret=SECRET)  # a 106 uuid
    with pytest.raises(ValueError):
        ManagedPipelineJobInstance({"uri": store_uri}, typed_uuid("pipelinejob", "x"),
                                   token="", secret=SECRET)


# --- bad input: a clear error, nothing written -------------------------------------------------

def test_data_must_be_a_dict_and_the_error_shows_the_fix(make, store):
    with pytest.raises(TypeError) as info:
        make(data={"Job is now running!"})  # the replaced system's documentation example
    assert "data={'msg': 'Job is now running!'}" in str(info.value)
    m = make(data={"ok": 1}).setup()
    before = snapshot(store, m.uuid)
    for bad in ({"Job is now running!"}, ["a"], "text", 3):
        with pytest.raises(TypeError) as info:
            m.run(data=bad)
        assert "dict" in str(info.value)
    with pytest.raises(TypeError) as info:
        m.update(data={"outer": {"inner": {1, 2}}})
    assert "data['outer']['inner']" in str(info.value)
    with pytest.raises(TypeError):
        m.update(data={1: "int key"})
    with pytest.raises(ValueError):
        m.update(data={"x": float("nan")})
    with pytest.raises(ValueError):
        m.update(data={"x": 2 ** 70})
    assert snapshot(store, m.uuid) == before


def test_unusual_keys_in_data_are_stored_safely(make):
    data = {"$set": {"state": "FINALIZED"}, "a.b": 1, "$": [{"$inc": 1}], "%24x": "y"}
    m = make(data={"safe": 1}).setup().run(data=data)
    assert m.state == "RUNNING" and m.history[-1]["data"] == data


@pytest.mark.parametrize("kwargs, error, words", [
    ({"unexpected": 1}, TypeError, "unexpected"),
    ({"uuid": "107-not-a-uuid"}, ValueError, "uuid"),
    ({"uuid": pipeline_uuid("x")}, ValueError, "107"),
    ({"child_of": "102-nope"}, ValueError, "child_of"),
    ({"child_of": 5}, TypeError, "child_of"),
    ({"experiment_id": SAMPLE}, ValueError, "102"),
    ({"archive_path": ""}, ValueError, "archive_path"),
    ({"archive_path": 5}, TypeError, "archive_path"),
    ({"session": ["s"]}, TypeError, "session"),
    ({"secret": "short"}, ValueError, "16 bytes"),
    ({"secret": b"0123456789abcdefgh"}, TypeError, "secret"),
    ({"archive_root": 7}, TypeError, "archive_root"),
    ({"data": ["a"]}, TypeError, "dict"),
])
def test_bad_constructor_arguments(make, store, root, kwargs, error, words):
    with pytest.raises(error) as info:
        make(**kwargs)
    assert words in str(info.value)
    assert store.list_jobs(include_hidden=True) == []
    assert not root.exists()


@pytest.mark.parametrize("pipelines, words", [
    ({}, "pipeline uuid"),
    ({"pipeline_uuid": "106-bad"}, "pipeline uuid"),
    ({"pipeline_uuid": typed_uuid("pipelinejob", "x")}, "106"),
    ({"pipeline_uuid": pipeline_uuid("y"), "typo_key": 1}, "typo_key"),
    ("106…", "dict"),
])
def test_bad_pipelines_argument(make, store, pipelines, words):
    with pytest.raises(ValueError) as info:
        make(pipelines=pipelines)
    assert words in str(info.value)
    assert store.list_jobs(include_hidden=True) == []


def test_pipeline_uuid_keyword_wins_and_must_be_registered(make, store, pipeline):
    unregistered = pipeline_uuid("not registered")
    m = make(pipelines={"pipeline_uuid": unregistered}, pipeline_uuid=pipeline).setup()
    assert m.record["pipeline_uuid"] == pipeline
    with pytest.raises(UnknownPipeline):
        make(data={"u": 1}, pipelines={"pipeline_uuid": unregistered}).setup()
    assert [j["uuid"] for j in store.list_jobs(include_hidden=True)] == [m.uuid]


def test_bad_calls_before_setup_write_nothing(make, store, root):
    m = make(data={"s": 1})
    with pytest.raises(TypeError):
        m.setup(data=["x"])
    with pytest.raises(TypeError):
        m.run(data="not a dict")
    with pytest.raises(AuthError):
        m.ready()
    with pytest.raises(AuthError):
        m.reset(token=AUTH.job_token(job_uuid(m.pipeline_uuid, [], {"s": 1})))
    assert store.list_jobs(include_hidden=True) == [] and not root.exists()
    assert m.uuid is None


def test_reset_and_delete_bad_options(make, store):
    m = make(data={"opt": 1}).setup()
    before = snapshot(store, m.uuid)
    with pytest.raises(TypeError):
        m.reset(token=AUTH.admin_token(), no_clear_path="yes")
    with pytest.raises(TypeError):
        m.reset(data="text", token=AUTH.admin_token())
    with pytest.raises(TypeError):
        m.delete(token=AUTH.admin_token(), force="no")
    assert snapshot(store, m.uuid) == before


# --- the mongodb argument ---------------------------------------------------------------------

def _b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_mongodb_authn_form(store_uri, make, store):
    m = make(data={"authn": 1}, mongodb={"authn": _b64url(store_uri)}).setup()
    assert store.get_job(m.uuid)["uuid"] == m.uuid
    padded = base64.b64encode(store_uri.encode()).decode()  # standard alphabet with padding
    assert make(data={"authn": 1}, mongodb={"authn": padded}).setup().uuid == m.uuid


def test_mongodb_uri_and_database_form(mongo_store_uri, mongo_uri, root):
    from reactor.store import open_store

    host, database = mongo_store_uri.rsplit("/", 1)
    with open_store(mongo_store_uri) as store:
        p = pipeline_uuid("db-form")
        store.add_pipeline({"uuid": p, "name": "db-form"})
        with ManagedPipelineJob({"uri": host + "/", "database": database}, {"pipeline_uuid": p},
                                data={"db": 1}, secret=SECRET, archive_root=root) as m:
            m.setup().run()
            assert store.get_job(m.uuid)["state"] == "RUNNING"


def test_mongodb_sqlite_form(sqlite_uri, root):
    from reactor.store import open_store

    with open_store(sqlite_uri) as store:
        p = pipeline_uuid("sqlite-form")
        store.add_pipeline({"uuid": p, "name": "sqlite-form"})
        with ManagedPipelineJob({"uri": sqlite_uri}, {"pipeline_uuid": p}, data={"s": 1},
                                secret=SECRET, archive_root=root) as m:
            m.setup()
            assert store.get_job(m.uuid)["state"] == "CREATED"


@pytest.mark.parametrize("mongodb, words", [
    ("mongodb://localhost/", "must be a dict"),
    (None, "must be a dict"),
    ({}, "exactly one"),
    ({"uri": "mongodb://h/", "authn": "bW9uZ29kYjovL2gv"}, "exactly one"),
    ({"uri": "mongodb://h/", "host": "h"}, "host"),
    ({"uri": "postgres://h/db"}, "not a usable store URI"),
    ({"uri": "sqlite:///"}, "not a usable store URI"),
    ({"uri": ""}, "non-empty"),
    ({"authn": "not base64!"}, "base64url"),
    ({"authn": "/w"}, "UTF-8"),
    ({"authn": _b64url("http://user:pa55word@host/db")}, "not a usable store URI"),
    ({"uri": "sqlite:///tmp/x.db", "database": "d"}, "MongoDB only"),
    ({"uri": "mongodb://h/one", "database": "two"}, "agree"),
    ({"uri": "mongodb://h/", "database": "bad.name"}, "database name"),
])
def test_bad_mongodb_argument(mongodb, words, pipeline):
    with pytest.raises(ValueError) as info:
        ManagedPipelineJob(mongodb, {"pipeline_uuid": pipeline}, secret=SECRET)
    assert words in str(info.value)
    assert "pa55word" not in str(info.value)


def test_missing_secret_for_a_mongodb_store_is_a_clear_error(mongo_store_uri):
    with pytest.raises(ConfigError) as info:
        ManagedPipelineJob({"uri": mongo_store_uri}, {"pipeline_uuid": pipeline_uuid("p")})
    assert "secret" in str(info.value)


def test_embedded_store_creates_its_own_secret(sqlite_uri, tmp_path, monkeypatch):
    from reactor.store import open_store

    state = tmp_path / "state"
    monkeypatch.setenv("REACTOR_STATE_DIR", str(state))
    with open_store(sqlite_uri) as store:
        p = pipeline_uuid("embedded")
        store.add_pipeline({"uuid": p, "name": "embedded"})
    with ManagedPipelineJob({"uri": sqlite_uri}, {"pipeline_uuid": p}) as m:
        m.setup().run()
        secret = (state / "secret").read_text().strip()
        assert m.token == Authority(secret).job_token(m.uuid)
        assert m.archive_path.startswith(str(state / "archive"))


def test_secret_from_configuration(store_uri, pipeline, tmp_path, monkeypatch):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.setenv("REACTOR_SECRET_FILE", str(secret_file))
    monkeypatch.setenv("REACTOR_ARCHIVE_ROOT", str(tmp_path / "arch"))
    with ManagedPipelineJob({"uri": store_uri}, {"pipeline_uuid": pipeline}, data={"c": 1}) as m:
        m.setup()
        assert m.token == AUTH.job_token(m.uuid)
        assert m.archive_root == str(tmp_path / "arch")


# --- package surface ---------------------------------------------------------------------------

def test_exports_and_error_types():
    import reactor

    assert reactor.ManagedPipelineJobError is errors.ManagedPipelineJobError
    assert issubclass(ManagedPipelineJobError, errors.ReactorError)
    assert issubclass(AuthError, PermissionError)
    with pytest.raises(AttributeError):
        reactor.NoSuchThing  # noqa: B018


def test_import_reactor_stays_cheap():
    code = ("import sys, reactor; "
            "heavy = [m for m in ('reactor.ingress.library', 'pymongo', 'transitions', 'yaml') "
            "if m in sys.modules]; print(heavy); "
            "from reactor import ManagedPipelineJob; print('reactor.ingress.library' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


def test_unreachable_store_is_store_unavailable_and_hides_the_password(monkeypatch, root):
    monkeypatch.setenv("REACTOR_SERVER_SELECTION_TIMEOUT_MS", "200")
    with ManagedPipelineJob({"uri": "mongodb://user:pa55word@127.0.0.1:1/x"},
                            {"pipeline_uuid": pipeline_uuid("p")}, secret=SECRET,
                            archive_root=root) as m:
        with pytest.raises(errors.StoreUnavailable) as info:
            m.setup()
    assert "pa55word" not in str(info.value)
    assert not root.exists()
