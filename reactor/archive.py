"""Job archive directories on the local filesystem, confined to the configured archive root.

Reset empties a job's archive directory. Because the archive path is stored in the job record
(and may have been supplied by a caller), every operation first resolves it, symlinks included,
and refuses anything that is not strictly below the root: a wrong path must never let a reset
delete someone else's data. No store code here.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import ArchiveError

__all__ = ["resolve_under", "is_confined", "ensure_archive", "clear_archive", "default_path"]


def _real(path: str | os.PathLike) -> Path:
    # realpath follows every symlink that exists and keeps the rest literally, so a link
    # anywhere along the way is judged by where it really points.
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _check_text(value: object, what: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ArchiveError(f"{what} must be a non-empty path, got {value!r}")
    if "\x00" in value:
        raise ArchiveError(f"{what} contains a NUL character")
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
