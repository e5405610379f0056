"""The lifecycle diagram (``docs/lifecycle.svg``): fixed places for the states of
``reactor.domain.lifecycle``, drawn as SVG.

The graph is small and changes rarely, so its layout is data written by hand (``PLACES``,
``ROUTES``), not computed: the drawing is the same on every machine, with no layout program to
install. ``layout_problems`` names every state or edge of the table that has no place here
(the docs test runs it), so a new state or event that makes a new arrow fails until placed;
meanwhile a new edge is drawn as a straight line, and a new state stops the drawing.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from . import NOTICE
from ..domain import lifecycle

FONT = 12
LABEL_FONT = 11
LABEL_CHAR_W = 6.6     # advance of the monospace font at LABEL_FONT px
LINE_H = LABEL_FONT + 3
BOX_W, BOX_H = 100, 36  # every state box (the longest name, VALIDATING, fits)
LOOP_W = 26
START_R = 7
MARGIN = 20
WIDTH, HEIGHT = 740, 780
LEGEND = "(admin) = needs an administrative token; every other event needs the job's token"
_MODULE = "reactor/docgen/diagram.py"


class Place(NamedTuple):
    """Where a state's box stands (its centre), and on which side its self-loop is drawn."""

    state: str                     # a state name, or ANY for the "any state" note
    x: int
    y: int
    loop: str = ""                 # "left" or "right" for a state with a self-loop


class Route(NamedTuple):
    """How one arrow runs (through its ``via`` bend points) and where its label stands."""

    source: str
    dest: str
    via: tuple[tuple[int, int], ...] = ()
    at: float = 0.5                # the label's centre: this far along the arrow (0 to 1) …
    nudge: tuple[int, int] = (0, 0)  # … moved by this much (beside the arrow, not on it)
    shift: int = 0                 # a straight arrow moved to its right (one of a two-way pair)


START = (300, 150)                 # the initial-state dot, with an arrow to INITIAL_STATE

PLACES: tuple[Place, ...] = (
    Place(lifecycle.ANY, 560, 80),
    Place("RESET", 560, 150),
    Place("CREATED", 300, 220, "left"),
    Place("RUNNING", 300, 310, "left"),
    Place("FAILED", 640, 310),
    Place("FINISHED", 300, 400, "left"),
    Place("INDEXING", 500, 400, "right"),
    Place("VALIDATING", 300, 500, "left"),
    Place("VALIDATED", 210, 600, "left"),
    Place("REJECTED", 480, 600),
    Place("FINALIZED", 210, 700),
    Place("RETIRED", 480, 700),
)

ROUTES: tuple[Route, ...] = (
    Route(lifecycle.ANY, "RESET"),
    Route("RESET", "CREATED"),
    Route("CREATED", "RUNNING"),
    Route("CREATED", "FAILED"),
    Route("RUNNING", "FAILED"),
    Route("INDEXING", "FAILED"),
    Route("VALIDATING", "FAILED", via=((640, 500),), at=0.3),
    Route("RUNNING", "FINISHED"),
    Route("FINISHED", "INDEXING", shift=8, nudge=(0, 13)),
    Route("INDEXING", "FINISHED", shift=8, nudge=(0, -13)),
    Route("FINISHED", "VALIDATING"),
    Route("VALIDATING", "VALIDATED", shift=8, nudge=(-40, 0)),
    Route("VALIDATED", "VALIDATING", shift=8, nudge=(38, 0)),
    Route("VALIDATING", "REJECTED"),
    Route("VALIDATED", "FINALIZED"),
    Route("FAILED", "RETIRED", via=((700, 310), (700, 700)), at=0.45),
    Route("FINALIZED", "RETIRED"),
    Route("FINISHED", "RETIRED", via=((260, 440), (40, 440), (40, 760), (480, 760)),
          at=0.3),
    Route("REJECTED", "RETIRED"),
    Route("VALIDATING", "RETIRED", at=0.45),
    Route("VALIDATED", "RETIRED", at=0.6),
)


def _places() -> dict[str, Place]:
    return {p.state: p for p in PLACES}


def _drawn_edges() -> list[lifecycle.Edge]:
    return [e for e in lifecycle.edges(fold_any=True) if e.source != e.dest]


def _needed_places() -> list[str]:
    needed = list(lifecycle.STATE_NAMES)
    if any(e.source == lifecycle.ANY for e in lifecycle.edges(fold_any=True)):
        needed.append(lifecycle.ANY)
    return needed


def layout_problems() -> list[str]:
    """What the table has and ``PLACES``/``ROUTES`` do not, or twice, or the other way round."""
    problems = []
    placed = [p.state for p in PLACES]
    needed = _needed_places()
    for state in needed:
        if placed.count(state) != 1:
            problems.append(f"state {state} is placed {placed.count(state)} times in the "
                            f"diagram: give it exactly one Place in PLACES ({_MODULE})")
    problems += [f"PLACES names {s}, which is not a state of the lifecycle" for s in placed
                 if s not in needed]
    loops = {e.source for e in lifecycle.edges(fold_any=True) if e.source == e.dest}
    for p in PLACES:
        if (p.state in loops) != (p.loop in ("left", "right")):
            problems.append(f"state {p.state}: loop must be 'left' or 'right' exactly when it "
                            f"has events that stay in it (PLACES, {_MODULE})")
    routed = [(r.source, r.dest) for r in ROUTES]
    edges = [(e.source, e.dest) for e in _drawn_edges()]
    for source, dest in edges:
        if routed.count((source, dest)) != 1:
            problems.append(f"edge {source} -> {dest} is routed {routed.count((source, dest))} "
                            f"times in the diagram: give it exactly one Route in ROUTES "
                            f"({_MODULE})")
    problems += [f"ROUTES has {s} -> {d}, which is no edge of the lifecycle"
                 for s, d in routed if (s, d) not in edges]
    return problems


def label_text(events: tuple[str, ...]) -> str:
    """An arrow's label: its events, the admin ones marked."""
    return ", ".join(f"{e} (admin)" if lifecycle.is_admin_event(e) else e for e in events)


def _n(v: float) -> str:
    text = f"{v:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"',
                                                                                       "&quot;")


def _port(centre: tuple[float, float], toward: tuple[float, float],
          half: tuple[float, float]) -> tuple[float, float]:
    """Where the line from a box's ``centre`` toward a point leaves the box."""
    (cx, cy), (tx, ty), (hw, hh) = centre, toward, half
    dx, dy = tx - cx, ty - cy
    t = min(hw / abs(dx) if dx else float("inf"), hh / abs(dy) if dy else float("inf"))
    return cx + dx * t, cy + dy * t


def _half(state: str) -> tuple[float, float]:
    return (START_R, START_R) if state == "start" else (BOX_W / 2, BOX_H / 2)


def route_points(route: Route) -> list[tuple[float, float]]:
    """The arrow's points, from its source box's edge to its destination box's edge."""
    places = _places()
    a = START if route.source == "start" else places[route.source][1:3]
    b = places[route.dest][1:3]
    if route.shift:
        # Perpendicular to the arrow: the two arrows of a pair run side by side.
        dx, dy = b[0] - a[0], b[1] - a[1]
        length = math.sqrt(dx * dx + dy * dy)  # sqrt is correctly rounded everywhere
        ox, oy = -dy / length * route.shift, dx / length * route.shift
        a, b = (a[0] + ox, a[1] + oy), (b[0] + ox, b[1] + oy)
    inner = list(route.via)
    first, last = (inner[0] if inner else b), (inner[-1] if inner else a)
    return [_port(a, first, _half(route.source)), *inner, _port(b, last, _half(route.dest))]


def routes() -> list[tuple[Route, tuple[str, ...]]]:
    """Every arrow drawn (the initial-state one first) with the events it stands for; an edge
    not in ``ROUTES`` yet is drawn straight (and ``layout_problems`` asks for its route)."""
    by_pair = {(r.source, r.dest): r for r in ROUTES}
    start = Route("start", lifecycle.INITIAL_STATE)
    return [(start, ())] + [(by_pair.get((e.source, e.dest), Route(e.source, e.dest)), e.events)
                            for e in _drawn_edges()]


def loop_events() -> dict[str, tuple[str, ...]]:
    """The events that stay in each state, by state."""
    return {e.source: e.events for e in lifecycle.edges(fold_any=True) if e.source == e.dest}


def label_centre(route: Route) -> tuple[float, float]:
    """Where the centre of the arrow's label stands."""
    points = route_points(route)
    pieces = list(zip(points, points[1:]))
    lengths = [math.sqrt((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2) for a, b in pieces]
    left, i = route.at * sum(lengths), 0
    while i < len(pieces) - 1 and left > lengths[i]:
        left, i = left - lengths[i], i + 1
    (a, b), f = pieces[i], (min(left / lengths[i], 1.0) if lengths[i] else 0.0)
    return a[0] + (b[0] - a[0]) * f + route.nudge[0], a[1] + (b[1] - a[1]) * f + route.nudge[1]


def label_box(centre: tuple[float, float], text: str) -> tuple[float, float, float, float]:
    """The background rectangle (x, y, width, height) of a label centred at ``centre``."""
    w = len(text) * LABEL_CHAR_W + 8
    return centre[0] - w / 2, centre[1] - LINE_H / 2, w, LINE_H


def loop_box(place: Place) -> tuple[float, float, float, float]:
    """The rectangle a state's self-loop and its event names take, beside its box."""
    events = loop_events()[place.state]
    w = LOOP_W + 4 + max(len(e) for e in events) * LABEL_CHAR_W
    h = max(40, len(events) * LINE_H)
    x = place.x - BOX_W / 2 - w if place.loop == "left" else place.x + BOX_W / 2
    return x, place.y - h / 2, w, h


def _arrow(points: list[tuple[float, float]]) -> str:
    d = " ".join(f"{'M' if i == 0 else 'L'}{_n(x)},{_n(y)}" for i, (x, y) in enumerate(points))
    return (f'<path d="{d}" fill="none" stroke="#333" stroke-width="1.3" '
            'marker-end="url(#arrow)"/>')


def _label(centre: tuple[float, float], text: str) -> list[str]:
    x, y, w, h = label_box(centre, text)
    return [f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" rx="3" '
            'fill="#fff" fill-opacity="0.92"/>',
            f'<text x="{_n(centre[0])}" y="{_n(y + h - 4)}" font-size="{LABEL_FONT}" '
            f'text-anchor="middle" fill="#1a4d8f">{_esc(text)}</text>']


def _loop(place: Place) -> list[str]:
    events = loop_events()[place.state]
    sign = -1 if place.loop == "left" else 1
    x0, cy = place.x + sign * BOX_W / 2, place.y
    xc = x0 + sign * LOOP_W
    out = [f'<path d="M{_n(x0)},{_n(cy - 9)} C{_n(xc)},{_n(cy - 20)} {_n(xc)},{_n(cy + 20)} '
           f'{_n(x0)},{_n(cy + 9)}" fill="none" stroke="#333" stroke-width="1.3" '
           'marker-end="url(#arrow)"/>']
    top = cy - len(events) * LINE_H / 2
    anchor = "start" if sign > 0 else "end"
    for i, event in enumerate(events):
        out.append(f'<text x="{_n(xc + sign * 4)}" y="{_n(top + (i + 1) * LINE_H - 3)}" '
                   f'font-size="{LABEL_FONT}" text-anchor="{anchor}" fill="#1a4d8f">'
                   f"{_esc(event)}</text>")
    return out


def _box(place: Place, terminal: bool) -> list[str]:
    descriptions = {s.name: s.description for s in lifecycle.STATES}
    if place.state == lifecycle.ANY:
        style, text = 'fill="#fff" stroke="#777" stroke-dasharray="5,3"', "any state"
        tooltip = "events allowed from any state"
    else:
        text, tooltip = place.state, f"{place.state}: {descriptions[place.state]}"
        style = ('fill="#e3f4e1" stroke="#2e7d32" stroke-width="2"'
                 if place.state == lifecycle.INITIAL_STATE else
                 'fill="#eeeeee" stroke="#555"' if terminal else
                 'fill="#e8f0fb" stroke="#1a4d8f"')
    x0, y0 = place.x - BOX_W / 2, place.y - BOX_H / 2
    return [f"<g><title>{_esc(tooltip)}</title>",
            f'<rect x="{_n(x0)}" y="{_n(y0)}" width="{BOX_W}" height="{BOX_H}" rx="6" {style}/>',
            f'<text x="{place.x}" y="{_n(place.y + FONT / 2 - 2)}" text-anchor="middle" '
            f'font-weight="bold">{_esc(text)}</text></g>']


def render_lifecycle_svg() -> str:
    """``lifecycle.svg``: the lifecycle drawn at the places of ``PLACES`` and ``ROUTES``."""
    # A new edge is drawn straight until routed; a new state has nowhere to go.
    unplaced = sorted(set(_needed_places()) - set(_places()))
    if unplaced:
        raise ValueError(f"the lifecycle diagram has no place for {', '.join(unplaced)}: give "
                         f"each a Place in PLACES ({_MODULE})")
    # Grey boxes: states that only "from any state" events can leave.
    leaving = {e.source for e in _drawn_edges()}
    loops = loop_events()
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans Mono, Menlo, Consolas, '
        f'monospace" font-size="{FONT}">',
        f"<!-- {_esc(NOTICE)} Source: reactor/domain/lifecycle.py, TRANSITIONS; places: "
        f"{_MODULE}. -->",
        "<title>Job lifecycle</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#333"/></marker>'
        "</defs>",
        '<rect width="100%" height="100%" fill="#fff"/>',
        f'<text x="{MARGIN}" y="{MARGIN + 12}" font-size="14" font-weight="bold">Job lifecycle'
        "</text>",
        f'<text x="{MARGIN}" y="{MARGIN + 28}" font-size="{LABEL_FONT}" fill="#555">'
        f"{_esc(LEGEND)}</text>",
        f'<circle cx="{START[0]}" cy="{START[1]}" r="{START_R}" fill="#333">'
        "<title>initial state</title></circle>",
    ]
    drawn = routes()
    # Lines first, then boxes and label backgrounds on top of them.
    out += [_arrow(route_points(route)) for route, _ in drawn]
    for place in PLACES:
        out += _box(place, place.state not in leaving)
        if place.state in loops:
            out += _loop(place)
    for route, events in drawn[1:]:
        out += _label(label_centre(route), label_text(events))
    out.append("</svg>")
    return "\n".join(out) + "\n"
