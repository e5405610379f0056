"""Job archive directories on the local filesystem, confined to the configured archive root.

Reset empties a job's archive directory. Because the archive path is stored in the job record
(and may have been supplied by a caller), every operation first resolves it, symlinks included,
and refuses anything that is not strictly below the root: a wrong path must never let a reset
delete someone else's data. A job's archive must also be its own: ``claim`` and ``check_own``
refuse a directory that is, contains or lies inside another job's archive, finding the other
jobs through the store interface's ``archive_owners`` (no store code here).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..domain.errors import ArchiveError
from ..domain.jsonvalues import is_text
from ..domain.tokens import shown
from ..store.base import JobStore

__all__ = ["resolve_under", "is_confined", "ensure_archive", "clear_archive", "default_path",
           "check_path", "spellings", "check_own", "claim"]


def _real(path: str | os.PathLike) -> Path:
    # realpath follows every symlink that exists and keeps the rest literally, so a link
    # anywhere along the way is judged by where it really points.
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _check_text(value: object, what: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ArchiveError(f"{what} must be a non-empty path string, got {shown(value)}")
    if not value.strip():
        raise ArchiveError(f"{what} must be a non-empty path, got {value!r}")
    if "\x00" in value:
        raise ArchiveError(f"{what} contains a NUL character")
    if not is_text(value):
        raise ArchiveError(f"{what} is not valid text (it cannot be encoded as UTF-8)")
    return value


def resolve_under(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """The real location of ``path`` (relative paths are taken below ``root``); ArchiveError
    unless it lies strictly below the real ``root``."""
    root_text = _check_text(root, "archive root")
    path_text = _check_text(path, "archive path")
    real_root = _real(root_text)
    candidate = Path(os.path.expanduser(path_text))
    if not candidate.is_absolute():
        candidate = Path(root_text).expanduser() / candidate
    real = _real(candidate)
    if real == real_root:
        raise ArchiveError(f"archive path {path_text!r} is the archive root itself; refusing to "
                           "use the whole archive as one job's directory")
    if real_root not in real.parents:
        raise ArchiveError(f"archive path {path_text!r} resolves to {str(real)!r}, which is "
                           f"outside the archive root {str(real_root)!r}; refusing to touch it")
    return real


def is_confined(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True when ``path`` resolves strictly below ``root``."""
    try:
        resolve_under(root, path)
    except ArchiveError:
        return False
    return True


def default_path(root: str | os.PathLike, pipeline_uuid: str, job_uuid: str) -> str:
    """``<root>/products/v2/<pipeline uuid>/<job uuid>``, dashes removed, as an absolute path."""
    base = Path(os.path.abspath(os.path.expanduser(_check_text(root, "archive root"))))
    return str(base / "products" / "v2" / pipeline_uuid.replace("-", "")
               / job_uuid.replace("-", ""))


def ensure_archive(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Create the archive directory (and its parents) below ``root``; return its real path."""
    real = resolve_under(root, path)
    try:
        real.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArchiveError(f"cannot create archive directory {str(real)!r}: "
                           f"{exc.strerror or exc}") from None
    if not real.is_dir():
        raise ArchiveError(f"archive path {str(real)!r} exists but is not a directory")
    return real


def clear_archive(root: str | os.PathLike, path: str | os.PathLike) -> int:
    """Delete everything inside the archive directory, keeping the directory; return how many
    top-level entries were removed. Refuses (deleting nothing) any path not below ``root``."""
    real = resolve_under(root, path)
    if not real.exists():
        ensure_archive(root, real)  # nothing to clear; the directory must exist afterwards
        return 0
    if not real.is_dir():
        raise ArchiveError(f"archive path {str(real)!r} is not a directory; refusing to clear it")
    removed = 0
    try:
        with os.scandir(real) as entries:
            for entry in entries:
                # A symlink inside the archive is removed as a link: its target is not ours.
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed += 1
    except OSError as exc:
        raise ArchiveError(f"could not clear archive directory {str(real)!r} after removing "
                           f"{removed} entries: {exc.strerror or exc}") from None
    return removed


def check_path(root: str | os.PathLike, path: object) -> str:
    """The form in which an archive path is stored: its real, absolute, normalised location,
    which must lie strictly below ``root`` (relative paths are taken below ``root``).
    ArchiveError for anything else: not a string, NUL, not UTF-8, outside the root, the root."""
    return str(resolve_under(root, path))


def spellings(root: str | os.PathLike, path: str | os.PathLike) -> list[str]:
    """The strings a job record may hold for the archive ``path`` (below ``root``): its real
    location (the form stored since archives must be their own), the same below the root as
    spelled in the configuration, the path as given, normalised, and the path relative to the
    root (as ``reactor jobs create --archive-path`` once stored it)."""
    real = resolve_under(root, path)
    text = os.path.expanduser(os.fspath(path))
    literal_root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    relative = os.path.relpath(real, _real(root))
    given = os.path.normpath(text if os.path.isabs(text) else os.path.join(literal_root, text))
    out: list[str] = []
    for form in (str(real), os.path.join(literal_root, relative), given, relative,
                 os.path.normpath(text)):
        if form not in out:
            out.append(form)
    return out


def _relation(mine: Path, other: Path) -> str | None:
    if other == mine:
        return "is"
    if mine in other.parents:
        return "contains"
    if other in mine.parents:
        return "lies inside"
    return None


def check_own(store: JobStore, root: str | os.PathLike, path: str | os.PathLike, uuid: str,
              doing: str, enclosing: bool = True) -> Path:
    """The real location of ``path`` if it is job ``uuid``'s own archive: below ``root``, and
    neither another job's archive nor containing one, nor (``enclosing``) inside one; hidden
    jobs count. Else ArchiveError saying so (``doing`` says what was refused, e.g. "clear
    it"). Reset passes ``enclosing=False``: clearing a directory harms the archives it holds,
    and a record claiming an enclosing directory (only a record from before the rule could)
    must not stop the jobs inside from being reset.

    Other jobs are found with one ``store.archive_owners`` query for every spelling of
    ``path`` (see ``spellings``) and compared by real location; another job's path that is not
    below the root is left out, since no reset can ever clear it."""
    real = resolve_under(root, path)
    conflicts: dict[str, tuple[str, str]] = {}
    for other_uuid, other_path in store.archive_owners(spellings(root, path)):
        if other_uuid == uuid:
            continue
        try:
            other_real = resolve_under(root, other_path)
        except ArchiveError:
            continue
        relation = _relation(real, other_real)
        if relation is not None and (enclosing or relation != "lies inside"):
            conflicts[other_uuid] = (other_path, relation)
    if conflicts:
        other_uuid, (other_path, relation) = sorted(conflicts.items())[0]
        more = f" (and {len(conflicts) - 1} other jobs' archives)" if len(conflicts) > 1 else ""
        raise ArchiveError(
            f"archive path {str(real)!r} {relation} the archive of job {other_uuid} "
            f"({other_path!r}){more}; a job's archive must be its own, so refusing to {doing}")
    return real


def claim(store: JobStore, root: str | os.PathLike | None, path: object, uuid: str) -> str:
    """The archive path to store for a new job ``uuid``: ``check_path``'s form, once
    ``check_own`` found it is no other job's. "" (no archive) stays "". A job that already
    exists keeps the record it has (creating it writes nothing), so its request is not refused
    for overlapping another job's archive. ``root`` None (no archive root known) refuses every
    archive path."""
    if path is None or path == "":
        return ""
    if root is None:
        raise ArchiveError("no archive root is configured for these job operations, so an "
                           "archive path cannot be checked; create the job without one, or "
                           "with operations given the archive root")
    checked = check_path(root, path)
    try:
        check_own(store, root, checked, uuid, "use it for a new job")
    except ArchiveError:
        if store.get_job(uuid, include_hidden=True) is None:
            raise
    return checked
