"""Configuration (contract §7): config.yml + REACTOR_* variables; bad keys and values are named."""
from __future__ import annotations

import dataclasses
import os
import stat

import pytest

from reactor import config
from reactor.domain.errors import ConfigError


@pytest.fixture(autouse=True)
def _in_empty_dir(tmp_path, monkeypatch):
    """No stray config.yml from the repository; the environment is passed explicitly."""
    monkeypatch.chdir(tmp_path)


def _write(tmp_path, text: str):
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment():
    s = config.load(env={})
    assert s.store_uri == "" and s.embedded
    assert s.resolved_store_uri.startswith("sqlite:///") and s.resolved_store_uri.endswith(
        "reactor.db")
    assert s.token_length == 32 and s.admin_window == 3600
    assert s.sources["token_length"] == "default"


def test_file_values_and_environment_overrides(tmp_path):
    path = _write(tmp_path, "token_length: 40\nqueue: jobs.main\njournal: false\n")
    s = config.load(env={"REACTOR_TOKEN_LENGTH": "48"}, path=path)
    assert s.token_length == 48 and s.sources["token_length"] == "REACTOR_TOKEN_LENGTH"
    assert s.queue == "jobs.main" and s.sources["queue"] == str(path)
    assert s.journal is False


def test_reactor_config_variable_selects_the_file(tmp_path):
    other = tmp_path / "elsewhere.yml"
    other.write_text("prefetch: 7\n")
    assert config.load(env={"REACTOR_CONFIG": str(other)}).prefetch == 7


def test_config_yml_in_the_working_directory_is_read(tmp_path):
    _write(tmp_path, "prefetch: 9\n")
    assert config.load(env={}).prefetch == 9


def test_unknown_key_in_config_file_is_named(tmp_path):
    path = _write(tmp_path, "prefetch: 5\nprefech: 10\n")
    with pytest.raises(ConfigError) as info:
        config.load(env={}, path=path)
    assert "'prefech'" in str(info.value) and "unknown" in str(info.value)


def test_unknown_reactor_variable_is_named():
    with pytest.raises(ConfigError) as info:
        config.load(env={"REACTOR_STORE_URL": "mongodb://x/"})
    assert "REACTOR_STORE_URL" in str(info.value)


def test_unrelated_variables_are_ignored():
    assert config.load(env={"HOME": "/root", "MONGODB_URI": "x", "REACTORX": "1"}).prefetch == 100


@pytest.mark.parametrize("var, value, key", [
    ("REACTOR_PREFETCH", "many", "prefetch"),
    ("REACTOR_PREFETCH", "0", "prefetch"),
    ("REACTOR_JOURNAL", "maybe", "journal"),
    ("REACTOR_TOKEN_LENGTH", "8", "token_length"),
    ("REACTOR_QUEUE_TYPE", "stream", "queue_type"),
    ("REACTOR_LOG_LEVEL", "LOUD", "log_level"),
    ("REACTOR_ADMIN_WINDOW", "-5", "admin_window"),
])
def test_bad_environment_values_are_named(var, value, key):
    with pytest.raises(ConfigError) as info:
        config.load(env={var: value})
    assert f"'{key}'" in str(info.value) and var in str(info.value)


@pytest.mark.parametrize("text, key", [
    ("prefetch: [1, 2]\n", "prefetch"),
    ("journal: 3\n", "journal"),
    ("queue: {a: 1}\n", "queue"),
    ("max_attempts: true\n", "max_attempts"),
])
def test_bad_file_values_are_named(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(env={}, path=path)
    assert f"'{key}'" in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "key: [unclosed\n"])
def test_malformed_config_file_is_a_clear_error(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(env={}, path=path)
    assert str(path) in str(info.value)


def test_missing_explicit_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load(env={"REACTOR_CONFIG": str(tmp_path / "nope.yml")})
    assert "nope.yml" in str(info.value)


def test_secret_and_secret_file_together_are_refused(tmp_path):
    with pytest.raises(ConfigError):
        config.load(env={"REACTOR_SECRET": "s" * 20, "REACTOR_SECRET_FILE": str(tmp_path / "f")})


def test_missing_secret_for_a_mongodb_store_is_a_clear_error():
    s = config.load(env={"REACTOR_STORE_URI": "mongodb://127.0.0.1:1/x"})
    assert not s.embedded
    with pytest.raises(ConfigError) as info:
        config.resolve_secret(s)
    assert "REACTOR_SECRET_FILE" in str(info.value)


def test_secret_from_environment_and_from_file(tmp_path):
    env_secret = "e" * 24
    s = config.load(env={"REACTOR_SECRET": env_secret, "REACTOR_STORE_URI": "mongodb://h/x"})
    assert config.resolve_secret(s) == env_secret
    f = tmp_path / "secret.txt"
    f.write_text("f" * 24 + "\n")
    s = config.load(env={"REACTOR_SECRET_FILE": str(f), "REACTOR_STORE_URI": "mongodb://h/x"})
    assert config.resolve_secret(s) == "f" * 24


def test_unreadable_secret_file_and_short_secret_are_named(tmp_path):
    s = config.load(env={"REACTOR_SECRET_FILE": str(tmp_path / "absent")})
    with pytest.raises(ConfigError) as info:
        config.resolve_secret(s)
    assert "absent" in str(info.value)
    s = config.load(env={"REACTOR_SECRET": "short"})
    with pytest.raises(ConfigError) as info:
        config.resolve_secret(s)
    assert "16 bytes" in str(info.value)


def test_embedded_secret_is_created_once_with_mode_0600(tmp_path):
    state = tmp_path / "state"
    s = config.load(env={"REACTOR_STATE_DIR": str(state)})
    first = config.resolve_secret(s)
    path = state / "secret"
    assert path.is_file()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(first) >= 32
    assert config.resolve_secret(config.load(env={"REACTOR_STATE_DIR": str(state)})) == first


def test_embedded_secret_is_not_created_when_not_asked(tmp_path):
    s = config.load(env={"REACTOR_STATE_DIR": str(tmp_path / "st")})
    with pytest.raises(ConfigError):
        config.resolve_secret(s, create_if_embedded=False)
    assert not (tmp_path / "st" / "secret").exists()


def test_archive_root_defaults_below_state_dir(tmp_path):
    s = config.load(env={"REACTOR_STATE_DIR": str(tmp_path / "st")})
    assert s.resolved_archive_root == tmp_path / "st" / "archive"
    s = config.load(env={"REACTOR_ARCHIVE_ROOT": str(tmp_path / "arch")})
    assert s.resolved_archive_root == tmp_path / "arch"


def test_with_overrides_checks_keys_and_values():
    s = config.load(env={})
    assert s.with_overrides(prefetch="3").prefetch == 3
    with pytest.raises(ConfigError) as info:
        s.with_overrides(prefech=3)
    assert "'prefech'" in str(info.value)
    with pytest.raises(ConfigError):
        s.with_overrides(prefetch="lots")


def test_config_yml_shows_every_key_and_loads_as_the_defaults():
    """The shipped config.yml documents every key (commented out) and changes nothing."""
    from pathlib import Path

    from reactor import config

    text = (Path(__file__).resolve().parents[1] / "config.yml").read_text()
    missing = [k.name for k in config.KEYS if f"# {k.name}:" not in text]
    assert not missing, f"config.yml does not show these keys: {missing}"
    loaded = config.load({}, path=Path(__file__).resolve().parents[1] / "config.yml")
    assert dict(loaded.values) == {k.name: k.default for k in config.KEYS}


# --------------------------------------------------------------- several broker URLs, quorum
NODES = ["amqp://u:pw1@10.0.0.1:5672/%2F", "amqp://u:pw2@10.0.0.2:5672/%2F"]


def test_broker_url_as_a_yaml_list_reads_as_the_comma_separated_variable(tmp_path):
    path = _write(tmp_path, "broker_url:\n" + "".join(f"  - {u}\n" for u in NODES))
    from_file = config.load(env={}, path=path).broker_url
    from_env = config.load(env={"REACTOR_BROKER_URL": ",".join(NODES)}).broker_url
    assert from_file == from_env == ",".join(NODES)
    from reactor.broker.endpoints import broker_urls

    assert broker_urls(from_file) == NODES
    assert broker_urls(f" {NODES[0]} ,, {NODES[1]} ") == NODES


@pytest.mark.parametrize("entry", ["7", "''", "'amqp://a/,amqp://b/'"])
def test_a_bad_broker_url_list_entry_is_named_without_showing_the_urls(tmp_path, entry):
    path = _write(tmp_path, f"broker_url:\n  - {NODES[0]}\n  - {entry}\n")
    with pytest.raises(ConfigError) as info:
        config.load(env={}, path=path)
    assert "'broker_url'" in str(info.value) and "entry 2" in str(info.value)
    assert "pw1" not in str(info.value)


def test_quorum_topology_takes_its_delivery_limit_from_max_attempts():
    from reactor.broker.topology import Topology

    s = config.load(env={"REACTOR_QUEUE_TYPE": "quorum", "REACTOR_MAX_ATTEMPTS": "4"})
    topology = Topology.from_settings(s)
    assert topology.quorum and topology.delivery_limit == 3  # 1 delivery + 3 redeliveries
    assert not Topology.from_settings(config.load(env={})).quorum


# ------------------------------------------------------------------------- typed settings
def test_settings_fields_are_the_keys_with_their_types_and_defaults():
    import typing

    s = config.load(env={})
    hints = typing.get_type_hints(config.Settings)
    assert [k.name for k in config.KEYS] == [f.name for f in dataclasses.fields(s)
                                           if f.name != "sources"]
    for key in config.KEYS:
        assert hints[key.name] is key.type and type(getattr(s, key.name)) is key.type, key.name
    assert config.Settings() == s  # the defaults, whatever built them


def test_a_mistyped_setting_is_an_attribute_error_at_once():
    s = config.load(env={})
    with pytest.raises(AttributeError):
        s.prefech  # noqa: B018
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.prefetch = 3  # type: ignore[misc]


@pytest.mark.parametrize("values", [{"prefetch": 0}, {"prefetch": "3"}, {"journal": 1},
                                    {"queue_type": "stream"}, {"max_attempts": True}])
def test_settings_built_directly_are_checked_like_loaded_ones(values):
    (name,) = values
    with pytest.raises(ConfigError) as info:
        config.Settings(**values)
    assert f"'{name}'" in str(info.value)


def test_settings_repr_masks_the_secret_and_url_passwords():
    s = config.load(env={"REACTOR_SECRET": "s3cr3t-" * 4,
                         "REACTOR_BROKER_URL": ",".join(NODES),
                         "REACTOR_STORE_URI": "mongodb://app:st0re-pw@h1:27017,h2:27017/x",
                         "REACTOR_CALLBACK_URL": "https://hook:cb-pw@example.org/cb"})
    text = repr(s)
    for secret in ("s3cr3t-", "pw1", "pw2", "st0re-pw", "cb-pw"):
        assert secret not in text, secret
    assert "'secret': '***'" in text
    assert "amqp://u:***@10.0.0.1:5672/%2F,amqp://u:***@10.0.0.2:5672/%2F" in text
    assert "mongodb://app:***@h1:27017,h2:27017/x" in text
    assert "'queue': 'reactor.events'" in text  # the rest as it is


def test_overrides_keep_the_sources_and_are_typed(tmp_path):
    path = _write(tmp_path, "prefetch: 9\n")
    s = config.load(env={}, path=path).with_overrides(prefetch="12", journal="off")
    assert s.prefetch == 12 and s.journal is False
    assert s.sources["prefetch"] == str(path)
