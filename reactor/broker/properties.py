"""AMQP message properties as plain dicts, and back: what the rest of the package sees of them."""
from __future__ import annotations

from typing import Any, Mapping

import pika

# AMQP property names copied from a delivery when it is forwarded (dead letter / delayed retry).
# ``expiration`` is left out (a forwarded copy must not expire on its own), and so is
# ``user_id`` (the broker checks it against the forwarding connection's user).
COPIED_PROPERTIES = ("content_type", "content_encoding", "priority", "correlation_id",
                     "reply_to", "message_id", "timestamp", "type", "app_id", "cluster_id")
# What a publish sends: the copied properties, the headers and the delivery mode.
PUBLISHED_PROPERTIES = COPIED_PROPERTIES + ("headers", "delivery_mode")


def properties_dict(props: Any) -> dict:
    """A pika ``BasicProperties`` as a plain dict (only the properties that are set)."""
    out = {}
    for name in COPIED_PROPERTIES + ("delivery_mode", "expiration", "user_id"):
        value = getattr(props, name, None)
        if value is not None:
            out[name] = value
    out["headers"] = dict(getattr(props, "headers", None) or {})
    return out


def published_values(props: Mapping[str, Any]) -> dict:
    """The properties of ``props`` that a publish sends (persistent unless it says otherwise)."""
    values = {k: v for k, v in props.items() if k in PUBLISHED_PROPERTIES}
    values.setdefault("delivery_mode", int(pika.DeliveryMode.Persistent.value))
    return values


def basic_properties(props: Mapping[str, Any]) -> pika.BasicProperties:
    """``BasicProperties`` from a plain dict (persistent unless it says otherwise)."""
    return pika.BasicProperties(**published_values(props))
