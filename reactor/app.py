"""The composition root: settings → store, authority, job operations and the pipeline, built on
demand; and the factory that builds the same in the consumer's pipeline process."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Mapping

from . import config as _config
from .config import Settings

if TYPE_CHECKING:
    from .domain.tokens import Authority
    from .engine.jobs import Jobs
    from .engine.pipeline import Pipeline
    from .store.base import JobStore


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
        """The signing secret of tokens, from the configuration."""
        return _config.resolve_secret(self.settings)

    @cached_property
    def authority(self) -> "Authority":
        """Issues and checks tokens with the secret."""
        from .domain.tokens import Authority

        return Authority(self.secret, self.settings.token_length, self.settings.admin_window)

    @cached_property
    def store(self) -> "JobStore":
        """The configured store, opened on first use."""
        from .store import open_store

        uri = self.settings.resolved_store_uri
        if uri.startswith("sqlite:"):
            return open_store(uri)  # the backend creates the file's directory
        return open_store(uri, database=self.settings.database,
                          write_concern=self.settings.write_concern,
                          journal=self.settings.journal,
                          server_selection_timeout_ms=self.settings.server_selection_timeout_ms)

    @cached_property
    def jobs(self) -> "Jobs":
        """Job operations over the store, with the authority and the archive root."""
        from .engine.jobs import Jobs

        return Jobs(self.store, self.authority, self.settings.verify_pipelines,
                    archive_root=str(self.settings.resolved_archive_root.absolute()))

    def pipeline(self, separate_commits: bool = False) -> "Pipeline":
        """A pipeline over this App's jobs, with the configured size limit (``separate_commits``:
        a list's events are planned together and committed one by one)."""
        from .engine.pipeline import Pipeline

        return Pipeline(self.jobs, self.settings.max_message_bytes,
                        separate_commits=separate_commits)

    def close(self) -> None:
        """Close the store if it was opened."""
        if "store" in self.__dict__:
            self.store.close()


@dataclass(frozen=True)
class ChildPipeline:
    """Builds the pipeline of ``reactor consume``'s pipeline process, in that process: logging
    as configured, then an App's pipeline. Picklable, so it crosses the pipe to the child, and
    the engine that starts the child needs neither the composition root nor the logging set-up.
    """

    settings: Settings
    separate_commits: bool

    def __call__(self) -> "tuple[Pipeline, Callable[[], None]]":
        """Set up logging; the pipeline, and what closes the store it opened."""
        from .obs.logs import setup_logging

        setup_logging(self.settings.log_level, self.settings.log_format)
        app = App(self.settings)
        return app.pipeline(self.separate_commits), app.close
