"""The caller-data rule (``reactor.domain.jsonvalues``): what every path stores, refused by name."""
from __future__ import annotations

import pytest

from reactor.domain.jsonvalues import NotJSON, check_json, check_text


@pytest.mark.parametrize("value, where", [
    ({"a": "\ud800"}, "data['a']"),
    ({"a": ["ok", {"b": "x\udcff"}]}, "data['a'][1]['b']"),
    ({"\udcff": 1}, "data"),
    ({"n": {"k\x00": 1}}, "data['n']"),
    ({"a": float("nan")}, "data['a']"),
    ({"a": 2 ** 63}, "data['a']"),
])
def test_unstorable_values_are_refused_naming_their_place(value, where):
    with pytest.raises(ValueError) as info:
        check_json(value)
    assert str(info.value).startswith(where)
    assert not isinstance(info.value, UnicodeError)


def test_a_nul_in_a_key_is_the_stores_to_keep_but_no_callers_to_send():
    """The store can keep it (escaped); the message contract refuses it, and so callers do."""
    assert check_json({"k\x00": 1}, nul_keys=True) == {"k\x00": 1}
    with pytest.raises(ValueError, match="NUL"):
        check_json({"k\x00": 1})


def test_valid_unicode_and_awkward_keys_pass():
    value = {"é✓ ключ": "😀", "$set": {"a.b": [1, 2.5, None, True]}, "": ""}
    assert check_json(value) is value


def test_non_json_types_are_both_type_and_value_errors():
    with pytest.raises(NotJSON):
        check_json({"a": {1, 2}})


@pytest.mark.parametrize("bad", ["x\udcff", "nul\x00", "\ud800"])
def test_check_text_refuses_what_no_store_can_keep(bad):
    with pytest.raises(ValueError, match="session must be valid Unicode"):
        check_text(bad, "session")


def test_check_text_wants_a_string():
    assert check_text("fine ✓", "agent") == "fine ✓"
    with pytest.raises(TypeError, match="agent must be a string"):
        check_text(5, "agent")
