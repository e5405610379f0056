"""Jobs and messages for the pipeline tests."""
from __future__ import annotations

import json

from reactor.engine.pipeline import Item


def new_job(jobs, **data) -> tuple[str, str]:
    """A new job (with ``data``); its uuid and token."""
    record, created = jobs.create(jobs.pipeline_uuid, data=data or {"n": 1})
    assert created
    return record["uuid"], jobs.authority.job_token(record["uuid"])


def send(pipeline, message, params=None, message_id=None):
    """The outcome of one message (a dict is sent as JSON) on its own: a list of one."""
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    [outcome] = pipeline.process([Item(body, message_id, params)])
    return outcome


def event(uuid, name, token, **extra) -> dict:
    """An event message."""
    return {"uuid": uuid, "name": name, "token": token, **extra}
