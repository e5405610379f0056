"""The error tree: one base class, one subclass per thing that can go wrong."""
from __future__ import annotations

from transitions.core import MachineError

__all__ = [
    "ReactorError", "ConfigError", "ValidationError", "UnknownJob", "UnknownPipeline",
    "AuthError", "BrokerError", "StoreError", "StoreUnavailable", "ArchiveError", "ManagedPipelineJobError",
    "PipelineProcessGone", "PipelineProcessRaised", "InvalidTransition", "MachineError",
]


class ReactorError(Exception):
    """Base class of every error the reactor raises on purpose."""


class ConfigError(ReactorError):
    """A configuration key is unknown, missing or has a bad value."""


class ValidationError(ReactorError, ValueError):
    """An input does not have the shape it must have."""


class UnknownJob(ReactorError, LookupError):
    """No job has the given uuid."""


class UnknownPipeline(ReactorError, LookupError):
    """No registered pipeline has the given uuid."""


class AuthError(ReactorError, PermissionError):
    """A token is missing, wrong, expired, or not allowed for this operation."""


class InvalidTransition(ReactorError, MachineError):
    """The event is not allowed from the job's state (the record is unchanged).

    Also a ``transitions`` ``MachineError``: code written against the replaced system's library
    catches it as it always did, and ``except ReactorError`` catches it with everything else.
    """


class StoreError(ReactorError):
    """The store refused an operation for a permanent reason."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now; the operation may succeed if retried."""


class BrokerError(ReactorError):
    """The broker refused an operation, or could not be reached."""


class ArchiveError(ReactorError):
    """An archive path is outside the configured archive root or cannot be cleared."""


class ManagedPipelineJobError(ReactorError):
    """A ManagedPipelineJob operation is not allowed in the job's current condition."""


class PipelineProcessGone(ReactorError):
    """The consumer's pipeline process exited, or could not start."""


class PipelineProcessRaised(ReactorError):
    """Processing a message raised in the pipeline process (its traceback is the message)."""
