"""The lifecycle as text: ``docs/lifecycle.md``, and the Mermaid and Graphviz diagrams that
``reactor fsm`` prints (one source, so the page shows what the command prints)."""
from __future__ import annotations

from . import NOTICE, md_cell
from ..domain import lifecycle


def fsm_mermaid() -> str:
    """The lifecycle as a Mermaid state diagram."""
    lines = ["stateDiagram-v2", f"    [*] --> {lifecycle.INITIAL_STATE}"]
    for edge in lifecycle.edges():
        lines.append(f"    {edge.source} --> {edge.dest}: {', '.join(edge.events)}")
    return "\n".join(lines)


def fsm_dot() -> str:
    """The lifecycle as a Graphviz digraph."""
    lines = ["digraph lifecycle {", "    rankdir=LR;", "    node [shape=box, style=rounded];",
             '    start [shape=point];', f"    start -> {lifecycle.INITIAL_STATE};"]
    lines += [f"    {s};" for s in lifecycle.STATE_NAMES]
    for edge in lifecycle.edges():
        lines.append(f'    {edge.source} -> {edge.dest} [label="{", ".join(edge.events)}"];')
    lines.append("}")
    return "\n".join(lines)


def sources_text(t: lifecycle.Transition) -> str:
    """Where an event may fire from, as the tables show it."""
    return "any state" if lifecycle.ANY in t.sources else ", ".join(t.sources)


def render_lifecycle_md() -> str:
    """``lifecycle.md``: states, the transition table, events per state, and the diagrams."""
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
        lines.append(f"| `{s.name}`{initial} | {md_cell(s.description)} |")
    lines += ["", "## Events", "", "| Event | From | To | Token | Meaning |",
              "|---|---|---|---|---|"]
    for t in lifecycle.TRANSITIONS:
        dest = "same state" if t.dest == lifecycle.SAME else f"`{t.dest}`"
        lines.append(f"| `{t.event}` | {sources_text(t)} | {dest} | "
                     f"{'admin' if t.admin else 'job'} | {md_cell(t.description)} |")
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
