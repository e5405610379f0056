"""``reactor consume --processes N``: N consumer processes, each a member of the partitions.

One consumer process is bound by its interpreter lock, so it uses about one core. The
supervisor starts N ``reactor consume --member I/N`` children (the partitioned layout keeps
each job's events in order whatever the number of processes), forwards SIGTERM/SIGINT to them,
and writes one health file for all of them. If a child exits while the others run, it stops the
others and exits with that child's code (1 if the child exited cleanly), so whatever restarts
the reactor (systemd, Kubernetes) restarts all of it: a missing member would leave its
partitions unconsumed. If the supervisor dies, its children get SIGTERM (Linux).
"""
from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..domain.errors import ConfigError
from .health import HealthFile

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the supervisor looks at its children
KILL_AFTER_S = 10.0  # beyond the grace period, before a child that ignores SIGTERM is killed
STALE_AFTER = 3  # health intervals without a rewrite of a member's file: it is unresponsive


@dataclass(frozen=True)
class Plan:
    """The children to start: their argument lists and health files."""

    commands: list[list[str]]
    health_files: list[HealthFile | None]


def plan(processes: int, partitions: int, *, grace_s: float, health_file: str | None,
         health_interval_s: float, metrics_port: int | None, metrics_host: str,
         root_args: list[str]) -> Plan:
    """The ``reactor consume`` command of each of ``processes`` children; ConfigError if the
    layout cannot give each one its own partitions."""
    if partitions < processes:
        raise ConfigError(f"--processes {processes} needs at least {processes} partitions (got "
                          f"{partitions}): each process consumes its own partitions, which "
                          "keeps every job's events in order; set --partitions or the "
                          "'partitions' key (publishers must use the same count)")
    commands, health_files = [], []
    for index in range(processes):
        args = [sys.executable, "-m", "reactor.cli.main", *root_args, "consume",
                "--member", f"{index}/{processes}", "--partitions", str(partitions),
                "--grace", str(grace_s), "--health-interval", str(health_interval_s)]
        health = HealthFile(f"{health_file}.member{index}") if health_file else None
        if health is not None:
            args += ["--health-file", str(health.path)]
        if metrics_port is not None:
            # Port 0 lets each child pick a free port (it logs which); else one port each.
            port = metrics_port + index if metrics_port else 0
            args += ["--metrics-port", str(port), "--metrics-host", metrics_host]
        commands.append(args)
        health_files.append(health)
    return Plan(commands, health_files)


class Supervisor:
    """Run the children of a ``Plan`` until they stop; ``run`` returns the exit code."""

    def __init__(self, consume_plan: Plan, grace_s: float, health: HealthFile | None = None,
                 health_interval_s: float = 5.0):
        self.plan = consume_plan
        self.grace_s = grace_s
        self.health = health
        self.health_interval_s = health_interval_s
        self.children: list[subprocess.Popen] = []
        self._stopping = False
        self._next_health = 0.0

    def run(self, install_signals: bool = True) -> int:
        """Start the children, supervise them, return the exit code (0 = all stopped cleanly)."""
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        try:
            for command in self.plan.commands:
                self.children.append(subprocess.Popen(command, preexec_fn=_term_with_parent))
            log.info("started %d consumer processes (pids %s)", len(self.children),
                     ", ".join(str(c.pid) for c in self.children))
            return self._supervise()
        finally:
            self._stop_children()
            if self.health is not None:
                self.health.remove()

    def request_stop(self) -> None:
        """Ask every child to drain and stop (safe from a signal handler)."""
        self._stopping = True
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("received %s: stopping the consumer processes", signal.Signals(signum).name)
        self.request_stop()

    def _supervise(self) -> int:
        while True:
            codes = [child.poll() for child in self.children]
            if all(code is not None for code in codes):
                # Every child stopped: 0 only if each stopped cleanly.
                return max(exit_status(code) for code in codes)
            if not self._stopping:
                for index, code in enumerate(codes):
                    if code is not None:
                        log.error("consumer process %d (pid %d) exited with code %d; stopping "
                                  "the others", index, self.children[index].pid, code)
                        return exit_status(code) or 1  # ``run`` stops the others
            self._write_health()
            time.sleep(POLL_S)

    def _stop_children(self) -> None:
        """SIGTERM the children still running, wait out the grace, then kill the rest."""
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + KILL_AFTER_S
        for child in self.children:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("consumer process %d ignored SIGTERM; killing it", child.pid)
                child.kill()
                child.wait()

    def _write_health(self) -> None:
        if self.health is None or time.monotonic() < self._next_health:
            return
        self._next_health = time.monotonic() + self.health_interval_s
        members, counts = [], Counter()
        for child, member_health in zip(self.children, self.plan.health_files):
            doc = member_health.read() if member_health is not None else {}
            counts.update(doc.get("counts") or {})
            status = doc.get("status", "starting")
            if doc and member_health.age_s() > STALE_AFTER * self.health_interval_s:
                status = "unresponsive"  # its IO loop stopped rewriting the file: wedged
            members.append({"pid": child.pid, "status": status})
        # Ready only when every member is: a member that is not consuming leaves its
        # partitions waiting. Otherwise the first member's status that is not "consuming".
        status = next((m["status"] for m in members if m["status"] != "consuming"), "consuming")
        self.health.write(status, counts, members=members)


def exit_status(returncode: int) -> int:
    """A child's return code as an exit status: killed by signal N (-N) is 128 + N, as in a
    shell."""
    return 128 - returncode if returncode < 0 else returncode


def _term_with_parent() -> None:
    """In a child, before it runs: SIGTERM it when the supervisor dies (Linux), so members do
    not outlive a supervisor killed with SIGKILL; they drain and stop as on a normal SIGTERM."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except Exception:  # noqa: BLE001 - not Linux (or no prctl): best effort, and an error
        pass  # here would stop the member from starting at all


_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
