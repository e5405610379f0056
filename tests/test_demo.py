"""``reactor demo`` on the embedded default with nothing configured."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def reactor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REACTOR_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "reactor.cli.main", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_demo_runs_every_scenario_and_prints_timelines(tmp_path):
    done = reactor("demo", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for scenario in sorted((ROOT / "message_examples" / "scenarios").glob("*.json")):
        assert f"== {scenario.stem}:" in out
    assert "every outcome as expected" in out
    assert "finalize  -> FINALIZED" in out and "retire    -> RETIRED" in out
    assert "rejected:auth_failed (as expected)" in out
    # The embedded default: a local SQLite file and a generated secret only its owner can read.
    state = tmp_path / ".reactor"
    assert (state / "reactor.db").is_file()
    assert (state / "secret").stat().st_mode & 0o777 == 0o600
    assert (state / "secret").read_text().strip() not in out + done.stderr

    listed = json.loads(reactor("jobs", "list", "--json", cwd=tmp_path).stdout)
    states = Counter(job["state"] for job in listed)
    assert states["RETIRED"] == 2 and states["FINISHED"] >= 3

    again = reactor("demo", cwd=tmp_path)  # a second run makes new jobs, and still matches
    assert again.returncode == 0, again.stdout
    assert len(json.loads(reactor("jobs", "list", "--json", cwd=tmp_path).stdout)) == \
        2 * len(listed)
