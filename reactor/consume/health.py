"""The health file of a running consumer (or of ``reactor consume --processes``): liveness and
readiness for orchestrators that can only look at files."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from ..domain.records import now_iso


class HealthFile:
    """A JSON file rewritten every few seconds while the consumer runs (liveness/readiness).

    Fresh mtime = the process is alive; ``"status": "consuming"`` = ready. Removed on exit.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def write(self, status: str, counts: Mapping[str, int], **extra: Any) -> None:
        """Replace the file atomically with the current status (and ``extra`` fields)."""
        doc = {"status": status, "pid": os.getpid(), "updated": now_iso(),
               "counts": dict(counts), **extra}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(doc, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def read(self) -> dict:
        """What the file says now; {} if it is missing, being replaced, or not a JSON object."""
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def age_s(self) -> float:
        """Seconds since the file was last rewritten (infinite if it is missing)."""
        try:
            return max(0.0, time.time() - self.path.stat().st_mtime)
        except OSError:
            return float("inf")

    def remove(self) -> None:
        """Delete the file (the consumer has stopped)."""
        self.path.unlink(missing_ok=True)
