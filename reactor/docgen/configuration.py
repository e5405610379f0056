"""``docs/configuration.md``, from ``reactor.config.KEYS`` and the variables of the actor mode."""
from __future__ import annotations

from typing import Any

import yaml

from . import NOTICE, md_cell
from .. import config
from ..contract.environment import MESSAGE_ID_VAR, MESSAGE_VAR
from ..contract.messages import PARAM_NAMES

_TYPE_NAMES = {str: "string", int: "integer", bool: "boolean", float: "number"}


def _default_text(key: config.Key) -> str:
    if key.type is bool:
        return f"`{str(key.default).lower()}`"
    if key.default == "":
        return "empty"
    return f"`{key.default}`"


def _yaml_value(value: Any) -> str:
    # The same text a user would write in config.yml (safe_dump quotes what needs quoting).
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def render_configuration() -> str:
    """``configuration.md``: every key of ``reactor.config.KEYS`` with its variable and default."""
    keys = config.KEYS
    lines = [
        "# Configuration reference",
        "",
        f"<!-- {NOTICE} Source: reactor/config.py, KEYS. -->",
        "",
        "Values come from three places; a later one wins:",
        "",
        "1. the defaults below;",
        f"2. `config.yml` in the working directory, or the file named by `{config.CONFIG_ENV}` "
        "(or `reactor --config PATH`);",
        f"3. environment variables: every key `k` can be set as `{config.ENV_PREFIX}<K>` "
        "(upper case).",
        "",
        "An unknown key (in the file, or a `REACTOR_*` variable that names no key) and a bad "
        "value stop start-up with an error that names the key. Booleans accept `true/false`, "
        "`yes/no`, `on/off` and `1/0`.",
        "",
        f"## Keys ({len(keys)})",
        "",
        "| Key | Environment variable | Type | Default | Meaning |",
        "|---|---|---|---|---|",
    ]
    for key in keys:
        type_name = _TYPE_NAMES.get(key.type, key.type.__name__)
        lines.append(f"| `{key.name}` | `{key.env}` | {type_name} | {_default_text(key)} | "
                     f"{md_cell(key.help)} |")
    lines += _secret_and_other_variables()
    lines += ["", "## `config.yml` with every default", "", "```yaml"]
    for key in keys:
        lines.append(f"# {key.help} ({key.env})")
        lines.append(f"{key.name}: {_yaml_value(key.default)}")
    lines += ["```", ""]
    return "\n".join(lines)


def _secret_and_other_variables() -> list[str]:
    lines = [
        "",
        "## The token secret",
        "",
        "Set exactly one of `secret` and `secret_file` (both at once is a start-up error); "
        "prefer `secret_file` (for example a mounted container secret), since environment "
        "variables leak into process listings and crash reports. The secret must be at least "
        "16 bytes. Only the embedded mode (no `store_uri`, so a SQLite file in `state_dir`) "
        "creates one by itself: a random secret in `state_dir/secret`, mode 0600. Job tokens "
        "and administrative tokens derive from it, so changing it invalidates every token "
        "handed out.",
        "",
        "## Environment variables that are not configuration keys",
        "",
        "| Variable | Used by |",
        "|---|---|",
    ]
    for var in sorted(config.NOT_CONFIG_ENV):
        if var == config.CONFIG_ENV:
            use = "the configuration loader: path of the configuration file (default `config.yml`)"
        else:
            use = "tools around the reactor (such as `scripts/services.sh`); ignored by the loader"
        lines.append(f"| `{var}` | {use} |")
    lines.append(f"| `{MESSAGE_VAR}` | `reactor invoke`: the message body (Abaco actor mode) |")
    params = ", ".join(f"`{p}`" for p in PARAM_NAMES)
    lines.append(f"| {params} | `reactor invoke`: message parameters (as an HTTP callback's "
                 "query parameters) |")
    lines.append(f"| `{MESSAGE_ID_VAR}` | `reactor invoke`: the message id used for duplicate "
                 "detection (default: a digest of body and parameters) |")
    return lines
