"""Hostile input on every public surface: the library, ``reactor invoke``, the CLI and
``reactor serve`` (contract §4 tokens, §5 messages, §6 outcomes, §9 bad input).

Every hostile input gets the documented refusal of its surface, changes nothing, and never
makes a token or the secret appear in what the process printed, logged or answered. The
classes of defect guarded here (named in each test's docstring):

1. a token in the wrong slot is echoed or logged (outcomes, logs, HTTP details, serve's
   access log, dead-letter details);
2. archive paths: a reset deleting other jobs' archives; paths outside the root, holding NUL,
   or overlapping another job's archive stored silently;
3. a trailing newline (or any white space) passing validation of uuids, statuses, events;
4. ``reactor serve`` answering 5xx (client gone mid-body; a valid callback at the depth limit);
5. non-UTF-8 bytes in invoke's parameters treated as the reactor's own failure;
6. the CLI looser than the message paths (``--child-of``, ``--data``, lone surrogates);
7. the paths disagreeing (``create`` for an existing job, NUL in data keys, white space
   around event names, the 401 detail of GET /jobs/{uuid}).

Most examples run the real entry points in-process (click's CliRunner on ``reactor.cli.main.main``
for the CLI and ``reactor invoke``; the library directly); a few real subprocesses prove the
real entry points: ``reactor invoke`` with raw non-UTF-8 environment bytes, and one
``reactor serve`` process (real uvicorn, real RabbitMQ) shared by the serve tests.
Hypothesis runs derandomized (reproducible in CI) and without shrinking (time budget): the
assertion messages name the operation that failed.
"""
from __future__ import annotations

from contextlib import contextmanager

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from transitions.core import MachineError

from conftest import TEST_SECRET
from hostile_helpers import (
    ADMIN, AUTHORITY, CONTROL, JOB_DATA, JOB_EVENTS, JOBS, PIPELINE, REJECT_REASONS, SAMPLE,
    TOKENS, Lazy, ServeProcess, World, admin_token, ascii_case_variants, assert_cli_refused,
    assert_invoke_applied, assert_invoke_refused, event_body, hostile_data, hostile_json_texts,
    leaks, library_refusal, near_miss_events, near_miss_statuses, near_miss_uuids, nested,
    problems_in_serve_log, resolve, run_cli, run_invoke, secrets, subprocess_env,
    surrogate_texts,
)
from reactor.domain.errors import ArchiveError


def hsettings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate], print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


_TYPED = re.compile(r"\A(1\d\d)[0-9a-f]{5}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
KNOWN_PREFIXES = ("100", "102", "103", "104", "105", "106", "107", "108", "109", "114")


def not_typed(prefixes: tuple[str, ...]):
    """A filter: True for values that are *not* a well-formed typed uuid with one of
    ``prefixes`` (so a near miss that happens to be valid in the context is skipped)."""
    def check(value: str) -> bool:
        value = resolve(value)
        m = _TYPED.match(value) if isinstance(value, str) else None
        return not (m and m.group(1) in prefixes)
    return check


def has_control(value: str) -> bool:
    return any(c in CONTROL or c == "\x00" for c in value)


@pytest.fixture
def world(isolated_cwd, tmp_path):
    """A fresh embedded store with the pipeline and the two jobs of ``hostile_helpers``."""
    w = World(tmp_path / "world")
    yield w
    w.close()


_counter = itertools.count()


@pytest.fixture
def fresh(isolated_cwd, tmp_path):
    """Make a new World per hypothesis example (closed at the end of the test)."""
    made = []

    def make() -> World:
        w = World(tmp_path / f"w{next(_counter)}")
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def no_leaks(texts: dict, what: str = "") -> None:
    found = leaks(texts)
    assert not found, f"{what}: a token or the secret was echoed:\n" + "\n".join(found)


# ============================================================================ 1. token leaks
@st.composite
def misplaced_tokens(draw, with_params: bool = True):
    """A message with a token (or the admin token, or the secret) in a slot where it does not
    belong: swapped with the uuid, as the event name, as a key, in a delete's uuid, glued to
    invalid text. Returns (MSG, params)."""
    i = draw(st.integers(0, 1))
    uuid, token = JOBS[i], TOKENS[i]
    secret = resolve(draw(st.sampled_from([token, TOKENS[1 - i], ADMIN, TEST_SECRET])))
    event = draw(st.sampled_from(JOB_EVENTS))
    forms = ["swap_body", "event_slot_body", "extra_key", "delete_uuid", "delete_action",
             "nul_key", "padded_uuid", "surrogate_key"]
    if with_params:
        forms += ["swap_params", "swap_callback", "event_slot_param", "swap_status_param",
                  "status_slot", "padded_token_param"]
    form = draw(st.sampled_from(forms))
    body = {
        "swap_body": lambda: event_body(secret, event, uuid),
        "event_slot_body": lambda: event_body(uuid, secret, token),
        "extra_key": lambda: json.dumps(resolve({"uuid": uuid, "name": "update",
                                                 "token": token, secret: 1})),
        "delete_uuid": lambda: json.dumps(resolve({"uuid": secret, "action": "delete",
                                                   "token": uuid})),
        "delete_action": lambda: json.dumps(resolve({"uuid": uuid, "action": secret,
                                                     "token": ADMIN})),
        "nul_key": lambda: event_body(uuid, "update", token, {resolve(secret) + "\x00": 1}),
        "padded_uuid": lambda: event_body(resolve(secret) + "\n", event, uuid),
        "surrogate_key": lambda: event_body(uuid, "update", token,
                                            {resolve(secret) + "\ud800": 1}),
    }
    params = {
        "swap_params": ("", {"uuid": secret, "event": event, "token": uuid}),
        "swap_callback": (json.dumps({"status": "RUNNING", "id": "hpc-1"}),
                          {"uuid": secret, "token": uuid}),
        "event_slot_param": ("", {"uuid": uuid, "event": secret, "token": token}),
        "swap_status_param": ("", {"uuid": secret, "token": uuid, "status": "FINISHED"}),
        "status_slot": ("", {"uuid": uuid, "token": token, "status": secret + "!"}),
        "padded_token_param": ("", {"uuid": secret + " ", "token": uuid, "event": event}),
    }
    if form in body:
        return body[form](), {}
    msg, p = params[form]
    return msg, resolve(p)


@hsettings(100)
@given(case=misplaced_tokens())
@example(case=(event_body(TOKENS[0], "run", JOBS[0]), {}))
@example(case=("", {"uuid": TOKENS[0], "token": JOBS[0], "event": "run"}))
def test_token_never_leaks_from_invoke_when_misplaced(world, case):
    """Class 1: a token in the wrong slot (swapped with the uuid, as event name or key, …) is
    refused by ``reactor invoke`` and appears neither in the outcome line nor in its log."""
    msg, params = case
    before = world.dump()
    res = run_invoke(world.env, msg, **params)
    assert_invoke_refused(res)
    no_leaks(res.texts(), f"invoke MSG={msg[:120]!r} params={params}")
    assert world.dump() == before


@hsettings(60)
@given(case=misplaced_tokens(with_params=False))
@example(case=(event_body(TOKENS[0], "run", JOBS[0]), {}))
def test_token_never_leaks_into_dead_letter_details(world, case):
    """Class 1: the dead letter of a message with a misplaced token (its headers: reason,
    detail, …; and the operator's view of it, ``reactor deadletters list/show``) never shows
    the token."""
    from reactor.consume.settle import Limits, decide, forwarded_properties
    from reactor.ops.deadletters import from_queued
    from reactor.engine.pipeline import Item
    from reactor.broker.base import Delivery
    from reactor.broker.browse import QueuedMessage

    msg, _ = case
    body = msg.encode("utf-8", "surrogatepass")
    [outcome] = world.app.pipeline().process([Item(body, "dl-1")])
    assert outcome.kind == "rejected", outcome
    delivery = Delivery(body, 1, 1, "reactor.events", "reactor", JOBS[0], False,
                        {"message_id": "dl-1", "headers": {}})
    attempt = 99  # past every retry: the dead letter itself
    action = decide(outcome, attempt, Limits())
    assert action.kind == "dead_letter" or action.kind.startswith("dead"), action
    props = forwarded_properties(delivery, action, attempt, outcome.label)
    view = from_queued(QueuedMessage(0, body, props, "reactor.dead", "", False)).to_dict()
    no_leaks({"dead-letter headers": props["headers"], "outcome detail": outcome.detail},
             f"dead letter of {msg[:120]!r}")
    # The body is the sender's own message; the operator's view of it masks the tokens.
    found = leaks({"dead-letter view": view}, secrets()[:-1])
    assert not found, f"dead letter of {msg[:120]!r}:\n" + "\n".join(found)


@pytest.mark.parametrize("slot", ["routing_key", "message_id"])
def test_token_never_leaks_into_dead_letter_routing_key_or_message_id(world, slot):
    """Class 1 (dead-letter details): a sender that swapped uuid and token and used the value
    of its uuid slot as the routing key (or put a token in the AMQP message id) gets a dead
    letter whose reactor headers and operator view (``reactor deadletters list/show``) do not
    show that token."""
    from reactor.consume.settle import Limits, decide, forwarded_properties
    from reactor.ops.deadletters import from_queued
    from reactor.engine.pipeline import Item
    from reactor.broker.base import Delivery
    from reactor.broker.browse import QueuedMessage

    body = event_body(TOKENS[0], "run", JOBS[0]).encode()
    message_id = TOKENS[1] if slot == "message_id" else "dl-2"
    routing_key = TOKENS[0] if slot == "routing_key" else JOBS[0]
    [outcome] = world.app.pipeline().process([Item(body, message_id)])
    assert outcome.kind == "rejected", outcome
    delivery = Delivery(body, 1, 1, "reactor.events", "reactor", routing_key, False,
                        {"message_id": message_id, "headers": {}})
    action = decide(outcome, 99, Limits())
    props = forwarded_properties(delivery, action, 99, outcome.label)
    view = from_queued(QueuedMessage(0, body, props, "reactor.dead", "", False)).to_dict()
    no_leaks({"dead-letter headers": props["headers"], "dead-letter view": view},
             f"dead letter with a token as its {slot}")


def test_token_never_leaks_from_invoke_message_id(world):
    """Class 1 (the message_id slot): a token given as invoke's ``message_id`` (the duplicate
    key) appears neither in the outcome line nor in the log — applied or rejected — nor in
    what ``reactor jobs history`` prints afterwards."""
    for msg in (event_body(JOBS[0], "update", TOKENS[0], {"m": 1}),
                event_body(JOBS[0], "bogus", TOKENS[0])):
        for mid in (TOKENS[1], admin_token()):
            res = run_invoke(world.env, msg, message_id=mid)
            assert res.outcome is not None, res
            no_leaks(res.texts(), f"invoke with message_id={mid[:4]}…")
    for args in (("jobs", "history", JOBS[0]), ("jobs", "history", JOBS[0], "--json"),
                 ("jobs", "show", JOBS[0], "--json")):
        res = run_cli(world.env, *args)
        assert res.code == 0, res
        no_leaks(res.texts(), f"reactor {' '.join(args)} after a token as message_id")


CLI_TOKEN_SLOTS = {
    "jobs-show": ("jobs", "show", "{v}"), "jobs-history": ("jobs", "history", "{v}"),
    "jobs-show-json": ("jobs", "show", "{v}", "--json"),
    "create-uuid": ("jobs", "create", "--pipeline", PIPELINE, "--uuid", "{v}"),
    "create-pipeline": ("jobs", "create", "--pipeline", "{v}"),
    "create-child-of": ("jobs", "create", "--pipeline", PIPELINE, "--data", '{"c": "leak"}',
                        "--child-of", "{v}"),
    "token-job": ("token", "job", "{v}"),
    "pipelines-add-uuid": ("pipelines", "add", "--name", "leaky", "--uuid", "{v}"),
    "jobs-list-pipeline": ("jobs", "list", "--pipeline", "{v}"),
}


@pytest.mark.parametrize("args", list(CLI_TOKEN_SLOTS.values()), ids=list(CLI_TOKEN_SLOTS))
def test_token_never_leaks_from_cli_errors(world, args):
    """Class 1: the CLI refuses a token given where a uuid belongs, and neither its error line
    nor anything else it prints shows the token (or the secret)."""
    for value in (TOKENS[0], admin_token(), TEST_SECRET, TOKENS[1] + "\n"):
        before = world.dump()
        argv = [a.replace("{v}", value) for a in args]
        res = run_cli(world.env, *argv)
        if args[:2] == ("jobs", "list"):
            # A filter that matches nothing is not an error; it must still not echo.
            assert res.exception is None, res
        else:
            assert_cli_refused(res, ("uuid", "pipeline", "child"))
        no_leaks(res.texts(), f"reactor {' '.join(map(repr, argv))}")
        assert world.dump() == before


def test_token_never_leaks_from_library_errors(world):
    """Class 1: library errors for a token in a uuid slot (job uuid, pipeline uuid, child_of,
    an event document's uuid) name the problem without echoing the token or the secret."""
    before = world.dump()
    for value in (TOKENS[0], admin_token(), TEST_SECRET, TOKENS[1] + "\n"):
        calls = {
            "ManagedPipelineJob(uuid=)": lambda: world.mpj({"x": 1}, uuid=value),
            "pipelines['pipeline_uuid']": lambda: world.mpj(
                {"x": 1}, pipelines={"pipeline_uuid": value}),
            "child_of": lambda: world.mpj({"x": 1}, child_of=[value]),
            "sample_id": lambda: world.mpj({"x": 1}, sample_id=value),
            "ManagedPipelineJobInstance(uuid=)": lambda: world.instance(value, TOKENS[0]),
        }
        for what, call in calls.items():
            exc = library_refusal(call, ("uuid", "child_of", "sample"))
            no_leaks({"error": str(exc), "repr": repr(exc)}, f"{what} = {value[:4]}…")
        inst = world.instance(JOBS[0], TOKENS[0])
        try:
            exc = library_refusal(lambda: inst.handle({"uuid": value, "name": "update"}),
                                  "uuid")
            no_leaks({"error": str(exc)}, f"handle({{'uuid': {value[:4]}…}})")
            exc = library_refusal(lambda: inst.handle({"name": value}), "event")
            no_leaks({"error": str(exc)}, f"handle({{'name': {value[:4]}…}})")
            exc = library_refusal(lambda: inst.update(token=TOKENS[1]))
            no_leaks({"error": str(exc)}, "update(token=<another job's token>)")
        finally:
            inst.close()
    assert world.dump() == before


@pytest.mark.timeout(120)
def test_token_never_leaks_from_a_real_invoke_process(world):
    """Class 1 (real entry point): a real ``reactor invoke`` process given a message with the
    uuid and token swapped rejects it, and no token reaches its stdout or stderr."""
    env = subprocess_env(world)
    env[b"MSG"] = event_body(TOKENS[0], "run", JOBS[0]).encode()
    done = subprocess.run([sys.executable, "-m", "reactor.cli.main", "invoke"], env=env,
                          cwd=world.base, capture_output=True, timeout=120)
    out, err = done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1, (done.returncode, out, err)
    assert len(out.splitlines()) == 1 and json.loads(out)["outcome"].startswith("rejected:"), out
    assert "Traceback" not in err, err
    no_leaks({"stdout": out, "stderr": err}, "real reactor invoke, uuid and token swapped")


# ============================================================================ 2. archives
ARCHIVE_KINDS = ["equal", "equal_trailing_slash", "equal_dot", "parent", "grandparent",
                 "child", "root", "outside", "dotdot", "nul", "symlink_out", "symlink_to_a",
                 "relative_parent", "relative_dotdot", "sibling"]


def _archive_path(world: World, a_path: str, kind: str) -> str:
    root = world.root
    a = Path(a_path)
    if kind == "symlink_out":
        target = world.base / "outside-target"
        target.mkdir(exist_ok=True)
        link = root / "link-out"
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
        return str(link / "job")
    if kind == "symlink_to_a":
        link = root / "link-a"
        if not link.exists():
            link.symlink_to(a, target_is_directory=True)
        return str(link)
    return {
        "equal": str(a), "equal_trailing_slash": str(a) + "/",
        "equal_dot": str(a.parent / "." / a.name), "parent": str(a.parent),
        "grandparent": str(a.parent.parent), "child": str(a / "sub"), "root": str(root),
        "outside": str(world.base / "elsewhere"),
        "dotdot": str(root / "x" / ".." / ".." / "escaped"),
        "nul": str(root / "ok\x00" / "evil"), "relative_parent": "products",
        "relative_dotdot": "../escaped", "sibling": str(root / "elsewhere" / "job-b"),
    }[kind]


@contextmanager
def _job_with_output(world):
    """Job A, set up with a file in its archive that no other job's operation may touch."""
    a = world.mpj({"owner": "A"}).setup()
    try:
        precious = Path(a.archive_path) / "result.txt"
        precious.write_text("A's output")
        yield a, precious
    finally:
        a.close()


@hsettings(len(ARCHIVE_KINDS) * 2)
@given(kind=st.sampled_from(ARCHIVE_KINDS), reset_first=st.booleans())
def test_archive_unsafe_paths_are_refused_at_creation(fresh, kind, reset_first):
    """Class 2: a job whose archive_path equals, contains or lies inside another job's archive,
    lies outside the archive root (directly, by ``..`` or through a symlink), is the root
    itself, or holds NUL, is refused at creation with ArchiveError and nothing is stored; a
    sibling path is accepted and its reset clears only its own directory."""
    world = fresh()
    admin = admin_token()
    with _job_with_output(world) as (a, precious):
        path = _archive_path(world, a.archive_path, kind)
        before = world.dump()
        if kind != "sibling":
            def create():
                b = world.mpj({"owner": "B"}, archive_path=path)
                try:
                    b.setup()
                    if reset_first:
                        b.reset(token=admin)
                finally:
                    b.close()
            exc = library_refusal(create, "archive", types=(ArchiveError,))
            no_leaks({"error": str(exc)}, f"archive {kind}")
            assert world.dump() == before, f"a refused archive path ({kind}: {path!r}) " \
                                           "changed the store or the archive tree"
        else:
            b = world.mpj({"owner": "B"}, archive_path=path).setup()
            try:
                (Path(b.archive_path) / "b.txt").write_text("B's output")
                b.reset(token=admin)
                assert Path(b.archive_path).is_dir() and not any(Path(b.archive_path).iterdir())
            finally:
                b.close()
        assert precious.read_text() == "A's output", f"{kind}: A's archive was touched"


def test_archive_reset_never_deletes_another_jobs_archive(world):
    """Class 2: a library ``reset()`` (ManagedPipelineJob and ManagedPipelineJobInstance)
    empties only its own archive directory, keeps it, and never deletes another job's files,
    even for a record whose stored archive path contains another job's archive (say, imported
    from the replaced system): that reset leaves them (or refuses with ArchiveError, changing
    nothing)."""
    from reactor.domain import records

    admin = admin_token()
    a = world.mpj({"owner": "A"}).setup()
    b = world.mpj({"owner": "B"}).setup()
    try:
        for job in (a, b):
            (Path(job.archive_path) / "out").mkdir()
            (Path(job.archive_path) / "out" / "f.txt").write_text(job.uuid)
        a.reset(token=admin)
        assert Path(a.archive_path).is_dir() and not any(Path(a.archive_path).iterdir())
        assert (Path(b.archive_path) / "out" / "f.txt").read_text() == b.uuid
        assert a.state == "CREATED" and [h["name"] for h in a.history][-2:] == ["reset",
                                                                                 "ready"]
        # A record stored behind the library's back, its archive path the parent of b's.
        legacy = "107" + "e" * 5 + "-0000-5000-8000-00000000beef"
        record = records.new_job_record(uuid=legacy, pipeline_uuid=PIPELINE,
                                        data={"legacy": True}, date=records.now_iso(),
                                        archive_path=str(Path(b.archive_path).parent))
        world.store.create_job(record)
        before = world.dump()
        inst = world.instance(legacy)
        try:
            try:
                inst.reset(token=admin)
            except ArchiveError:
                assert world.dump() == before, "a refused reset changed the store"
        finally:
            inst.close()
        assert (Path(b.archive_path) / "out" / "f.txt").read_text() == b.uuid, \
            "a reset deleted another job's archive"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("kind", ["parent", "equal", "child", "root", "outside", "nul",
                                  "dotdot"])
def test_archive_cli_create_refuses_unsafe_archive_paths(world, kind):
    """Class 2: ``reactor jobs create --archive-path`` refuses what the library refuses (a path
    overlapping another job's archive, outside the root, the root, NUL): such a record would
    let a later library reset delete other jobs' archives."""
    with _job_with_output(world) as (a, precious):
        path = _archive_path(world, a.archive_path, kind)
        before = world.dump()
        res = run_cli(world.env, "jobs", "create", "--pipeline", PIPELINE, "--data",
                      '{"owner": "cli"}', "--archive-path", path)
        assert_cli_refused(res, "archive")
        assert world.dump() == before
        assert precious.read_text() == "A's output"


def test_archive_reset_message_is_only_the_state_change(world):
    """Class 2/7: a ``reset`` sent as a message (invoke) or through ``handle()`` is only the
    state change (→ RESET; the archive directory is left as it is), while the library's
    ``reset()`` empties the directory (kept) and ends in CREATED."""
    admin = admin_token()
    a = world.mpj({"owner": "A"}).setup()
    try:
        out = Path(a.archive_path) / "result.txt"
        out.write_text("A's output")
        res = run_invoke(world.env, event_body(a.uuid, "reset", ADMIN))
        assert_invoke_applied(res)
        assert a.state == "RESET" and out.read_text() == "A's output"
        assert_invoke_applied(run_invoke(world.env, event_body(a.uuid, "ready", ADMIN)))
        inst = world.instance(a.uuid, admin)
        try:
            inst.handle({"name": "reset", "token": admin})
            assert inst.state == "RESET" and out.read_text() == "A's output"
        finally:
            inst.close()
        a.reset(token=admin)
        assert a.state == "CREATED" and not out.exists() and Path(a.archive_path).is_dir()
    finally:
        a.close()


# ============================================================================ 3. trailing newline
PADS = {"lf": ("", "\n"), "crlf": ("", "\r\n"), "space": ("", " "), "leading-lf": ("\n", ""),
        "nbsp": ("", "\u00a0")}
FRESH_JOB = "107" + "a" * 5 + "-0000-5000-8000-000000000a11"
FRESH_PIPELINE = "106" + "a" * 5 + "-0000-5000-8000-000000000a11"


@pytest.mark.parametrize("pad", list(PADS.values()), ids=list(PADS))
def test_trailing_newline_uuids_are_refused_by_the_cli(world, pad):
    """Class 3: a uuid with a trailing newline (or surrounding white space) is refused by
    ``reactor jobs create --uuid``, ``--child-of``, ``--pipeline``, ``pipelines add --uuid``,
    ``jobs show``, ``jobs history`` and ``token job``, and nothing is stored."""
    before_pad, after_pad = pad

    def padded_(value: str) -> str:
        return before_pad + value + after_pad

    before = world.dump()
    cases = [
        (("jobs", "create", "--pipeline", PIPELINE, "--data", '{"t": 1}', "--uuid",
          padded_(FRESH_JOB)), "uuid"),
        (("jobs", "create", "--pipeline", PIPELINE, "--data", '{"t": 2}', "--child-of",
          padded_(SAMPLE)), "child"),
        (("jobs", "create", "--pipeline", padded_(PIPELINE), "--data", '{"t": 3}'),
         "pipeline"),
        (("pipelines", "add", "--name", "newline-pipeline", "--uuid", padded_(FRESH_PIPELINE)),
         "uuid"),
        (("jobs", "show", padded_(JOBS[0])), "uuid"),
        (("jobs", "history", padded_(JOBS[0])), "uuid"),
        (("token", "job", padded_(JOBS[0])), "uuid"),
    ]
    for args, word in cases:
        res = run_cli(world.env, *args)
        assert_cli_refused(res, (word, "uuid"))
        assert world.dump() == before, f"reactor {args} changed the store"


@pytest.mark.parametrize("pad", list(PADS.values()), ids=list(PADS))
def test_trailing_newline_uuids_are_refused_by_the_library(world, pad):
    """Class 3: ``ManagedPipelineJob(uuid=…)``, ``ManagedPipelineJobInstance(uuid=…)``,
    ``child_of`` and the pipeline uuid with a trailing newline (or surrounding white space)
    raise ValueError naming the uuid, and nothing is stored."""
    before_pad, after_pad = pad

    def padded_(value: str) -> str:
        return before_pad + value + after_pad

    before = world.dump()
    library_refusal(lambda: world.mpj({"t": 1}, uuid=padded_(FRESH_JOB)).setup(), "uuid",
                    types=(ValueError,))
    library_refusal(lambda: world.instance(padded_(JOBS[0]), TOKENS[0]), "uuid",
                    types=(ValueError,))
    library_refusal(lambda: world.mpj({"t": 2}, child_of=[padded_(SAMPLE)]).setup(),
                    ("uuid", "child_of"), types=(ValueError,))
    library_refusal(lambda: world.mpj({"t": 3}, sample_id=padded_(SAMPLE)).setup(),
                    ("uuid", "sample"), types=(ValueError,))
    library_refusal(lambda: world.mpj({"t": 4}, pipelines={
        "pipeline_uuid": padded_(PIPELINE)}).setup(), "uuid", types=(ValueError,))
    assert world.dump() == before


@pytest.mark.parametrize("form", ["uri", "authn", "database"])
def test_trailing_newline_store_locations_do_not_open_another_store(world, form):
    """Class 3 (the library's ``mongodb`` argument): a store URI or database name with a
    trailing newline (``echo uri | base64`` adds one) is refused with ValueError naming
    ``mongodb``, or means the very same store; it never silently opens another store (a file
    or database whose name ends in a newline)."""
    import base64

    from reactor.ingress.library_args import store_location

    if form == "database":
        for name in ("reactor\n", "reactor ", "react\tor", "reactor\r\n"):
            try:
                _, database = store_location({"uri": "mongodb://127.0.0.1:1/", "database": name})
            except ValueError as exc:
                assert "database" in str(exc), exc
            else:
                assert database == name.strip() and database.isprintable(), \
                    f"database name {name!r} accepted as {database!r}"
        return
    uri = world.store_uri + "\n"
    mongodb = {"uri": uri} if form == "uri" else \
        {"authn": base64.urlsafe_b64encode(uri.encode()).decode()}
    try:
        job = world.mpj({"newline": form}, mongodb=mongodb)
    except ValueError as exc:
        assert "mongodb" in str(exc) and not isinstance(exc, UnicodeError), exc
        return
    from reactor.domain.errors import UnknownPipeline

    try:
        job.setup()
    except UnknownPipeline:
        job.uuid = None  # the pipeline is registered in the world's store: another store
    finally:
        job.close()
    assert job.uuid and world.job(job.uuid) is not None, \
        f"mongodb[{form!r}] with a trailing newline opened another store: " \
        f"{sorted(p.name for p in world.base.iterdir())}"
    assert not list(world.base.glob("*\n")), "a store file whose name ends in a newline"


@hsettings(80)
@given(status=near_miss_statuses(),
       form=st.sampled_from(["param", "body", "both"]))
@example(status="FINISHED\n", form="param")
@example(status="FINISHED\n", form="body")
@example(status="RUNNING\n", form="param")
def test_trailing_newline_statuses_are_refused_by_invoke(world, status, form):
    """Class 3: a job status with a trailing newline (any white space, an invisible or control
    character, a look-alike letter) is refused by ``reactor invoke`` — as the ``status``
    parameter or in the callback body — and changes nothing."""
    if form == "param" and "\x00" in status:
        status = status.replace("\x00", "")
    before = world.dump()
    body = {"id": "hpc-7"}
    params = {"uuid": JOBS[0], "token": TOKENS[0]}
    if form in ("body", "both"):
        body["status"] = status
    if form in ("param", "both"):
        params["status"] = status
    res = run_invoke(world.env, json.dumps(body), **params)
    assert_invoke_refused(res)
    assert world.dump() == before


@hsettings(120)
@given(name=near_miss_events(), form=st.sampled_from(["body", "param", "callback_event",
                                                       "library"]))
@example(name="run\n", form="body")
@example(name="run\n", form="param")
@example(name=" run", form="body")
@example(name="run\u00a0", form="param")
@example(name="RUN\n", form="library")
@example(name="create\n", form="body")
@example(name="finiſh", form="body")
def test_trailing_newline_and_padded_event_names_are_unknown_events(world, name, form):
    """Class 3/7: an event name with a trailing newline, Unicode white space, an invisible or
    control character around it, or a non-ASCII look-alike letter is ``unknown_event`` on
    every message path (body name, event parameter, a callback's event) and a ValueError
    naming the unknown event in the library (``handle``); nothing changes."""
    before = world.dump()
    reasons = ("unknown_event",) if not has_control(name) else (
        "unknown_event", "schema_invalid", "decode_error")
    if form == "body":
        res = run_invoke(world.env, event_body(JOBS[0], name, TOKENS[0]))
        assert_invoke_refused(res, reasons)
    elif form == "param":
        res = run_invoke(world.env, "", uuid=JOBS[0], token=TOKENS[0], event=name)
        assert_invoke_refused(res, reasons)
    elif form == "callback_event":
        res = run_invoke(world.env, json.dumps({"status": "RUNNING", "id": "h"}),
                         uuid=JOBS[0], token=TOKENS[0], event=name)
        assert_invoke_refused(res, reasons)
    else:
        inst = world.instance(JOBS[0], TOKENS[0])
        try:
            library_refusal(lambda: inst.handle({"name": name}), ("unknown", "event"),
                            types=(ValueError,))
        finally:
            inst.close()
    assert world.dump() == before


def test_paths_agree_event_names_ignore_ascii_case_only(world):
    """Class 7: event names match ignoring ASCII case on every path: "RUN", "Update",
    "uPdAtE" work through the message body, the event parameter and the library."""
    res = run_invoke(world.env, event_body(JOBS[0], "UPDATE", TOKENS[0], {"n": 1}))
    assert_invoke_applied(res)
    res = run_invoke(world.env, "", uuid=JOBS[0], token=TOKENS[0], event="uPdAtE", note="n")
    assert_invoke_applied(res)
    inst = world.instance(JOBS[0], TOKENS[0])
    try:
        inst.handle({"name": "RUN"})
        assert inst.state == "RUNNING"
        assert [h["name"] for h in inst.history] == ["create", "update", "update", "run"]
    finally:
        inst.close()


@hsettings(30)
@given(name=ascii_case_variants(["update", "resource"]))
def test_paths_agree_ascii_case_variants_are_applied(world, name):
    """Class 7 (the other side of the near misses): any ASCII case of an event name is that
    event, stored in lower case, on the message path and in the library."""
    res = run_invoke(world.env, event_body(JOBS[1], name, TOKENS[1]),
                     message_id=f"case-{next(_counter)}")
    assert_invoke_applied(res)
    assert world.job(JOBS[1])["history"][-1]["name"] == name.lower()
    inst = world.instance(JOBS[1], TOKENS[1])
    try:
        inst.handle({"name": name, "data": {"via": "library"}})
        assert inst.history[-1]["name"] == name.lower()
    finally:
        inst.close()


# ============================================================================ 5. non-UTF-8 invoke
NON_UTF8 = {"uuid": JOBS[0].encode()[:-2] + b"\xff\xfe",
            "token": TOKENS[0].encode() + b"\xff",
            "event": b"upd\xe4te",
            "status": b"RUNNING\xc3",
            "note": b"caf\xe9 au lait"}


def _non_utf8_env(world: World, name: str, value: bytes) -> dict:
    env = subprocess_env(world)
    params = {b"uuid": JOBS[0].encode(), b"token": TOKENS[0].encode(), b"event": b"update"}
    if name == "status":
        params.pop(b"event")
    params[name.encode()] = value
    env.update(params)
    env[b"MSG"] = b""
    return env


@pytest.mark.timeout(180)
def test_invoke_non_utf8_parameters_are_rejections_in_a_real_process(world):
    """Class 5 (real entry point): a real ``reactor invoke`` whose uuid, token, event, status
    or note environment variable holds bytes that are not UTF-8 rejects the message
    (exit 1, one ``rejected:<reason>`` line, no traceback), never ``retry:internal_error``, and
    changes nothing."""
    before = world.dump()
    procs = {}
    for name, value in NON_UTF8.items():
        procs[name] = subprocess.Popen([sys.executable, "-m", "reactor.cli.main", "invoke"],
                                       env=_non_utf8_env(world, name, value), cwd=world.base,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    problems = []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        out_t, err_t = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        lines = out_t.splitlines()
        label = None
        if len(lines) == 1:
            try:
                label = json.loads(lines[0]).get("outcome")
            except ValueError:
                pass
        if proc.returncode != 1 or label is None or not label.startswith("rejected:") or \
                label.split(":", 1)[1] not in (
                    "decode_error", "schema_invalid", "unknown_event", "auth_failed") or \
                "Traceback" in err_t:
            problems.append(f"{name}={NON_UTF8[name]!r}: exit {proc.returncode}, stdout "
                            f"{out_t[:300]!r}, stderr {err_t[-400:]!r}")
        found = leaks({"stdout": out_t, "stderr": err_t})
        problems += [f"{name}: {f}" for f in found]
    assert not problems, "\n".join(problems)
    assert world.dump() == before


@hsettings(80)
@given(name=st.sampled_from(["uuid", "token", "event", "status", "note", "message_id"]),
       prefix=st.sampled_from(["", "RUN", "upd", "107", "ok "]),
       bad=st.binary(min_size=1, max_size=8).filter(
           lambda b: b"\x00" not in b and not _decodes(b)))
def test_invoke_non_utf8_parameters_are_rejections(world, name, prefix, bad):
    """Class 5: any non-UTF-8 bytes in an actor parameter (as the platform passes raw
    environment bytes) end in a documented rejection, never a retry, and change nothing; a
    non-UTF-8 ``message_id`` only names the message."""
    before = world.dump()
    params: dict = {"uuid": JOBS[0], "token": TOKENS[0], "event": "update"}
    if name == "status":
        params.pop("event")
    value = prefix.encode() + bad
    if name == "message_id":
        res = run_invoke(world.env, "", message_id=os.fsdecode(value), **params)
        assert res.label in ("applied", "duplicate") or res.label.startswith("rejected:"), res
        assert not (res.label or "").startswith("retry:"), res
        return
    params[name] = value
    res = run_invoke(world.env, "", **params)
    assert_invoke_refused(res, ("decode_error", "schema_invalid", "unknown_event",
                                "auth_failed"))
    no_leaks(res.texts(), f"non-UTF-8 {name}")
    assert world.dump() == before


@hsettings(200)
@given(params=st.dictionaries(
    st.sampled_from(["uuid", "token", "event", "status", "note"]),
    st.text(st.characters(blacklist_characters="\x00"), max_size=24)
    | st.sampled_from(JOBS + TOKENS + [ADMIN, TEST_SECRET, "update", "RUNNING", "run\n"]),
    max_size=5),
    msg=st.sampled_from(["", "{}", '{"id": "x"}', '{"status": "RUNNING"}', "null", "[]"])
    | st.text(st.characters(blacklist_characters="\x00"), max_size=30))
def test_invoke_arbitrary_parameters_get_one_documented_outcome(world, params, msg):
    """Classes 1/3/5: any MSG text with any actor parameters gives exactly one JSON outcome
    line, exit 0 only for applied/duplicate and 1 otherwise, never ``retry:*`` (no store is
    down here), no traceback, and no token or the secret in stdout, stderr or the log."""
    params = resolve(params)
    res = run_invoke(world.env, msg, **params)
    assert res.cli.exception is None and "Traceback" not in res.stderr, res
    assert res.outcome is not None and res.stdout.count("\n") == 1, res
    label = res.label or ""
    assert not label.startswith("retry:"), f"bad input treated as an internal failure: {res}"
    assert res.code == (0 if label in ("applied", "duplicate") else 1), res
    if label.startswith("rejected:"):
        assert label.split(":", 1)[1] in REJECT_REASONS, res
    no_leaks(res.texts(), f"invoke MSG={msg!r} params={params}")


def _decodes(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ============================================================================ 6. the CLI
def child_of_near_misses():
    return (near_miss_uuids([SAMPLE, JOBS[1]], empty=False).filter(
        not_typed(KNOWN_PREFIXES))
            | st.sampled_from(['{"$ne": null}', '{"$gt": ""}', "null", "[]", "*", "$where",
                               "103", "sample-1", SAMPLE.upper()]))


@hsettings(60)
@given(value=child_of_near_misses())
@example(value='{"$ne": null}')
@example(value=SAMPLE + "\n")
def test_cli_child_of_must_be_a_typed_uuid(world, value):
    """Class 6: ``reactor jobs create --child-of`` takes only a typed uuid; anything else (an
    operator object's text, a near-miss uuid, a token) is refused naming --child-of, and
    nothing is stored."""
    value = resolve(value)
    before = world.dump()
    res = run_cli(world.env, "jobs", "create", "--pipeline", PIPELINE, "--data",
                  '{"child": "test"}', "--child-of", value)
    assert_cli_refused(res, ("child", "child_of", "child-of"))
    no_leaks(res.texts(), f"--child-of {value!r}")
    assert world.dump() == before


def test_cli_child_of_accepts_typed_uuids(world):
    """Class 6 (the accepted side): a typed uuid as ``--child-of`` is stored as given."""
    res = run_cli(world.env, "jobs", "create", "--pipeline", PIPELINE, "--data",
                  '{"child": "ok"}', "--child-of", SAMPLE, "--json")
    assert res.code == 0, res
    assert world.job(json.loads(res.stdout)["uuid"])["child_of"] == [SAMPLE]


@hsettings(60)
@given(text=hostile_json_texts())
@example(text='{"a": ' * 10_000 + "1" + "}" * 10_000)
@example(text='{"a": 1, "a": 2}')
@example(text='{"a": NaN}')
def test_cli_data_is_decoded_by_the_message_rules(world, text):
    """Class 6/7: ``--data`` is decoded by the rules messages are (duplicate keys, NaN and
    infinities, out-of-range numbers, nesting deeper than 64 — up to 10,000 deep —, NUL in
    keys, lone surrogates): the CLI refuses with a clear error naming --data (never
    "internal error: RecursionError"), and the same data in a message is rejected."""
    before = world.dump()
    res = run_cli(world.env, "jobs", "create", "--pipeline", PIPELINE, "--data", text)
    assert_cli_refused(res, "data")
    if "\udc80" not in text and "\udcff" not in text:  # raw surrogates: CLI arguments only
        msg = event_body(JOBS[0], "update", TOKENS[0], raw_data=text)
        assert_invoke_refused(run_invoke(world.env, msg), ("decode_error", "schema_invalid"))
    assert world.dump() == before


@pytest.mark.parametrize("text, words", [
    ('{"a": ' * 10_000 + "1" + "}" * 10_000, ("deep", "nest")),
    ("[" * 10_000 + "]" * 10_000, ("deep", "nest", "object")),
    ('{"a": ' * 70 + "1" + "}" * 70, ("deep", "nest")),
    ('{"a": 1, "a": 2}', ("duplicate",)),
    ('{"a": NaN}', ("nan",)),
    ('{"a": Infinity}', ("infinity", "range")),
    ('{"a\\u0000b": 1}', ("nul",)),
    ('{"a": "\\ud800"}', ("surrogate", "utf-8", "unicode")),
    ('{"a": "\udcff"}', ("surrogate", "utf-8", "unicode")),
], ids=["deep-10000", "array-10000", "deep-70", "duplicate", "nan", "infinity", "nul-key",
        "escaped-surrogate", "raw-surrogate"])
def test_cli_data_errors_name_the_problem(world, text, words):
    """Class 6: each ``--data`` refusal says what is wrong (nesting, duplicate key, NaN, NUL,
    surrogate), exit 2, never an internal error or a raw UnicodeEncodeError."""
    before = world.dump()
    res = run_cli(world.env, "jobs", "create", "--pipeline", PIPELINE, "--data", text)
    assert_cli_refused(res, words)
    assert "UnicodeEncodeError" not in res.stderr and "RecursionError" not in res.stderr, res
    assert world.dump() == before


def test_cli_and_library_refuse_lone_surrogates(world):
    """Class 6: a lone surrogate in library data, in ``session``/``agent``/``task``/
    ``archive_system``, in event data, in a token or the secret given to the library, in
    ``--data`` or another CLI option is refused with a documented error / a clear CLI error,
    never a raw UnicodeEncodeError, and nothing is stored."""
    before = world.dump()
    words = ("surrogate", "utf-8", "unicode")
    for bad in ({"a": "\ud800"}, {"\udfff": 1}, {"a": ["x\udc80"]}):
        library_refusal(lambda: world.mpj(bad).setup(), words, types=(ValueError, TypeError))
    for field in ("session", "agent", "task", "archive_system"):
        exc = library_refusal(lambda: world.mpj({"f": field}, **{field: "x\udcff"}).setup(),
                              types=(ValueError, TypeError))
        assert field in str(exc), f"{field}: the error does not name the field: {exc}"
    inst = world.instance(JOBS[0], TOKENS[0])
    try:
        library_refusal(lambda: inst.update(data={"note": "\ud83d"}), words,
                        types=(ValueError, TypeError))
        library_refusal(lambda: inst.handle({"name": "update", "data": {"\udc00": 1}}), words,
                        types=(ValueError, TypeError))
    finally:
        inst.close()
    for text in ('{"a": "\\ud800"}', '{"a": "\udcff"}'):
        assert_cli_refused(run_cli(world.env, "jobs", "create", "--pipeline", PIPELINE,
                                   "--data", text), words)
    for call in ("event_token", "instance_token", "reset_token"):
        _run_library_bad(world, call, TOKENS[0] + "\udcff")
    _run_library_bad(world, "secret", TEST_SECRET + "\udcff")
    res = run_cli(world.env, "jobs", "list", "--pipeline", PIPELINE[:-1] + "\udcff")
    if res.code != 0:
        assert_cli_refused(res)
    assert world.dump() == before


def test_cli_operator_keys_are_stored_safely_or_refused(world):
    """Class 6 (contract §9): ``$``-prefixed and dotted keys in ``--data`` are stored as given (and
    read back equal) or refused with a clear error; they never act as operators."""
    data = {"$set": {"state": "FINISHED"}, "a.b": 1, "$where": "1", "x": {"$ne": None}}
    res = run_cli(world.env, "jobs", "create", "--pipeline", PIPELINE, "--data",
                  json.dumps(data), "--json")
    if res.code == 0:
        uid = json.loads(res.stdout)["uuid"]
        record = world.job(uid)
        assert record["data"] == data and record["state"] == "CREATED"
    else:
        assert_cli_refused(res, "data")


CLI_SLOTS = ["--data", "--uuid", "--child-of", "--archive-path", "--pipeline", "show",
             "history", "token", "pipelines-add-uuid", "pipelines-add-name", "list-state",
             "list-pipeline"]


def _cli_args(slot: str, text: str) -> list[str]:
    create = ["jobs", "create", "--pipeline", PIPELINE, "--data"]
    return {
        "--data": create + [text],
        "--uuid": create + ['{"fuzz": "uuid"}', "--uuid", text],
        "--child-of": create + ['{"fuzz": "child"}', "--child-of", text],
        "--archive-path": create + ['{"fuzz": "archive"}', "--archive-path", text],
        "--pipeline": ["jobs", "create", "--pipeline", text],
        "show": ["jobs", "show", text], "history": ["jobs", "history", text],
        "token": ["token", "job", text],
        "pipelines-add-uuid": ["pipelines", "add", "--name", "fuzz", "--uuid", text],
        "pipelines-add-name": ["pipelines", "add", "--name", text],
        "list-state": ["jobs", "list", "--state", text],
        "list-pipeline": ["jobs", "list", "--pipeline", text],
    }[slot]


@hsettings(200)
@given(slot=st.sampled_from(CLI_SLOTS),
       text=st.text(max_size=40) | near_miss_uuids() | hostile_json_texts(shallow=True)
       | surrogate_texts())
def test_cli_arbitrary_arguments_get_a_clear_answer(world, slot, text):
    """Class 6: whatever text is given to a CLI option or argument, the command succeeds or
    refuses with exit 2 and one clear error line: never an uncaught exception, an internal
    error, a raw UnicodeError/RecursionError message, or an echoed token; a uuid slot never
    accepts what is not a typed uuid."""
    text = resolve(text)
    res = run_cli(world.env, *_cli_args(slot, text))
    if res.code != 0:
        assert_cli_refused(res)
    else:
        assert res.exception is None, res
        if slot in ("--uuid", "show", "history", "token"):
            assert _TYPED.match(text) and text.startswith("107"), f"accepted {text!r}: {res}"
        if slot in ("--pipeline", "pipelines-add-uuid"):
            assert _TYPED.match(text) and text.startswith("106"), f"accepted {text!r}: {res}"
        if slot == "--child-of":
            assert _TYPED.match(text), f"accepted {text!r}: {res}"
    texts = res.texts()
    if res.code == 0 and slot == "token":
        texts.pop("stdout")  # `reactor token job UUID` prints that job's token: its purpose
    no_leaks(texts, f"reactor {slot} {text!r}")


# ============================================================================ 7. paths agree
def test_paths_agree_create_message_for_an_existing_job(world):
    """Class 7: a ``create`` message for an existing job is ``rejected:invalid_transition`` on
    every message path (body, any ASCII case, the event parameter, with an admin token too)
    and adds no history entry; the library refuses it too."""
    before = world.dump()
    for msg, params in [(event_body(JOBS[0], "create", TOKENS[0]), {}),
                        (event_body(JOBS[0], "CREATE", TOKENS[0], {"again": True}), {}),
                        (event_body(JOBS[0], "create", ADMIN), {}),
                        ("", {"uuid": JOBS[0], "token": TOKENS[0], "event": "create"}),
                        ("", {"uuid": JOBS[0], "token": TOKENS[0], "event": "Create",
                              "note": "n"})]:
        res = run_invoke(world.env, msg, **params)
        assert_invoke_refused(res, ("invalid_transition",))
        assert world.dump() == before, f"create message {msg or params} changed the job"
    inst = world.instance(JOBS[0], TOKENS[0])
    try:
        library_refusal(lambda: inst.handle({"name": "create"}), "create",
                        types=(ValueError, MachineError))
    finally:
        inst.close()
    assert world.dump() == before


def test_paths_agree_nul_in_a_data_key(world):
    """Class 7: a NUL in a data key is refused by the library (job data, event data,
    ``handle``), by the CLI and by the message paths alike; nothing is stored."""
    before = world.dump()
    words = ("nul", "\\x00", "\\u0000")
    for bad in ({"a\x00": 1}, {"ok": {"\x00$set": 1}}, {"l": [{"k\x00": 1}]}):
        library_refusal(lambda: world.mpj(bad).setup(), words, types=(ValueError,))
        inst = world.instance(JOBS[0], TOKENS[0])
        try:
            library_refusal(lambda: inst.update(data=bad), words, types=(ValueError,))
            library_refusal(lambda: inst.handle({"name": "update", "data": bad}), words,
                            types=(ValueError,))
        finally:
            inst.close()
        res = run_invoke(world.env, event_body(JOBS[0], "update", TOKENS[0], bad))
        assert_invoke_refused(res, ("schema_invalid", "decode_error"))
        res = run_cli(world.env, "jobs", "create", "--pipeline", PIPELINE, "--data",
                      json.dumps(bad))
        assert_cli_refused(res, words)
    assert world.dump() == before


def _run_library_bad(world: World, what: str, value) -> BaseException:
    """One hostile library call (what, value); returns the refusal."""
    value = resolve(value)
    if what == "job_data":
        return library_refusal(lambda: world.mpj(value).setup(), "data")
    if what in ("event_data", "handle_data"):
        inst = world.instance(JOBS[0], TOKENS[0])
        try:
            if what == "event_data":
                return library_refusal(lambda: inst.update(data=value), "data")
            return library_refusal(lambda: inst.handle({"name": "update", "data": value}),
                                   "data")
        finally:
            inst.close()
    if what == "uuid":
        return library_refusal(lambda: world.mpj({"u": 1}, uuid=value).setup(), "uuid")
    if what == "instance_uuid":
        return library_refusal(lambda: world.instance(value, TOKENS[0]), "uuid")
    if what == "child_of":
        return library_refusal(lambda: world.mpj({"c": 1}, child_of=[value]).setup(),
                               ("child_of", "uuid"))
    if what == "pipeline":
        return library_refusal(lambda: world.mpj({"p": 1}, pipelines={
            "pipeline_uuid": value}).setup(), ("pipeline", "uuid"))
    if what in ("session", "agent", "task"):
        return library_refusal(lambda: world.mpj({"s": what}, **{what: value}).setup(), what)
    if what == "event_name":
        inst = world.instance(JOBS[0], TOKENS[0])
        try:
            return library_refusal(lambda: inst.handle({"name": value}), ("event", "unknown"))
        finally:
            inst.close()
    if what == "archive":
        return library_refusal(lambda: world.mpj({"ar": 1}, archive_path=value).setup(),
                               "archive")
    if what in ("event_token", "instance_token", "reset_token"):
        # A token that is not valid text (say, read from a non-UTF-8 file) is a wrong token.
        if what == "instance_token":
            def call():
                inst = world.instance(JOBS[0], value)
                try:
                    inst.update(data={"via": "instance token"})
                finally:
                    inst.close()
            return library_refusal(call, "token")
        # An existing job: an event before setup() would create the job first.
        job = world.instance(JOBS[0], TOKENS[0]) if what == "event_token" else \
            world.mpj({"reset": "token"})
        try:
            if what == "reset_token":
                return library_refusal(lambda: job.reset(token=value), "token")
            return library_refusal(lambda: job.update(token=value), "token")
        finally:
            job.close()
    if what == "secret":
        return library_refusal(lambda: world.mpj({"s": 1}, secret=value).setup(), "secret")
    raise AssertionError(what)


def library_hostile_calls():
    uuids = near_miss_uuids().filter(not_typed(("107",)))
    return st.one_of(
        st.tuples(st.sampled_from(["job_data", "event_data", "handle_data"]), hostile_data()),
        st.tuples(st.sampled_from(["uuid", "instance_uuid"]), uuids),
        st.tuples(st.just("child_of"), child_of_near_misses()),
        st.tuples(st.just("pipeline"), near_miss_uuids([PIPELINE], empty=False).filter(
            not_typed(("106",)))),
        st.tuples(st.sampled_from(["session", "agent", "task"]), surrogate_texts()),
        st.tuples(st.just("event_name"), near_miss_events()),
        st.tuples(st.just("archive"), st.sampled_from(["/etc", "/tmp/../etc/x", "a\x00b",
                                                       "../outside", "/"])),
        st.tuples(st.sampled_from(["event_token", "instance_token", "reset_token"]),
                  surrogate_texts().map(lambda t: TOKENS[0] + t)),
        st.tuples(st.just("secret"), surrogate_texts().map(lambda t: TEST_SECRET + t)),
    )


@hsettings(150)
@given(call=library_hostile_calls())
@example(call=("job_data", Lazy(lambda: {"deep": nested(10_000)}, "nested(10_000)")))
@example(call=("session", "\udcff"))
@example(call=("event_data", {"a\x00": 1}))
@example(call=("uuid", JOBS[0] + "\n"))
@example(call=("event_token", "\udcff" * 3))
@example(call=("secret", TEST_SECRET + "\udcff"))
def test_library_hostile_arguments_are_refused_with_documented_errors(world, call):
    """Classes 3/6/7: hostile library arguments (deep or NaN or NUL-keyed or surrogate-laden
    data, near-miss uuids, non-typed child_of, lone surrogates in text fields, padded event
    names, unsafe archive paths) raise only the documented errors (never UnicodeError,
    RecursionError, KeyError or a store error), name the problem, echo no token, and change
    nothing."""
    what, value = call
    before = world.dump()
    exc = _run_library_bad(world, what, value)
    no_leaks({"error": str(exc)}, f"library {what}")
    assert world.dump() == before, f"refused library call {what} changed the store"


# ----------------------------------------------------------------- nothing changes on refusal
small_data = st.dictionaries(st.sampled_from(["a", "b", "msg"]), st.integers(0, 3) |
                             st.sampled_from(["x", "y"]), max_size=2)


def legit_ops():
    return st.one_of(
        st.tuples(st.just("invoke"), st.integers(0, 1), st.sampled_from(
            ["run", "update", "resource", "finish", "fail", "RUN", "Update"]), small_data),
        st.tuples(st.just("invoke_param"), st.integers(0, 1),
                  st.sampled_from(["update", "run", "finish"]), st.sampled_from(["n1", "n2"])),
        st.tuples(st.just("callback"), st.integers(0, 1),
                  st.sampled_from(["RUNNING", "FINISHED", "HEARTBEAT", "queued"]),
                  st.sampled_from(["h1", "h2"])),
        st.tuples(st.just("cli_create"), st.integers(0, 2), small_data),
        st.tuples(st.just("lib_event"), st.integers(0, 1),
                  st.sampled_from(["update", "run", "finish", "index"]), small_data),
        st.tuples(st.just("lib_setup"), st.integers(0, 2), small_data),
    )


def hostile_invokes():
    job = st.integers(0, 1)
    uuid_bad = near_miss_uuids(nul=False).filter(not_typed(("107",)))
    return st.one_of(
        st.tuples(st.just("inv_uuid"), uuid_bad, st.sampled_from(JOB_EVENTS)),
        st.tuples(st.just("inv_name"), job, near_miss_events(controls=False)),
        st.tuples(st.just("inv_param_event"), job, near_miss_events(controls=False)),
        st.tuples(st.just("inv_status"), job, near_miss_statuses(controls=False)),
        st.tuples(st.just("inv_swap"), job, st.sampled_from(JOB_EVENTS)),
        st.tuples(st.just("inv_data"), job, hostile_json_texts(shallow=True)),
        st.tuples(st.just("inv_create"), job, st.sampled_from(["create", "CREATE"])),
        st.tuples(st.just("inv_other_token"), job, st.sampled_from(JOB_EVENTS)),
        st.tuples(st.just("inv_non_utf8"), job, st.sampled_from(sorted(NON_UTF8))),
        st.tuples(st.just("inv_admin_event"), job, st.sampled_from(["reset", "ready"])),
    )


def hostile_clis():
    return st.one_of(
        st.tuples(st.just("cli_uuid"), near_miss_uuids(nul=False).filter(
            not_typed(("107",)))),
        st.tuples(st.just("cli_child_of"), child_of_near_misses()),
        st.tuples(st.just("cli_data"), hostile_json_texts(shallow=True)),
        st.tuples(st.just("cli_pipeline"), near_miss_uuids([PIPELINE], empty=False).filter(
            not_typed(("106",)))),
        st.tuples(st.just("cli_archive"), st.sampled_from(["/etc/reactor", "a\x00b",
                                                           "/", "../../x"])),
    )


def hostile_ops():
    return st.one_of(hostile_invokes(), hostile_clis(),
                     library_hostile_calls().map(lambda c: ("lib_bad",) + c))


def _legit(world: World, op: tuple) -> str:
    """Apply one legitimate operation; its result as a comparable string."""
    kind = op[0]
    if kind == "invoke":
        _, i, event, data = op
        res = run_invoke(world.env, event_body(JOBS[i], event, TOKENS[i], data or None))
        return f"{res.code} {res.label}"
    if kind == "invoke_param":
        _, i, event, note = op
        res = run_invoke(world.env, "", uuid=JOBS[i], token=TOKENS[i], event=event, note=note)
        return f"{res.code} {res.label}"
    if kind == "callback":
        _, i, status, hpc = op
        res = run_invoke(world.env, json.dumps({"id": hpc, "status": status}), uuid=JOBS[i],
                         token=TOKENS[i])
        return f"{res.code} {res.label}"
    if kind == "cli_create":
        _, n, data = op
        res = run_cli(world.env, "jobs", "create", "--pipeline", PIPELINE, "--data",
                      json.dumps({"cli": n, **data}))
        return f"{res.code} {res.exception!r}"
    if kind == "lib_event":
        _, i, event, data = op
        inst = world.instance(JOBS[i], TOKENS[i])
        try:
            getattr(inst, event)(data=data or None)
            return "applied"
        except MachineError:
            return "MachineError"
        finally:
            inst.close()
    if kind == "lib_setup":
        _, n, data = op
        m = world.mpj({"lib": n, **data})
        try:
            m.setup()
            return m.uuid
        finally:
            m.close()
    raise AssertionError(kind)


def _hostile(world: World, op: tuple) -> None:
    """Apply one hostile operation and check its refusal form (and that it leaks nothing)."""
    kind = op[0]
    texts: dict = {}
    if kind.startswith("inv_"):
        _, a, b = op
        i = a if isinstance(a, int) else 0
        u, t = JOBS[i], TOKENS[i]
        reasons = None
        if kind == "inv_uuid":
            res = run_invoke(world.env, event_body(a, b, TOKENS[0]))
        elif kind == "inv_name":
            res = run_invoke(world.env, event_body(u, b, t))
            reasons = ("unknown_event",)
        elif kind == "inv_param_event":
            res = run_invoke(world.env, "", uuid=u, token=t, event=b)
            reasons = ("unknown_event",)
        elif kind == "inv_status":
            res = run_invoke(world.env, json.dumps({"id": "h"}), uuid=u, token=t, status=b)
        elif kind == "inv_swap":
            res = run_invoke(world.env, event_body(t, b, u))
        elif kind == "inv_data":
            res = run_invoke(world.env, event_body(u, "update", t, raw_data=b))
            reasons = ("decode_error", "schema_invalid")
        elif kind == "inv_create":
            res = run_invoke(world.env, event_body(u, b, t))
            reasons = ("invalid_transition",)
        elif kind == "inv_other_token":
            res = run_invoke(world.env, event_body(u, b, TOKENS[1 - i]))
            reasons = ("auth_failed",)
        elif kind == "inv_admin_event":
            res = run_invoke(world.env, event_body(u, b, t))
            reasons = ("auth_failed",)
        elif kind == "inv_non_utf8":
            params = {"uuid": u, "token": t, "event": "update"}
            if b == "status":
                params.pop("event")
            params[b] = NON_UTF8[b]
            res = run_invoke(world.env, "", **params)
        else:
            raise AssertionError(kind)
        assert_invoke_refused(res, reasons or REJECT_REASONS)
        texts = res.texts()
    elif kind.startswith("cli_"):
        _, value = op
        value = resolve(value)
        args = {"cli_uuid": ["--data", '{"h": 1}', "--uuid", value],
                "cli_child_of": ["--data", '{"h": 2}', "--child-of", value],
                "cli_data": ["--data", value],
                "cli_pipeline": [],
                "cli_archive": ["--data", '{"h": 3}', "--archive-path", value]}[kind]
        pipeline = value if kind == "cli_pipeline" else PIPELINE
        res = run_cli(world.env, "jobs", "create", "--pipeline", pipeline, *args)
        assert_cli_refused(res)
        texts = res.texts()
    elif kind == "lib_bad":
        texts = {"error": str(_run_library_bad(world, op[1], op[2]))}
    else:
        raise AssertionError(kind)
    no_leaks(texts, f"hostile {op!r}"[:300])


@hsettings(40)
@given(ops=st.lists(st.one_of(legit_ops(), hostile_ops()), min_size=2, max_size=9))
def test_paths_agree_refusals_change_nothing(fresh, ops):
    """Classes 1-7 together: a store that received legitimate and hostile operations through
    the library, ``reactor invoke`` and the CLI is the same (dates, history uuids and
    duplicate keys normalised) as a store that received only the legitimate ones, and every
    legitimate operation had the same result in both; every hostile one got its surface's
    documented refusal."""
    hostile_world, clean_world = fresh(), fresh()
    got, want = [], []
    for op in ops:
        if op[0] in ("invoke", "invoke_param", "callback", "cli_create", "lib_event",
                     "lib_setup"):
            got.append((op, _legit(hostile_world, op)))
            want.append((op, _legit(clean_world, op)))
        else:
            _hostile(hostile_world, op)
    assert got == want, "a hostile operation changed the result of a later legitimate one"
    assert hostile_world.dump() == clean_world.dump(), \
        "hostile operations changed the store: " + json.dumps(ops, default=repr)[:800]


# ============================================================================ serve (4, 1, 3, 7)
@pytest.fixture(scope="module")
def served(amqp_url, tmp_path_factory):
    """One real ``reactor serve`` process (JSON logs), its store holding the jobs ``JOBS``, the
    real RabbitMQ with a topology of its own."""
    from queue_helpers import QueueSetup
    from reactor.broker.publisher import publish

    base = tmp_path_factory.mktemp("hostile-serve")
    setup = QueueSetup(amqp_url, f"sqlite:///{base / 'store.db'}", base,
                       overrides={"secret": TEST_SECRET})
    app = setup.app
    app.store.add_pipeline({"uuid": PIPELINE, "name": "hostile-tests"})
    for data in JOB_DATA:
        app.jobs.create(PIPELINE, data=data)
    publish(setup.amqp_url, setup.topology, [])  # declare the topology: depth 0 is readable
    srv = ServeProcess(setup)
    http = httpx.Client(base_url=srv.url, timeout=30)
    try:
        yield {"setup": setup, "srv": srv, "http": http}
    finally:
        http.close()
        srv.stop()
        setup.close()


@pytest.fixture
def serve_ctx(served):
    """The shared server, its queue emptied first (an earlier failure may have left a
    message there)."""
    _drain(served)
    return served


def _queued(served) -> list[tuple[bytes, dict]]:
    """Every message now in the serve topology's main queue, left in place."""
    import pika

    setup = served["setup"]
    conn = pika.BlockingConnection(pika.URLParameters(setup.amqp_url))
    try:
        ch = conn.channel()
        out = []
        while True:
            method, props, body = ch.basic_get(setup.names["queue"])
            if method is None:
                return out
            out.append((body, {"message_id": props.message_id}))
    finally:
        conn.close()


def _drain(served) -> list[bytes]:
    from queue_helpers import drain

    setup = served["setup"]
    return [g.body for g in drain(setup.amqp_url, setup.names["queue"])]


def _check_refused_answer(r: httpx.Response, what: str, statuses=range(400, 500),
                          errors: tuple[str, ...] | None = None) -> dict:
    assert r.status_code < 500, f"{what}: a {r.status_code} answer: {r.text[:400]}"
    assert r.status_code in statuses, f"{what}: answered {r.status_code}: {r.text[:400]}"
    try:
        body = r.json()
    except ValueError:
        raise AssertionError(f"{what}: the answer is not JSON: {r.text[:300]!r}") from None
    assert isinstance(body, dict) and set(body) >= {"error", "detail"}, f"{what}: {body}"
    assert isinstance(body["detail"], str) and body["detail"], f"{what}: no detail: {body}"
    if errors is not None:
        assert body["error"] in errors, f"{what}: error {body['error']!r}, expected " \
                                        f"{errors}: {body}"
    no_leaks({"body": r.text, "headers": str(dict(r.headers))}, what)
    return body


def _request(http: httpx.Client, spec: tuple) -> httpx.Response:
    method, path, kwargs = spec
    return http.request(method, path, **resolve(kwargs))


@st.composite
def misplaced_token_requests(draw):
    """HTTP requests with a token where it does not belong (see ``misplaced_tokens``)."""
    i = draw(st.integers(0, 1))
    uuid, token = JOBS[i], TOKENS[i]
    secret = resolve(draw(st.sampled_from([token, TOKENS[1 - i], ADMIN, TEST_SECRET])))
    event = draw(st.sampled_from(JOB_EVENTS))
    forms = [
        ("POST", "/callbacks", {"params": {"uuid": secret, "token": uuid, "status": "RUNNING"},
                                "json": {"id": "hpc-1"}}),
        ("POST", "/callbacks", {"params": {"uuid": uuid, "token": token, "status": "RUNNING",
                                           "event": secret}, "json": {"id": "hpc-1"}}),
        ("POST", "/events", {"json": {"uuid": secret, "name": event, "token": uuid}}),
        ("POST", "/events", {"params": {"uuid": secret, "event": event, "token": uuid}}),
        ("POST", "/events", {"params": {"uuid": uuid, "event": secret, "token": token}}),
        ("POST", "/events", {"json": {"uuid": uuid, "name": "update", "token": token,
                                      secret: 1}}),
        ("POST", "/events", {"json": {"uuid": secret, "action": "delete", "token": uuid}}),
        ("POST", "/events", {"json": {"uuid": uuid, "name": "update", "token": token,
                                      "data": {secret + "\u0000": 1}}}),
        ("POST", "/events", {"params": {"uuid": secret + "\n", "event": event,
                                        "token": uuid}}),
        ("GET", "/jobs/" + quote(secret, safe=""), {}),
        ("GET", "/jobs/" + quote(secret, safe=""), {"params": {"token": uuid}}),
        ("GET", "/jobs/" + quote(secret, safe=""), {"headers": {
            "Authorization": "Bearer " + uuid}}),
        ("GET", "/jobs/" + quote(secret + "\n", safe=""), {"params": {"token": secret}}),
        ("GET", f"/jobs/{uuid}", {"headers": {"Authorization": "Bearer " + TOKENS[1 - i]}}),
        ("GET", f"/jobs/{uuid}", {"headers": {"Authorization": "Token " + secret}}),
        ("POST", "/events", {"params": [("uuid", uuid), ("event", event), ("token", secret),
                                        ("token", token)]}),
    ]
    return draw(st.sampled_from(forms))


@pytest.mark.rabbitmq
@pytest.mark.usefixtures("serve_ctx")
@hsettings(100)
@given(spec=misplaced_token_requests())
@example(spec=("GET", "/jobs/" + TOKENS[0], {}))
@example(spec=("POST", "/callbacks", {"params": {"uuid": TOKENS[0], "token": JOBS[0],
                                                 "status": "RUNNING"}, "json": {}}))
def test_token_never_leaks_from_serve_answers_or_log(served, spec):
    """Class 1: ``reactor serve`` refuses a request with a token in the wrong slot (swapped
    uuid/token in a callback or event, GET /jobs/<token>, a token as event name or key) with a
    4xx JSON answer whose detail and headers hold no token, logs none (access log included),
    and publishes nothing."""
    srv = served["srv"]
    mark = len(srv.log())
    r = _request(served["http"], spec)
    _check_refused_answer(r, f"{spec[0]} {spec[1]} {spec[2]}"[:300])
    lines = srv.log_lines(mark)
    no_leaks({"serve log": json.dumps(lines)}, f"serve log after {spec[0]} {spec[1]}")
    assert not problems_in_serve_log(lines)
    assert _queued(served) == [], "a refused request was published"


@pytest.mark.rabbitmq
@pytest.mark.usefixtures("serve_ctx")
def test_serve_401_detail_of_a_job_read_is_readable(served):
    """Class 7: the 401 detail of GET /jobs/{uuid} without a token (or with a malformed
    Authorization header) says how to give one ('Authorization: Bearer …' or the ``token``
    query parameter) instead of text garbled by token masking (a word cut to four
    characters and "…", like "'Aut…")."""
    masked = re.compile(r"\w…")  # what masking leaves of a value: its first 4 characters + …
    for headers in ({}, {"Authorization": "Token abc"}):
        r = served["http"].get(f"/jobs/{JOBS[0]}", headers=headers)
        body = _check_refused_answer(r, f"GET /jobs {headers}", (401,), ("token_required",))
        detail = body["detail"]
        assert not masked.search(detail), f"the detail was mangled by masking: {detail!r}"
        assert "Authorization" in detail and "Bearer" in detail, detail
    r = served["http"].post("/callbacks", params={"uuid": JOBS[0], "status": "RUNNING"},
                            json={"id": "1"})
    body = _check_refused_answer(r, "callback without token", (401,), ("token_required",))
    assert not masked.search(body["detail"]), \
        f"the detail was mangled by masking: {body['detail']!r}"


def serve_near_misses():
    uuid_bad = near_miss_uuids(empty=False).filter(not_typed(("107",)))
    return st.one_of(
        near_miss_statuses().map(lambda s: ("POST", "/callbacks", {
            "params": {"uuid": JOBS[0], "token": TOKENS[0], "status": s},
            "json": {"id": "h"}}, None)),
        near_miss_statuses().map(lambda s: ("POST", "/callbacks", {
            "params": {"uuid": JOBS[0], "token": TOKENS[0]},
            "json": {"id": "h", "status": s}}, None)),
        near_miss_events(controls=False).map(lambda e: ("POST", "/events", {
            "params": {"uuid": JOBS[0], "token": TOKENS[0], "event": e}},
            ("unknown_event",))),
        near_miss_events(controls=False).map(lambda e: ("POST", "/events", {
            "json": {"uuid": JOBS[0], "token": TOKENS[0], "name": e}}, ("unknown_event",))),
        near_miss_events(controls=False).map(lambda e: ("POST", "/callbacks", {
            "params": {"uuid": JOBS[0], "token": TOKENS[0], "event": e, "status": "RUNNING"},
            "json": {"id": "h"}}, ("unknown_event",))),
        uuid_bad.map(lambda u: ("POST", "/callbacks", {
            "params": {"uuid": u, "token": TOKENS[0], "status": "RUNNING"}, "json": {}},
            None)),
        uuid_bad.map(lambda u: ("POST", "/events", {
            "json": {"uuid": u, "token": TOKENS[0], "name": "update"}}, None)),
        uuid_bad.map(lambda u: ("GET", "/jobs/" + quote(resolve(u), safe=""), {
            "params": {"token": TOKENS[0]}}, None)),
        hostile_json_texts(shallow=True).filter(
            lambda t: not any(0xD800 <= ord(c) <= 0xDFFF for c in t)).map(
            lambda t: ("POST", "/events", {"content": event_body(
                JOBS[0], "update", TOKENS[0], raw_data=t).encode("utf-8", "surrogatepass"),
                "headers": {"Content-Type": "application/json"}}, None)),
    )


@pytest.mark.rabbitmq
@pytest.mark.usefixtures("serve_ctx")
@hsettings(150)
@given(case=serve_near_misses())
@example(case=("POST", "/callbacks", {"params": {"uuid": JOBS[0], "token": TOKENS[0],
                                                 "status": "FINISHED\n"}, "json": {}}, None))
@example(case=("POST", "/callbacks", {"params": {"uuid": JOBS[0] + "\n", "token": TOKENS[0],
                                                 "status": "RUNNING"}, "json": {}}, None))
@example(case=("POST", "/events", {"params": {"uuid": JOBS[0], "token": TOKENS[0],
                                              "event": "run\n"}}, ("unknown_event",)))
@example(case=("GET", "/jobs/" + quote(JOBS[0] + "\n"), {"params": {"token": TOKENS[0]}},
               None))
def test_trailing_newline_and_other_near_misses_are_refused_by_serve(served, case):
    """Class 3/6: ``reactor serve`` refuses statuses, uuids and event names with a trailing
    newline (or other white space, invisible or control characters, look-alike letters), and
    data the contract refuses, with a 4xx JSON error (422 unknown_event for event names),
    never a 5xx, and publishes nothing."""
    method, path, kwargs, errors = case
    srv = served["srv"]
    mark = len(srv.log())
    r = _request(served["http"], (method, path, kwargs))
    _check_refused_answer(r, f"{method} {path} {kwargs}"[:300], errors=errors)
    assert not problems_in_serve_log(srv.log_lines(mark))
    assert _queued(served) == [], f"a refused request was published: {method} {path} {kwargs}"


def _http_requests_seen(srv) -> float:
    return sum(v for (endpoint, _), v in srv.metrics().items()
               if endpoint in ("callbacks", "events"))


def _cut(port: int, target: str, declared: int, sent: bytes, reset: bool,
         chunked: bool = False) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = (f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/json\r\n")
        head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {declared}\r\n"
        s.sendall(head.encode() + b"\r\n" + sent)
        if reset:
            import struct

            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.rabbitmq
@pytest.mark.usefixtures("serve_ctx")
def test_serve_client_disconnecting_mid_body_gets_no_5xx_and_no_error_log(served):
    """Class 4: a client that disconnects in the middle of the request body (closed or reset,
    a declared length or a chunked body) makes ``reactor serve`` answer no 5xx and log no
    ERROR; nothing is published and the server keeps serving."""
    srv = served["srv"]
    mark = len(srv.log())
    seen = _http_requests_seen(srv)
    target = f"/callbacks?uuid={JOBS[0]}&token={TOKENS[0]}&status=RUNNING"
    cuts = [(target, 4000, b'{"id": "hpc-cut", "pad": "', False, False),
            (target, 4000, b'{"id": "hpc-cut", "pad": "', True, False),
            ("/events", 500, b'{"uuid": "' + JOBS[0].encode() + b'", "na', False, False),
            ("/events", 0, b"40\r\n{\"uuid\": \"" + JOBS[0].encode(), True, True)]
    for cut in cuts:
        _cut(srv.port, *cut)
    # Settle (not an assertion): until the server has handled the cut requests, or 20 s.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _http_requests_seen(srv) < seen + len(cuts):
        time.sleep(0.1)
    metrics = srv.metrics()
    five = {k: v for k, v in metrics.items() if k[1].startswith("5") and v}
    assert not five, f"5xx answers counted: {five}"
    problems = problems_in_serve_log(srv.log_lines(mark))
    assert not problems, "serve logged errors for clients that went away:\n" + \
        "\n".join(problems)
    no_leaks({"serve log": srv.log()[mark:]}, "serve log after disconnects")
    assert served["http"].get("/healthz").status_code == 200
    assert _queued(served) == []


@pytest.mark.rabbitmq
@pytest.mark.usefixtures("serve_ctx")
def test_serve_and_invoke_agree_on_callbacks_at_the_depth_limit(served, world):
    """Class 4/7: callbacks nested around the contract's depth limit (RUNNING, whose body
    becomes the event's data, and FINISHED) never get a 5xx from ``reactor serve``; serve and
    ``reactor invoke`` agree on each (accepted by both or refused by both); a 202 means the
    queued message is one the consumer applies; the deepest accepted RUNNING callback is
    accepted (not a 500) and one level beyond the limit is refused."""
    from reactor.domain.jsonvalues import MESSAGE_MAX_DEPTH
    from reactor.engine.pipeline import Item

    limit = MESSAGE_MAX_DEPTH

    def body(depth: int, status: str) -> str:
        # The top-level object is level 1; "payload" holds the remaining depth - 1 levels.
        inner = "1"
        for _ in range(depth - 1):
            inner = '{"k": ' + inner + "}"
        return '{"status": "' + status + '", "id": "hpc-deep", "payload": ' + inner + "}"

    srv, http = served["srv"], served["http"]
    app = served["setup"].app
    mark = len(srv.log())
    accepted_running = []
    for status, depth in [("RUNNING", limit - 1), ("RUNNING", limit), ("RUNNING", limit + 1),
                          ("FINISHED", limit), ("FINISHED", limit + 1)]:
        what = f"{status} callback nested {depth} deep"
        record, _ = app.jobs.create(PIPELINE, data={"deep": status, "depth": depth})
        uid, tok = record["uuid"], AUTHORITY.job_token(record["uuid"])
        r = http.post("/callbacks", params={"uuid": uid, "token": tok},
                      content=body(depth, status).encode(),
                      headers={"Content-Type": "application/json"})
        assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
        inv_world_job = world.app.jobs.create(PIPELINE, data={"deep": status,
                                                              "depth": depth})[0]["uuid"]
        if status == "FINISHED":  # finish needs a running job, in both stores
            app.jobs.apply(uid, "run", None, tok)
            world.app.jobs.apply(inv_world_job, "run", None,
                                 AUTHORITY.job_token(inv_world_job))
        res = run_invoke(world.env, body(depth, status), uuid=inv_world_job,
                         token=AUTHORITY.job_token(inv_world_job))
        if r.status_code == 202:
            assert_invoke_applied(res)
            queued = _drain(served)
            assert len(queued) == 1, what
            [outcome] = app.pipeline().process([Item(queued[0], r.json()["message_id"])])
            assert outcome.label == "applied", f"{what}: serve queued a message the consumer " \
                                               f"refuses: {outcome}"
            if status == "RUNNING":
                accepted_running.append(depth)
        else:
            _check_refused_answer(r, what)
            assert_invoke_refused(res, ("decode_error", "schema_invalid"))
            assert _queued(served) == [], f"{what}: refused but published"
        if depth > limit:
            assert r.status_code != 202, f"{what}: beyond the limit, yet accepted"
    assert accepted_running, "no RUNNING callback near the depth limit was accepted"
    assert not problems_in_serve_log(srv.log_lines(mark))


def arbitrary_requests():
    text = st.text(max_size=24) | st.sampled_from(JOBS + TOKENS + [ADMIN, "RUNNING", "run"])
    params = st.dictionaries(st.sampled_from(["uuid", "token", "event", "status", "note",
                                              "other"]), text, max_size=5)
    body = st.binary(max_size=300) | st.sampled_from([
        b"", b"{}", b"null", b"[]", b'{"status": "RUNNING"}', b"\xef\xbb\xbf{}",
        b'{"uuid": "' + JOBS[0].encode() + b'", "name": "run"}']) | \
        hostile_json_texts(shallow=True).map(lambda t: t.encode("utf-8", "surrogatepass"))
    post = st.tuples(st.just("POST"), st.sampled_from(["/callbacks", "/events"]),
                     st.fixed_dictionaries({"params": params, "content": body}))
    get = st.tuples(st.just("GET"), text.map(lambda t: "/jobs/" + quote(resolve(t), safe="")),
                    st.fixed_dictionaries({"params": params}))
    return post | get


@pytest.mark.rabbitmq
@pytest.mark.usefixtures("serve_ctx")
@hsettings(200)
@given(spec=arbitrary_requests())
def test_serve_arbitrary_requests_never_get_a_5xx(served, spec):
    """Classes 1/4: whatever body and parameters a client sends, ``reactor serve`` answers
    with JSON, never a 5xx, logs no ERROR, echoes no token; only a 202 publishes (and then
    exactly one message, which the test removes again)."""
    srv = served["srv"]
    mark = len(srv.log())
    r = _request(served["http"], spec)
    assert r.status_code < 500, f"{spec[0]} {spec[1]} {spec[2]!r}: {r.status_code} {r.text}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.text[:200]
    no_leaks({"body": r.text, "headers": str(dict(r.headers))}, f"{spec[0]} {spec[1]}")
    lines = srv.log_lines(mark)
    assert not problems_in_serve_log(lines), problems_in_serve_log(lines)
    no_leaks({"serve log": json.dumps(lines)}, "serve log")
    queued = _drain(served)
    assert len(queued) == (1 if r.status_code == 202 else 0), (r.status_code, queued)


@pytest.mark.rabbitmq
@pytest.mark.usefixtures("serve_ctx")
@pytest.mark.parametrize("target", [
    "/events?uuid={u}&token={t}&event=update&note=caf%e9",
    "/events?uuid={u}&token={t}&event=update&note=%ff%fe",
    "/callbacks?uuid={u}&token={t}&status=HEARTBEAT&note=caf%e9",
    "/callbacks?uuid={u}&token={t}&note=%c3",
], ids=["event-note-latin1", "event-note-ff", "callback-note-latin1", "callback-note-cut"])
def test_paths_agree_non_utf8_query_parameters_are_refused_by_serve(served, target):
    """Classes 5/7: a query parameter whose percent-encoded bytes are not UTF-8 is refused by
    ``reactor serve`` (4xx, nothing published), as ``reactor invoke`` refuses such a parameter
    (``rejected:decode_error``) and as a non-UTF-8 body is refused; it is never silently
    replaced by U+FFFD and queued."""
    srv, http = served["srv"], served["http"]
    mark = len(srv.log())
    url = srv.url + target.format(u=JOBS[0], t=TOKENS[0])
    body = b'{"id": "hpc-1", "status": "RUNNING"}' if "/callbacks" in target and \
        "status=" not in target else b""
    r = http.post(httpx.URL(url), content=body,
                  headers={"Content-Type": "application/json"} if body else {})
    queued = _queued(served)
    _drain(served)
    _check_refused_answer(r, f"POST {target}")
    assert queued == [], f"POST {target}: published {queued[0][0][:200]!r}"
    assert not problems_in_serve_log(srv.log_lines(mark))
