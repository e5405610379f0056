"""PipelineJobs Reactor: the authoritative, auditable record of every pipeline job.

The client library is exported lazily (module ``__getattr__``) so that ``import reactor`` stays
cheap for one-shot entry points such as ``reactor invoke``.
"""
from __future__ import annotations

from typing import Any

__all__ = ["ManagedPipelineJob", "ManagedPipelineJobInstance", "ManagedPipelineJobError",
           "__version__"]

# name -> module that defines it; imported on first access only.
_LAZY = {
    "ManagedPipelineJob": "reactor.ingress.library",
    "ManagedPipelineJobInstance": "reactor.ingress.library",
    "ManagedPipelineJobError": "reactor.domain.errors",
}


def __getattr__(name: str) -> Any:
    """Import the library's public names on first use."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("pipelinejobs-reactor")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0+unknown"
    raise AttributeError(f"module 'reactor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
