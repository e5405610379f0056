"""`reactor pipelines add|list` and `reactor token job|admin`, in-process and as a real command."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from reactor.cli.main import main
from reactor.domain.identifiers import pipeline_uuid, typed_uuid
from reactor.domain.tokens import Authority

SECRET = "cli-test-secret-" + "z" * 24


@pytest.fixture(autouse=True)
def _isolated(isolated_cwd):
    """Every test runs isolated (see conftest.isolated_cwd)."""


@pytest.fixture
def env(store_uri) -> dict[str, str]:
    return {"REACTOR_STORE_URI": store_uri, "REACTOR_SECRET": SECRET}


def run(args, env):
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_pipelines_add_prints_the_derived_uuid_and_registers_it(env, store):
    code, out, _ = run(["pipelines", "add", "--name", "tacobot"], env)
    assert code == 0
    assert out.strip() == pipeline_uuid("tacobot")
    assert store.get_pipeline(pipeline_uuid("tacobot"))["name"] == "tacobot"


def test_pipelines_add_is_idempotent(env, store):
    first = run(["pipelines", "add", "--name", "tacobot"], env)
    second = run(["pipelines", "add", "--name", "tacobot"], env)
    assert first[0] == second[0] == 0 and first[1] == second[1]
    assert "already registered" in second[2]
    assert len(store.list_pipelines()) == 1


def test_pipelines_add_with_an_explicit_uuid(env, store):
    chosen = typed_uuid("pipeline", "chosen by hand")
    code, out, _ = run(["pipelines", "add", "--name", "hand", "--uuid", chosen], env)
    assert code == 0 and out.strip() == chosen
    assert store.get_pipeline(chosen)["name"] == "hand"


@pytest.mark.parametrize("args, words", [
    (["--name", "x", "--uuid", "106-bad"], "lower-case UUID"),
    (["--name", "x", "--uuid", typed_uuid("pipelinejob", "j")], "106"),
    (["--name", "  "], "--name"),
    (["--name", " padded"], "--name"),
    (["--name", "x", "--uuid", typed_uuid("pipeline", "p") + "\n"], "lower-case UUID"),
    (["--name", "bad\udcff"], "--name must be valid Unicode"),
    (["--name", "nul\x00"], "--name must be valid Unicode"),
])
def test_pipelines_add_bad_input_is_one_line_and_writes_nothing(env, store, args, words):
    code, out, err = run(["pipelines", "add", *args], env)
    assert code != 0 and out == ""
    assert err.startswith("reactor: error:") and words in err and err.count("\n") == 1
    assert store.list_pipelines() == []


def test_pipelines_add_refuses_a_uuid_registered_under_another_name(env, store):
    chosen = typed_uuid("pipeline", "shared")
    assert run(["pipelines", "add", "--name", "one", "--uuid", chosen], env)[0] == 0
    code, _, err = run(["pipelines", "add", "--name", "two", "--uuid", chosen], env)
    assert code != 0 and "'one'" in err
    assert store.get_pipeline(chosen)["name"] == "one"


def test_pipelines_add_needs_a_name(env):
    code, _, err = run(["pipelines", "add"], env)
    assert code == 2 and "--name" in err


def test_pipelines_list_table_and_json(env):
    assert run(["pipelines", "list"], env)[0] == 0
    assert "no pipelines registered" in run(["pipelines", "list"], env)[2]
    for name in ("beta", "alpha"):
        run(["pipelines", "add", "--name", name], env)
    code, out, _ = run(["pipelines", "list"], env)
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split()[:2] == ["UUID", "NAME"]
    rows = {line.split()[1]: line.split()[0] for line in lines[1:]}
    assert rows == {"alpha": pipeline_uuid("alpha"), "beta": pipeline_uuid("beta")}
    code, out, _ = run(["pipelines", "list", "--json"], env)
    listed = json.loads(out)
    assert code == 0 and {p["uuid"] for p in listed} == set(rows.values())


def test_token_job_prints_the_job_token(env):
    job = typed_uuid("pipelinejob", "some job")
    code, out, _ = run(["token", "job", job], env)
    assert code == 0 and out.strip() == Authority(SECRET).job_token(job)


@pytest.mark.parametrize("bad", ["107-short", typed_uuid("pipeline", "p"), ""])
def test_token_job_refuses_a_non_job_uuid(env, bad):
    code, out, err = run(["token", "job", bad], env)
    assert code != 0 and out == "" and err.startswith("reactor: error:")


def test_token_admin_prints_a_valid_admin_token(env):
    code, out, _ = run(["token", "admin"], env)
    token = out.strip()
    assert code == 0 and Authority(SECRET).is_admin(token)
    assert not Authority(SECRET + "-other").is_admin(token)


def test_token_length_follows_configuration(env):
    code, out, _ = run(["token", "admin"], {**env, "REACTOR_TOKEN_LENGTH": "48"})
    assert code == 0 and len(out.strip()) == 48


def test_missing_secret_for_mongodb_is_a_one_line_error(mongo_store_uri):
    code, out, err = run(["token", "admin"], {"REACTOR_STORE_URI": mongo_store_uri})
    assert code != 0 and out == "" and "secret" in err and err.count("\n") == 1


def test_bad_configuration_is_named(env):
    code, _, err = run(["token", "admin"], {**env, "REACTOR_TOKEN_LENGHT": "40"})
    assert code != 0 and "REACTOR_TOKEN_LENGHT" in err
    code, _, err = run(["pipelines", "list"], {**env, "REACTOR_PREFETCH": "lots"})
    assert code != 0 and "prefetch" in err


def test_embedded_default_creates_store_and_secret(tmp_path):
    state = tmp_path / "state"
    env = {"REACTOR_STATE_DIR": str(state)}
    code, out, _ = run(["pipelines", "add", "--name", "embedded"], env)
    assert code == 0 and out.strip() == pipeline_uuid("embedded")
    assert (state / "reactor.db").exists()
    token = run(["token", "admin"], env)[1].strip()
    secret = (state / "secret").read_text().strip()  # created on first need, mode 0600
    assert Authority(secret).is_admin(token)
    assert run(["token", "admin"], env)[1].strip() == token


def _command() -> list[str]:
    found = shutil.which("reactor")
    return [found] if found else [sys.executable, "-m", "reactor.cli.main"]


def test_real_subprocess(env, tmp_path):
    full_env = {**os.environ, **env}
    done = subprocess.run([*_command(), "pipelines", "add", "--name", "proc"], env=full_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == pipeline_uuid("proc")
    done = subprocess.run([*_command(), "pipelines", "list", "--json"], env=full_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)[0]["name"] == "proc"
    done = subprocess.run([*_command(), "token", "admin"], env=full_env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and Authority(SECRET).is_admin(done.stdout.strip())
    done = subprocess.run([*_command(), "token", "job", "not-a-uuid"], env=full_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.startswith("reactor: error:") and "Traceback" not in done.stderr
    assert SECRET not in done.stderr


def test_unreachable_store_is_a_one_line_error_without_the_password():
    env = {"REACTOR_STORE_URI": "mongodb://user:pa55word@127.0.0.1:1/x", "REACTOR_SECRET": SECRET,
           "REACTOR_SERVER_SELECTION_TIMEOUT_MS": "200"}
    code, out, err = run(["pipelines", "list"], env)
    assert code != 0 and out == "" and err.count("\n") == 1
    assert "unavailable" in err and "pa55word" not in err
