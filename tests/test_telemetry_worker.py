"""The outbox worker's span continues the trace of the web request that queued the message:
a real django-tasks-db worker (``manage.py db_worker``) and a "web" process, each with the
OpenTelemetry SDK writing its spans to a file (tests/otel_spans.py), the emulator as Graph."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from msgraph_mail.emulator import GraphEmulator

pytest.importorskip("django_tasks_db", reason="needs the tasks extra (django-tasks-db)")
pytest.importorskip("opentelemetry.sdk", reason="needs the test extra (opentelemetry-sdk)")

from tests.test_outbox_tasks_worker import (
    Worker,
    finished,
    migrated_env,
    queue,
    rows,
    running_worker,
    wait_for,
)

ADDRESS = re.compile(r"@(contoso|example)\.com", re.IGNORECASE)


@pytest.fixture(scope="module")
def graph() -> Iterator[GraphEmulator]:
    with GraphEmulator() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def env(graph: GraphEmulator, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("otel-outbox")
    spans_file = str(folder / "spans.jsonl")
    return migrated_env("tests.otel_outbox_settings", graph, folder, OTEL_SPANS_FILE=spans_file)


@pytest.fixture(scope="module")
def worker(env: dict[str, str]) -> Iterator[Worker]:
    yield from running_worker(env)


def spans(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["OTEL_SPANS_FILE"])
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_worker_span_continues_the_web_trace(graph, env, worker):
    report = queue(env, "Traced")
    [message_id] = report["message_ids"]
    wait_for(finished(env, [message_id]))
    assert rows(env, [message_id])[message_id]["status"] == "sent"

    def worker_done() -> bool:
        return any(
            s["name"] == "process outbox"
            and s["attributes"].get("messaging.message.id") == message_id
            for s in spans(env)
        )

    wait_for(worker_done)
    found = spans(env)
    [queued] = [
        s
        for s in found
        if s["name"] == "send outbox" and s["attributes"].get("messaging.message.id") == message_id
    ]
    [process] = [
        s
        for s in found
        if s["name"] == "process outbox"
        and s["attributes"].get("messaging.message.id") == message_id
    ]
    assert queued["pid"] != process["pid"]  # two processes
    assert queued["kind"] == "PRODUCER"
    assert queued["attributes"]["msgraph_mail.status"] == "queued"
    assert process["kind"] == "CONSUMER"
    assert process["trace_id"] == queued["trace_id"]
    assert process["parent_id"] == queued["span_id"]
    assert process["attributes"]["msgraph_mail.status"] == "sent"
    assert process["attributes"]["messaging.operation.type"] == "process"
    # The worker's Graph send is a child of its process span, its request a child of that.
    [send] = [s for s in found if s["name"] == "send" and s["parent_id"] == process["span_id"]]
    assert send["kind"] == "PRODUCER"
    assert send["attributes"]["msgraph_mail.status"] == "sent"
    requests = [s for s in found if s["parent_id"] == send["span_id"] and s["kind"] == "CLIENT"]
    assert [s["name"] for s in requests] == ["POST /users/{id}/sendMail"]
    [batch] = [s for s in found if s["span_id"] == queued["parent_id"]]
    assert batch["name"] == "send_messages"
    for span in found:
        for key, value in span["attributes"].items():
            assert not ADDRESS.search(str(value)), f"{span['name']}: {key} = {value}"
