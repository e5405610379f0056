"""The client library (contract §8): ``ManagedPipelineJob`` and ``ManagedPipelineJobInstance``.

Both are thin over ``reactor.engine.jobs.Jobs``, the one path every entry point uses, so a job moved
from Python obeys exactly the rules the reactor enforces (tokens, the lifecycle table, one
compare-and-set per event). The event methods are generated from ``lifecycle.TRANSITIONS``.

Errors: bad arguments raise ``TypeError``/``ValueError`` before anything is written; an event
not allowed from the job's state raises ``transitions.core.MachineError`` (record unchanged);
a missing or wrong token raises ``reactor.domain.errors.AuthError`` (a ``PermissionError``); an
operation the job's condition forbids (cancel after it ran, re-setup with other data) raises
``ManagedPipelineJobError``; archive confinement problems raise ``ArchiveError``. All but the
first two derive from ``reactor.domain.errors.ReactorError``.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Self
from urllib.parse import urlencode

from ..engine import archive
from ..domain import identifiers
from ..domain import lifecycle
from .. import config as _config
from ..domain.errors import ArchiveError, AuthError, ManagedPipelineJobError
from ..domain.tokens import mask, shown
from .library_args import (
    check_event_data, check_secret, optional_text, parse_pipelines, resolve_child_of,
    store_location,
)

__all__ = ["ManagedPipelineJob", "ManagedPipelineJobInstance", "ManagedPipelineJobError"]

_EVENT_DOC_KEYS = ("uuid", "name", "data", "token")
# create is setup()'s job; reset has library semantics (archive clearing) written by hand.
_HAND_WRITTEN = frozenset({"create", "reset"})


# --- the shared handle ----------------------------------------------------------------------

class _JobHandle:
    """What both classes share: configuration, the store, event methods, stored properties."""

    uuid: str | None = None
    token: str | None = None

    def _open(self, mongodb: Any, secret: Any, archive_root: Any) -> None:
        from ..app import App

        uri, database = store_location(mongodb)
        secret = check_secret(secret)
        if archive_root is not None and not isinstance(archive_root, (str, os.PathLike)):
            raise TypeError(f"archive_root must be a path, not {type(archive_root).__name__}")
        overrides: dict[str, Any] = {"store_uri": uri}
        if database is not None:
            overrides["database"] = database
        if secret is not None:
            overrides["secret"] = secret
        if archive_root is not None:
            overrides["archive_root"] = os.fspath(archive_root)
        self._app = App(_config.load().with_overrides(**overrides))
        self._authority = self._app.authority  # a missing secret is an error now, not later
        self._archive_root = os.path.abspath(self._app.settings.resolved_archive_root)

    @property
    def _jobs(self):
        return self._app.jobs  # the store opens on first use

    @property
    def archive_root(self) -> str:
        """The directory below which this job's archive may be created and cleared."""
        return self._archive_root

    # Hooks the two classes fill in.
    def _attached_uuid(self) -> str:
        raise NotImplementedError

    def _stored_uuid(self) -> str:
        return self._attached_uuid()

    def _apply(self, event: str, data: Any, token: Any):
        # Check what can be checked before _attached_uuid(), which may create the job.
        data = check_event_data(data)
        if token is None and lifecycle.is_admin_event(event):
            raise AuthError(f"{event!r} needs an administrative token: pass token=<admin "
                            "token> (`reactor token admin`); the job token cannot authorise it")
        if token is not None and self.uuid is None:
            # A wrong token must not create the job on its way to being refused: the job's
            # uuid is known before it exists, so the token is checked first.
            self._jobs.authorize(self._stored_uuid(), event, token)
        uid = self._attached_uuid()
        token = self.token if token is None else token
        if token is None:
            raise AuthError(f"no token for {event!r} on job {uid}: pass token=<job token>")
        return self._jobs.apply(uid, event, data, token)

    def reset(self, data: dict | None = None, token: str | None = None,
              no_clear_path: bool = False) -> Self:
        """Reset (admin): → RESET, empty the archive directory (kept), → CREATED; history kept."""
        if not isinstance(no_clear_path, bool):
            raise TypeError("no_clear_path must be True or False")
        data = check_event_data(data)
        if not self._authority.is_admin(token):
            raise AuthError(f"token {mask(token)} is not a valid administrative token; reset "
                            "needs one (`reactor token admin`); the job token cannot authorise it")
        uid = self._attached_uuid()
        record = self._jobs.get(uid)
        path = record.get("archive_path") or ""
        if not no_clear_path:
            if not path:
                raise ArchiveError(f"job {uid} has no archive path to clear; pass "
                                   "no_clear_path=True to reset it without clearing")
            # Refuse before any state change, so a refused reset changes nothing: a path
            # outside the root, or a directory that is or holds another job's archive (a
            # record from before archives had to be their own, or from a race).
            archive.check_own(self._jobs.store, self._archive_root, path, uid, "clear it",
                              enclosing=False)
        self._jobs.apply(uid, "reset", data, token, record=record)
        if not no_clear_path:
            # If clearing fails the job stays in RESET; reset is allowed from RESET, so retrying
            # the whole reset is safe.
            archive.clear_archive(self._archive_root, path)
        self._jobs.apply(uid, "ready", None, token)
        return self

    @property
    def record(self) -> dict:
        """The job's stored record, read now (never cached)."""
        return self._jobs.get(self._stored_uuid())

    @property
    def state(self) -> str:
        """The job's stored state."""
        return self.record["state"]

    @property
    def last_event(self) -> str:
        """The name of the last event applied to the job."""
        return self.record["last_event"]

    @property
    def history(self) -> list[dict]:
        """Every applied event, oldest first."""
        return self.record["history"]

    def close(self) -> None:
        """Release the store connection."""
        self._app.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _event_method(t: lifecycle.Transition):
    def method(self, data: dict | None = None, token: str | None = None):
        self._apply(t.event, data, token)
        return self

    method.__name__ = method.__qualname__ = t.event
    needs = "an administrative token" if t.admin else "the job token unless token= is given"
    method.__doc__ = (f"{t.description} (event {t.event!r}, {needs}); returns the job, so "
                      "calls chain.")
    return method


for _t in lifecycle.TRANSITIONS:
    if _t.event not in _HAND_WRITTEN:
        setattr(_JobHandle, _t.event, _event_method(_t))
del _t


# --- the two public classes -----------------------------------------------------------------

class ManagedPipelineJob(_JobHandle):
    """One pipeline job, created (or re-attached to) by ``setup()`` and moved by event methods."""

    def __init__(self, mongodb: dict, pipelines: dict | None, agave: Any = None,
                 data: dict | None = None, *, uuid: str | None = None,
                 child_of: Iterable[str] | str | None = None,
                 experiment_design_id: Iterable[str] | str | None = None,
                 experiment_id: Iterable[str] | str | None = None,
                 sample_id: Iterable[str] | str | None = None,
                 measurement_id: Iterable[str] | str | None = None,
                 pipeline_uuid: str | None = None, archive_path: str | None = None,
                 archive_system: str | None = None, session: str | None = None,
                 agent: str | None = None, task: str | None = None, secret: str | None = None,
                 archive_root: str | os.PathLike | None = None, **unknown: Any):
        if unknown:
            raise TypeError(f"ManagedPipelineJob got unexpected keyword argument(s) "
                            f"{', '.join(sorted(unknown))}")
        # Check every argument before touching configuration or the store.
        self.pipeline_uuid, self.job_manager_id, self._nonce = parse_pipelines(pipelines,
                                                                                pipeline_uuid)
        self.data: dict = dict(check_event_data(data) or {})
        self.child_of = resolve_child_of(child_of, {
            "experiment_design_id": experiment_design_id, "experiment_id": experiment_id,
            "sample_id": sample_id, "measurement_id": measurement_id})
        self._requested_uuid = (identifiers.check_typed(uuid, "pipelinejob")
                                if uuid is not None else None)
        self._requested_path = optional_text(archive_path, "archive_path")
        if self._requested_path is not None and not self._requested_path.strip():
            raise ValueError("archive_path must not be empty")
        archive_system = optional_text(archive_system, "archive_system")
        self.session = optional_text(session, "session") or ""
        self.agent = optional_text(agent, "agent") or ""
        self.task = optional_text(task, "task") or ""
        # Accepted for compatibility with the replaced library; archives here live on the
        # local filesystem under the archive root, so no Agave client is ever called.
        self.agave = agave
        self._open(mongodb, secret, archive_root)
        self.archive_system = archive_system or self._app.settings.archive_system
        self.uuid = None
        self.token = None
        self.callback: str | None = None
        self.archive_path: str | None = None
        self._gone: str | None = None  # "cancelled"/"deleted" once this object removed the job

    def __repr__(self) -> str:
        return (f"ManagedPipelineJob(uuid={self.uuid!r}, pipeline_uuid={self.pipeline_uuid!r}, "
                f"archive_path={self.archive_path!r})")

    def _identity(self, data: dict) -> str:
        return self._requested_uuid or identifiers.job_uuid(self.pipeline_uuid, self.child_of,
                                                            data)

    def _attached_uuid(self) -> str:
        if self._gone:
            raise ManagedPipelineJobError(f"job {self.uuid} was {self._gone}; call setup() to "
                                          "create it again")
        if self.uuid is None:
            self.setup()
        return self.uuid

    def _stored_uuid(self) -> str:
        return self.uuid or self._identity(self.data)

    def setup(self, data: dict | None = None) -> "ManagedPipelineJob":
        """Create the job in CREATED, or re-attach to the existing one with the same identity.

        A new job's archive must be its own: ``ArchiveError`` (nothing written) for a path
        outside the archive root, or that is, contains or lies inside another job's archive."""
        extra = check_event_data(data)
        merged = {**self.data, **(extra or {})}
        if self.uuid is not None and not self._gone and merged != self.data:
            raise ManagedPipelineJobError(
                f"job {self.uuid} is already set up; data is part of a job's identity, so it "
                "can only be added before the first setup()")
        uid = self._identity(merged)
        path = self._requested_path or archive.default_path(self._archive_root,
                                                            self.pipeline_uuid, uid)
        if not os.path.isabs(os.path.expanduser(path)):
            path = os.path.join(self._archive_root, path)
        record, _created = self._jobs.create(
            self.pipeline_uuid, merged, self.child_of, uuid=uid, archive_path=path,
            archive_system=self.archive_system, session=self.session, agent=self.agent,
            task=self.task)
        if record.get("pipeline_uuid") != self.pipeline_uuid:
            raise ManagedPipelineJobError(
                f"job {uid} already exists for pipeline {record.get('pipeline_uuid')}, not "
                f"{self.pipeline_uuid}; choose another uuid")
        if record.get("_visible") is False:
            raise ManagedPipelineJobError(f"job {uid} exists but was soft-deleted; delete it "
                                          "with force=True before creating it again")
        stored_path = record.get("archive_path") or path
        if archive.is_confined(self._archive_root, stored_path):
            archive.ensure_archive(self._archive_root, stored_path)
        self.data = merged
        self.uuid = uid
        self.archive_path = stored_path
        self.archive_system = record.get("archive_system") or self.archive_system
        self.token = self._authority.job_token(uid)
        base = self._app.settings.callback_url
        self.callback = base + ("&" if "?" in base else "?") + urlencode(
            {"uuid": uid, "token": self.token})
        self._gone = None
        return self

    def cancel(self) -> None:
        """Delete the job if the stored record has processed no event beyond ``create``."""
        if self._gone:
            raise ManagedPipelineJobError(f"job {self.uuid} was already {self._gone}")
        uid = self._stored_uuid()
        if self._jobs.cancel(uid):
            self.uuid = self.uuid or uid
            self._gone = "cancelled"
            return
        record = self._jobs.store.get_job(uid, include_hidden=True)
        if record is None:
            raise ManagedPipelineJobError(f"job {uid} does not exist; nothing to cancel")
        raise ManagedPipelineJobError(
            f"cannot cancel job {uid}: it has processed {record.get('last_event')!r} (state "
            f"{record.get('state')}); a job that started keeps its record, send fail() instead")

    def delete(self, token: str | None = None, force: bool = True) -> None:
        """Delete the job (admin token) and every reference to it; ``force=False`` hides it."""
        if not isinstance(force, bool):
            raise TypeError("force must be True or False")
        if token is None:
            raise AuthError("delete needs an administrative token: pass token=<admin token> "
                            "(`reactor token admin`)")
        uid = self._stored_uuid()
        self._jobs.delete(uid, token, force=force)
        self.uuid = self.uuid or uid
        self._gone = "deleted"


class ManagedPipelineJobInstance(_JobHandle):
    """An existing job, attached by uuid, for deferred updates from another process."""

    def __init__(self, mongodb: dict, uuid: str, token: str | None = None,
                 secret: str | None = None, archive_root: str | os.PathLike | None = None):
        self.uuid = identifiers.check_typed(uuid, "pipelinejob")
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string (the job token or an admin token)")
        self.token = token
        self._open(mongodb, secret, archive_root)
        try:
            self._jobs.get(self.uuid)  # an unknown uuid is an error now, not at the first event
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"ManagedPipelineJobInstance(uuid={self.uuid!r})"

    def _attached_uuid(self) -> str:
        return self.uuid

    def handle(self, event_doc: dict, token: str | None = None) -> dict:
        """Apply ``{"name", "data"?, "token"?, "uuid"?}`` to this job; return the stored record.

        The document's token wins over ``token=``, which wins over the constructor's. The event
        is applied as it is: ``reset`` here is the bare state change (use ``reset()`` to also
        clear the archive), exactly as through the reactor.
        """
        if not isinstance(event_doc, dict):
            raise TypeError("event_doc must be a dict like {'name': 'update', 'data': {...}}, "
                            f"not {type(event_doc).__name__}")
        unknown = sorted(str(k) for k in event_doc if k not in _EVENT_DOC_KEYS)
        if unknown:
            raise ValueError(f"event_doc has unknown key(s) {', '.join(unknown)}; accepted: "
                             + ", ".join(_EVENT_DOC_KEYS))
        if "name" not in event_doc:
            raise ValueError("event_doc needs a 'name' (one of "
                             + ", ".join(lifecycle.EVENT_NAMES) + ")")
        if event_doc.get("uuid", self.uuid) != self.uuid:
            raise ValueError(f"event_doc['uuid'] {shown(event_doc.get('uuid'))} is not this "
                             f"instance's job {self.uuid}")
        # "create" here is refused by Jobs.apply as on every path (MachineError: recorded once,
        # when the job is created), so the library and the reactor give one verdict.
        event = lifecycle.normalize_event(event_doc["name"])
        chosen = event_doc.get("token") or token
        if chosen is None and lifecycle.is_admin_event(event):
            raise AuthError(f"{event!r} needs an administrative token in event_doc['token'] or "
                            "token=")
        return self._apply(event, event_doc.get("data"), chosen).record
