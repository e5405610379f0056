"""Store layer: the only code that imports pymongo or sqlite3. ``open_store`` picks a backend."""
from __future__ import annotations

from .base import JobStore

__all__ = ["JobStore", "open_store"]


def open_store(uri: str, **options) -> JobStore:
    """Open the store named by ``uri`` (``mongodb://``, ``mongodb+srv://`` or ``sqlite:///``).

    Options for MongoDB: database, write_concern, journal, server_selection_timeout_ms.
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError("store URI must be a non-empty string (mongodb://… or sqlite:///path)")
    if uri.startswith(("mongodb://", "mongodb+srv://")):
        from .mongo import MongoJobStore

        return MongoJobStore(uri, **options)
    if uri.startswith("sqlite:"):
        from .sqlite import SqliteJobStore

        return SqliteJobStore(uri)
    raise ValueError(f"unsupported store URI scheme in {uri.split('://')[0]!r}; use mongodb:// "
                     "or sqlite:///path")
