"""Configuration: ``config.yml`` (path from REACTOR_CONFIG) overridden by REACTOR_* variables.

Every key is declared once, as a field of ``Settings`` with its type, default and meaning;
``KEYS`` is read off those fields and is what the documentation is generated from. Unknown keys
and bad values are start-up errors that name the key.

``Settings`` is a frozen dataclass rather than a pydantic-settings model: the loader is small,
its error texts (naming the source and the key, never a value that may hold a password) and
its boolean spellings are part of the contract, and pydantic's coercion rules and messages
would have to be overridden key by key to keep them. The fields are written out in the class
body, not made at run time from a table (``make_dataclass``), so that a type checker sees
them: ``settings.prefetch`` is an ``int``, and ``settings.prefech`` is an error before it runs
(and an ``AttributeError`` when it does).
"""
from __future__ import annotations

import dataclasses
import os
import secrets as _secrets
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .domain.errors import ConfigError
from .domain.tokens import mask_url

ENV_PREFIX = "REACTOR_"
CONFIG_ENV = "REACTOR_CONFIG"
# REACTOR_* variables that belong to tools around the reactor, not to its configuration.
NOT_CONFIG_ENV = frozenset({CONFIG_ENV, "REACTOR_SERVICES_DIR"})
# String keys that config.yml may also give as a YAML list: kept as one comma-separated string,
# the form the environment variable takes, so every reader sees one format.
LIST_KEYS = frozenset({"broker_url"})


@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default and a one-line description."""

    name: str
    type: type
    default: Any
    help: str
    check: Callable[[Any], bool] | None = None

    @property
    def env(self) -> str:
        """The environment variable that sets this key."""
        return ENV_PREFIX + self.name.upper()


def _key(default: Any, help: str, check: Callable[[Any], bool] | None = None) -> Any:
    """A ``Settings`` field that is a configuration key (``KEYS`` is made of these)."""
    return field(default=default, metadata={"help": help, "check": check})


def _positive(v: Any) -> bool:
    return v > 0


@dataclass(frozen=True)
class Settings:
    """Resolved configuration values, one typed field per key (see ``KEYS``)."""

    state_dir: str = _key(".reactor", "Local state directory of the embedded mode (SQLite "
                          "file, generated secret, archive)")
    store_uri: str = _key("", "mongodb://… or sqlite:///path; empty = sqlite file in state_dir")
    database: str = _key("reactor", "MongoDB database name (when the URI names none)")
    write_concern: str = _key("majority", "MongoDB write concern w: majority or a number")
    journal: bool = _key(True, "MongoDB write concern j (wait for the journal)")
    server_selection_timeout_ms: int = _key(3000, "MongoDB server selection timeout", _positive)
    broker_url: str = _key("", "amqp://… URL of RabbitMQ, or one per node of a cluster: "
                           "comma-separated (a YAML list in config.yml), tried in a shuffled "
                           "order, the next one when a node is lost; empty = no broker "
                           "(embedded mode)")
    secret: str = _key("", "Token secret (prefer secret_file); at least 16 bytes")
    secret_file: str = _key("", "File holding the token secret")
    token_length: int = _key(32, "Hex characters of job and admin tokens",
                             lambda v: 16 <= v <= 64)
    admin_window: int = _key(3600, "Seconds per admin-token window (valid now and one before)",
                             _positive)
    archive_root: str = _key("", "Directory under which job archives live (reset clears only "
                             "below it); empty = state_dir/archive")
    archive_system: str = _key("data-sd2e-community", "Default archive storage system id")
    verify_pipelines: bool = _key(True, "Jobs must name a registered pipeline")
    callback_url: str = _key("http://localhost:8080/callbacks", "Base URL of job-status "
                             "callbacks handed to jobs")
    max_message_bytes: int = _key(262144, "Largest accepted message body", _positive)
    exchange: str = _key("reactor", "Durable exchange events are published to")
    queue: str = _key("reactor.events", "Main queue")
    dead_letter_queue: str = _key("reactor.dead", "Dead-letter queue")
    retry_queue: str = _key("reactor.retry", "Delayed-retry queue (TTL, dead-letters back)")
    queue_type: str = _key("classic", "classic or quorum: every queue of the topology as a "
                           "replicated quorum queue (a RabbitMQ cluster); main queues then also "
                           "dead-letter to dead_letter_queue once the broker delivered a "
                           "message max_attempts times", lambda v: v in ("classic", "quorum"))
    partitions: int = _key(0, "Partition queues behind a consistent-hash exchange keyed on the "
                           "job uuid, one single-active consumer each (0 = one shared main "
                           "queue)", lambda v: v >= 0)
    prefetch: int = _key(100, "Unacknowledged deliveries per consumer", _positive)
    batch_size: int = _key(50, "Group commit: up to this many deliveries are committed in one "
                           "store write (one compare-and-set per job) and acknowledged with one "
                           "multiple-ack after it; 1 = one commit per message; capped at "
                           "prefetch", lambda v: 1 <= v <= 1000)
    batch_wait_ms: int = _key(0, "Group commit: how long a partial batch waits for more "
                              "deliveries before it is committed (0 = commit what has arrived "
                              "at once; under load batches fill by themselves)",
                              lambda v: 0 <= v <= 1000)
    pipeline_process: bool = _key(True, "reactor consume runs the pipeline (decode … commit) "
                                  "in a child process, so that it does not share an interpreter "
                                  "lock with the RabbitMQ client; false = in the consumer's own "
                                  "process")
    retry_delay_ms: int = _key(1000, "Delay before a delayed retry", _positive)
    max_attempts: int = _key(5, "Deliveries of one message before it is dead-lettered",
                             _positive)
    transition_retries: int = _key(3, "Delayed retries of an invalid transition (out-of-order "
                                   "tolerance)", lambda v: v >= 0)
    log_level: str = _key("INFO", "DEBUG, INFO, WARNING or ERROR",
                          lambda v: v.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _key("auto", "json, console or auto (console on a terminal)",
                           lambda v: v in ("json", "console", "auto"))
    # Where each key's value came from (a file path, a variable, "default"): not a key.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # However it was built, a Settings holds only values its keys accept.
        for key in KEYS:
            value = getattr(self, key.name)
            if type(value) is not key.type:
                raise ConfigError(f"Settings: bad value for {key.name!r}: expected "
                                  f"{key.type.__name__}, got {type(value).__name__}")
            if key.check and not key.check(value):
                raise ConfigError(f"Settings: bad value for {key.name!r}: {value!r} "
                                  f"({key.help})")

    def __repr__(self) -> str:
        """The values, with the secret and URL passwords masked (safe for logs, tracebacks)."""
        shown = {}
        for name, value in self.values.items():
            if name == "secret" and value:
                value = "***"
            elif isinstance(value, str) and "://" in value:
                value = mask_url(value)
            shown[name] = value
        return f"Settings({shown!r})"

    @property
    def values(self) -> dict[str, Any]:
        """Every key's value, by key name, in ``KEYS`` order."""
        return {key.name: getattr(self, key.name) for key in KEYS}

    def with_overrides(self, **overrides: Any) -> "Settings":
        """A copy with some keys replaced (checked like any other source)."""
        checked = {}
        for name, value in overrides.items():
            if name not in KEYS_BY_NAME:
                raise ConfigError(f"unknown configuration key {name!r}")
            checked[name] = _coerce(KEYS_BY_NAME[name], value, "override")
        return dataclasses.replace(self, **checked, sources=dict(self.sources))

    @property
    def state_path(self) -> Path:
        """``state_dir`` as a path, ``~`` expanded."""
        return Path(self.state_dir).expanduser()

    @property
    def resolved_store_uri(self) -> str:
        """The store URI, defaulting to the embedded SQLite file."""
        return self.store_uri or f"sqlite:///{(self.state_path / 'reactor.db').resolve()}"

    @property
    def resolved_archive_root(self) -> Path:
        """``archive_root``, defaulting to ``state_dir/archive``."""
        root = self.archive_root
        return Path(root).expanduser() if root else self.state_path / "archive"

    @property
    def embedded(self) -> bool:
        """True when the store is the embedded SQLite file (or another SQLite URI)."""
        return self.resolved_store_uri.startswith("sqlite:")


def _keys() -> tuple[Key, ...]:
    types = typing.get_type_hints(Settings)
    return tuple(Key(f.name, types[f.name], f.default, f.metadata["help"], f.metadata["check"])
                 for f in dataclasses.fields(Settings) if "help" in f.metadata)


KEYS: tuple[Key, ...] = _keys()
KEYS_BY_NAME = {k.name: k for k in KEYS}


def _joined(key: Key, items: list, source: str) -> str:
    """A YAML list of strings as one comma-separated string; ConfigError naming the entry."""
    for number, item in enumerate(items, 1):
        # The entry's value is not shown: a URL may hold a password.
        if not isinstance(item, str) or not item.strip() or "," in item:
            raise ConfigError(f"{source}: bad value for {key.name!r}: entry {number} of the "
                              "list is not a non-empty string without commas")
    return ",".join(item.strip() for item in items)


def _coerce(key: Key, value: Any, source: str) -> Any:
    try:
        if key.type is bool:
            if isinstance(value, bool):
                out = value
            elif str(value).strip().lower() in ("1", "true", "yes", "on"):
                out = True
            elif str(value).strip().lower() in ("0", "false", "no", "off"):
                out = False
            else:
                raise ValueError(value)
        elif key.type is int:
            if isinstance(value, bool):
                raise ValueError(value)
            out = int(value)
        else:
            if isinstance(value, list) and key.name in LIST_KEYS:
                value = _joined(key, value, source)
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            out = "" if value is None else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: bad value for {key.name!r}: expected {key.type.__name__}, "
                          f"got {value!r}") from None
    if key.check and not key.check(out):
        raise ConfigError(f"{source}: bad value for {key.name!r}: {out!r} ({key.help})")
    return out


def load(env: Mapping[str, str] | None = None, path: str | os.PathLike | None = None) -> Settings:
    """Read config.yml (if any) and the environment; raise ConfigError naming a bad key."""
    import yaml

    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources = {k.name: "default" for k in KEYS}
    explicit = path or env.get(CONFIG_ENV)
    cfg_path = Path(explicit) if explicit else Path("config.yml")
    if explicit and not cfg_path.is_file():
        raise ConfigError(f"{CONFIG_ENV}: configuration file {str(cfg_path)!r} does not exist")
    if cfg_path.is_file():
        try:
            loaded = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{cfg_path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{cfg_path}: must be a mapping of keys to values")
        for name, value in loaded.items():
            if name not in KEYS_BY_NAME:
                raise ConfigError(f"{cfg_path}: unknown configuration key {name!r}; known keys: "
                                  + ", ".join(KEYS_BY_NAME))
            values[name] = _coerce(KEYS_BY_NAME[name], value, str(cfg_path))
            sources[name] = str(cfg_path)
    env_names = {k.env: k for k in KEYS}
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var in NOT_CONFIG_ENV:
            continue
        key = env_names.get(var)
        if key is None:
            raise ConfigError(f"unknown environment variable {var}; known: "
                              + ", ".join(sorted(env_names)))
        values[key.name] = _coerce(key, raw, var)
        sources[key.name] = var
    if values.get("secret") and values.get("secret_file"):
        raise ConfigError("set only one of REACTOR_SECRET and REACTOR_SECRET_FILE")
    return Settings(**values, sources=sources)


def resolve_secret(settings: Settings, create_if_embedded: bool = True) -> str:
    """The token secret; the embedded mode creates a random one (mode 0600) in state_dir."""
    if settings.secret:
        secret = settings.secret
        source = "REACTOR_SECRET"
    elif settings.secret_file:
        p = Path(settings.secret_file).expanduser()
        try:
            secret = p.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"secret_file: cannot read {str(p)!r}: {exc.strerror}") from None
        source = f"secret_file {str(p)!r}"
    elif settings.embedded and create_if_embedded:
        p = settings.state_path / "secret"
        if not p.exists():
            settings.state_path.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(_secrets.token_hex(32))
        secret = p.read_text().strip()
        source = f"embedded secret file {str(p)!r}"
    else:
        raise ConfigError("no token secret configured: set REACTOR_SECRET_FILE (or REACTOR_SECRET)"
                          "; only the embedded SQLite mode generates one by itself")
    if len(secret.encode()) < 16:
        raise ConfigError(f"the token secret from {source} is shorter than 16 bytes")
    return secret
