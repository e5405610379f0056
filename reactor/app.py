"""The composition root: settings → store, authority and job operations, built on demand."""
from __future__ import annotations

from functools import cached_property
from typing import Mapping

from . import config as _config
from .config import Settings


class App:
    """Everything an entry point needs, built lazily from one ``Settings``."""

    def __init__(self, settings: Settings):
        self.settings = settings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "App":
        """Load configuration (config.yml + REACTOR_* variables) and apply ``overrides``."""
        settings = _config.load(env)
        if overrides:
            settings = settings.with_overrides(**overrides)
        return cls(settings)

    @cached_property
    def secret(self) -> str:
        return _config.resolve_secret(self.settings)

    @cached_property
    def authority(self):
        from .domain.tokens import Authority

        return Authority(self.secret, self.settings.token_length, self.settings.admin_window)

    @cached_property
    def store(self):
        from .store import open_store

        uri = self.settings.resolved_store_uri
        if uri.startswith("sqlite:"):
            return open_store(uri)  # the backend creates the file's directory
        return open_store(uri, database=self.settings.database,
                          write_concern=self.settings.write_concern,
                          journal=self.settings.journal,
                          server_selection_timeout_ms=self.settings.server_selection_timeout_ms)

    @cached_property
    def jobs(self):
        from .engine.jobs import Jobs

        return Jobs(self.store, self.authority, self.settings.verify_pipelines,
                    archive_root=str(self.settings.resolved_archive_root.absolute()))

    def close(self) -> None:
        """Close the store if it was opened."""
        if "store" in self.__dict__:
            self.store.close()
