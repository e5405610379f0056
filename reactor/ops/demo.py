"""``reactor demo``: the whole pipeline in-process on the scenario examples, with timelines.

Runs on whatever store is configured — with nothing configured, the embedded SQLite file in
the state directory — so the jobs it creates stay there for ``reactor jobs list`` to show.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..domain import lifecycle
from .replay import Example, Replayer, StepResult, load

DEMO_PIPELINE = "reactor-demo"


def examples_dir() -> Path:
    """The message_examples folder: packaged beside the code, else the repository's."""
    import reactor

    here = Path(reactor.__file__).resolve().parent
    packaged = here / "message_examples"
    return packaged if packaged.is_dir() else here.parent / "message_examples"


def run_demo(app, echo: Callable[[str], None] = print, folder: Path | None = None) -> bool:
    """Feed every scenario to the pipeline and print each job's timeline; True if all matched."""
    folder = folder or examples_dir() / "scenarios"
    examples = load([folder])
    replayer = Replayer(app.jobs, app.settings.max_message_bytes, pipeline_name=DEMO_PIPELINE)
    echo(f"store: {_where(app)}")
    echo(f"pipeline: {replayer.pipeline_uuid} ({DEMO_PIPELINE})")
    all_ok = True
    for example in examples:
        results = replayer.run(example)
        all_ok &= all(r.ok for r in results)
        echo("")
        echo(f"== {example.name}: {example.description}")
        for job_name, uuid in replayer.created[example.name].items():
            record = app.jobs.store.get_job(uuid, include_hidden=True)
            echo(f"   {job_name}: {uuid}  state {record['state'] if record else 'deleted'}")
            if record:
                for line in timeline(record):
                    echo("     " + line)
        for line in _not_applied(example, results):
            echo("     " + line)
    echo("")
    total = sum(len(e.steps) for e in examples)
    echo(f"{len(examples)} scenarios, {total} messages: "
         + ("every outcome as expected" if all_ok else "SOME OUTCOMES DIFFERED (see above)"))
    echo("next: `reactor jobs list`, `reactor jobs history <uuid>`, `reactor fsm`")
    return all_ok


def states_after(history: list[dict]) -> list[str]:
    """The state each history entry led to, replayed through the lifecycle table."""
    states = []
    state = lifecycle.INITIAL_STATE
    for entry in history:
        # History holds only applied events, so every step is in the table.
        state = lifecycle.TABLE.get((state, entry.get("name")), state)
        states.append(state)
    return states


def timeline(record: dict) -> list[str]:
    """One line per history entry: time, event, the state it led to, and its data."""
    history = record.get("history", [])
    lines = []
    for entry, state in zip(history, states_after(history)):
        data = entry.get("data")
        text = "" if data in (None, {}) else _short(data)
        lines.append(f"{entry.get('date', '?')}  {entry.get('name', '?'):<9} -> {state:<10} "
                     f"{text}".rstrip())
    return lines


def _not_applied(example: Example, results: list[StepResult]) -> list[str]:
    # Rejected messages leave no history; show them so the timeline tells the whole story.
    out = []
    for r in results:
        if r.outcome is not None and not r.outcome.ok:
            mark = "as expected" if r.ok else "UNEXPECTED"
            out.append(f"step {r.index}: {r.got} ({mark}): {r.outcome.detail}")
        elif not r.ok:
            out.append(f"step {r.index}: {r.got}, expected {r.expected} (UNEXPECTED)")
    return out


def _short(data: dict, limit: int = 70) -> str:
    text = json.dumps(data, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _where(app) -> str:
    # Never print credentials that a MongoDB URI may carry.
    scheme, _, rest = app.settings.resolved_store_uri.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
