"""OpenTelemetry: spans, their parents and attributes, metrics after a run with 429s, log
extras, and no address anywhere by default -- with the SDK's in-memory exporter and reader."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.mail import EmailMessage, get_connection
from django.test import override_settings

from msgraph_mail import signals, telemetry
from msgraph_mail.conf import MSGraphMailSettings, load_settings
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.emulator.directory import CLIENT_ID, CLIENT_SECRET, TENANT_ID
from msgraph_mail.graph import url_template
from msgraph_mail.limits import InProcessLimits, RedisLimits
from msgraph_mail.models import OutboxMessage
from msgraph_mail.outbox.envelope import Envelope
from msgraph_mail.tracking.events import DeliveryEvent
from msgraph_mail.tracking.tracker import Tracker
from tests.conftest import mode_settings
from tests.helpers import DUMMY, IMMEDIATE, QUEUED

pytest.importorskip("opentelemetry.sdk", reason="needs the test extra (opentelemetry-sdk)")

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

ROOT = Path(__file__).resolve().parent.parent
ADDRESS = re.compile(r"@(contoso|example)\.com", re.IGNORECASE)
EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader()


class Switched(SimpleSpanProcessor):
    """Exports only while a test of this module runs: the rest of the suite, which runs
    with this provider once it is set, does not fill the exporter."""

    on = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            super().on_end(span)


PROCESSOR = Switched(EXPORTER)


@pytest.fixture(scope="module", autouse=True)
def _providers() -> None:
    """The process's providers (they can be set once): ours, or ours added to the ones set."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not getattr(PROCESSOR, "added", False):
        provider.add_span_processor(PROCESSOR)
        PROCESSOR.added = True  # type: ignore[attr-defined]
    if not isinstance(metrics.get_meter_provider(), MeterProvider):
        metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    PROCESSOR.on = True
    yield EXPORTER
    PROCESSOR.on = False
    EXPORTER.clear()


def named(finished: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def children(finished: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [
        span
        for span in finished
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


def points(name: str) -> list[tuple[dict[str, Any], Any]]:
    """(attributes, data point) of one metric, from the reader."""
    data = READER.get_metrics_data()
    found = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
    return found


def no_address(values: Any) -> None:
    """No address of these tests (the senders and recipients are all at these domains)."""
    for key, value in dict(values or {}).items():
        assert not ADDRESS.search(str(value)), f"{key} holds an address: {value}"


def test_spans_of_a_batch(
    emulator: GraphEmulator, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        override_settings(MSGRAPH_MAIL=mode_settings(emulator, "permissive")),
        caplog.at_level(logging.DEBUG, "msgraph_mail"),
    ):
        messages = [
            EmailMessage(f"s{i}", "b", "noreply@contoso.com", [f"u{i}@example.com"])
            for i in range(3)
        ]
        assert get_connection().send_messages(messages) == 3
    finished = list(spans.get_finished_spans())
    [batch] = named(finished, "send_messages")
    assert batch.attributes["messaging.batch.message_count"] == 3
    sends = named(finished, "send")
    assert len(sends) == 3
    for send in sends:
        assert send.kind is SpanKind.PRODUCER
        assert send.parent is not None
        assert send.parent.span_id == batch.context.span_id
        attributes = send.attributes or {}
        assert attributes["messaging.system"] == "microsoft_graph"
        assert attributes["messaging.operation.type"] == "send"
        assert attributes["msgraph_mail.status"] == "sent"
        assert attributes["msgraph_mail.route"] == "sendMail"
        assert attributes["msgraph_mail.mode"] == "permissive"
        assert attributes["msgraph_mail.request_id"]
        assert attributes["messaging.message.id"].startswith("<")
        mailbox = emulator.sent[0].mailbox
        assert attributes["msgraph_mail.mailbox"] == mailbox.id
    # One HTTP span per request: the token, one lookup, three sendMails.
    http = [span for span in finished if span.kind is SpanKind.CLIENT]
    assert len(http) == emulator.count() == 5
    assert sorted(span.name for span in http) == [
        "GET /users",
        "POST /users/{id}/sendMail",
        "POST /users/{id}/sendMail",
        "POST /users/{id}/sendMail",
        "POST /{tenant}/oauth2/v2.0/token",
    ]
    [token] = named(finished, "msgraph_mail token")
    [lookup] = named(finished, "msgraph_mail sender lookup")
    assert token.attributes["msgraph_mail.token.source"] == "entra"
    assert lookup.attributes["msgraph_mail.lookup.source"] == "directory"
    for send in sends:  # each request under its message, the token and lookup under one
        [request] = [s for s in children(finished, send) if s.kind is SpanKind.CLIENT]
        assert request.attributes["http.response.status_code"] == 202
    assert {span.context.trace_id for span in finished} == {batch.context.trace_id}
    for span in finished:
        no_address(span.attributes)
    secret = str(mode_settings(emulator, "permissive")["CLIENT_SECRET"])
    for span in finished:  # never a credential
        text = str(dict(span.attributes or {}))
        assert secret not in text
        assert "Bearer" not in text
        assert "eyJ" not in text
    assert len(caplog.records) >= 3
    for record in caplog.records:  # every record has the fields, none an address
        fields = {k: v for k, v in vars(record).items() if k.startswith("msgraph_")}
        assert {"msgraph_request_id", "msgraph_mailbox", "msgraph_status", "msgraph_route"} <= set(
            fields
        )
        no_address(fields)


def test_a_celery_task_span_is_linked(emulator: GraphEmulator, spans: InMemorySpanExporter) -> None:
    with trace.get_tracer("web").start_as_current_span("web request"):
        carrier = telemetry.carrier()
    assert carrier is not None
    settings = MSGraphMailSettings(
        tenant_id=TENANT_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    )
    with (
        trace.get_tracer("celery").start_as_current_span("run task") as task,
        telemetry.operation("process outbox", settings, kind="consumer", parent=carrier),
    ):
        pass
    [process] = named(list(spans.get_finished_spans()), "process outbox")
    [web] = named(list(spans.get_finished_spans()), "web request")
    assert process.parent is not None
    assert process.parent.span_id == web.context.span_id
    assert [link.context.span_id for link in process.links] == [task.get_span_context().span_id]


def test_no_address_in_single_mailbox_mode_unless_opted_in(
    emulator: GraphEmulator, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    settings = mode_settings(emulator, "single_mailbox")
    message = EmailMessage("s", "b", "noreply@contoso.com", ["alice@contoso.com"])
    with override_settings(MSGRAPH_MAIL=settings), caplog.at_level(logging.INFO, "msgraph_mail"):
        assert get_connection().send_messages([message]) == 1
    finished = list(spans.get_finished_spans())
    for span in finished:
        no_address(span.attributes)
    [send] = named(finished, "send")
    assert send.attributes["msgraph_mail.mailbox"].startswith("sha256:")
    [record] = [r for r in caplog.records if r.getMessage().startswith("Sent message")]
    assert record.msgraph_mailbox == send.attributes["msgraph_mail.mailbox"]
    assert record.msgraph_trace_id == format(send.context.trace_id, "032x")
    assert record.msgraph_span_id == format(send.context.span_id, "016x")
    assert record.msgraph_status == "sent"
    assert record.msgraph_route == "sendMail"
    assert record.msgraph_request_id == send.attributes["msgraph_mail.request_id"]

    spans.clear()
    caplog.clear()
    settings["TELEMETRY_ADDRESSES"] = True
    message = EmailMessage("s", "b", "noreply@contoso.com", ["alice@contoso.com"])
    with override_settings(MSGRAPH_MAIL=settings), caplog.at_level(logging.INFO, "msgraph_mail"):
        assert get_connection().send_messages([message]) == 1
    [send] = named(list(spans.get_finished_spans()), "send")
    assert send.attributes["msgraph_mail.mailbox.address"] == "noreply@contoso.com"
    [record] = [r for r in caplog.records if r.getMessage().startswith("Sent message")]
    assert record.msgraph_mailbox == "noreply@contoso.com"


def test_failure_sets_error_without_message(
    emulator: GraphEmulator, spans: InMemorySpanExporter
) -> None:
    with override_settings(MSGRAPH_MAIL=mode_settings(emulator, "permissive")):
        message = EmailMessage("s", "b", "nobody@contoso.com", ["alice@contoso.com"])
        assert get_connection(fail_silently=True).send_messages([message]) == 0
    [send] = named(list(spans.get_finished_spans()), "send")
    assert send.status.status_code.name == "ERROR"
    assert send.attributes["error.type"] == "SenderNotFound"
    assert send.attributes["msgraph_mail.status"] == "failed"
    assert not send.events  # no exception event: its message names the address
    assert "@" not in (send.status.description or "")


def test_metrics_after_a_run_with_429s(
    emulator: GraphEmulator, spans: InMemorySpanExporter
) -> None:
    before = {
        name: {tuple(sorted(a.items())): p.value for a, p in points(name)}
        for name in ("msgraph_mail.messages", "msgraph_mail.retries")
    }
    with override_settings(MSGRAPH_MAIL=mode_settings(emulator, "permissive")):
        emulator.fail_next("throttle", times=2, retry_after=0.05)
        messages = [
            EmailMessage(f"s{i}", "b", "noreply@contoso.com", ["alice@contoso.com"])
            for i in range(3)
        ]
        assert get_connection().send_messages(messages) == 3

    def delta(name: str, **wanted: Any) -> float:
        total = 0.0
        for attributes, point in points(name):
            if all(attributes.get(k) == v for k, v in wanted.items()):
                key = tuple(sorted(attributes.items()))
                total += point.value - before.get(name, {}).get(key, 0)
        return total

    assert delta("msgraph_mail.messages", **{"msgraph_mail.outcome": "sent"}) == 3
    assert (
        delta(
            "msgraph_mail.retries",
            **{"msgraph_mail.retry.reason": "throttled", "http.response.status_code": 429},
        )
        == 2
    )
    durations = [
        p
        for a, p in points("messaging.client.operation.duration")
        if a.get("msgraph_mail.outcome") == "sent" and a.get("msgraph_mail.route") == "sendMail"
    ]
    assert durations
    assert sum(p.count for p in durations) >= 3
    finished = list(spans.get_finished_spans())
    counts = [s.attributes.get("msgraph_mail.retry_count", 0) for s in named(finished, "send")]
    assert sum(counts) == 2  # the two 429s, on whichever messages met them
    retries = named(finished, "msgraph_mail retry")
    assert len(retries) == 2
    assert {s.attributes["msgraph_mail.retry.reason"] for s in retries} == {"throttled"}
    assert all(s.attributes["msgraph_mail.retry.wait"] == pytest.approx(0.05) for s in retries)
    # The budget gauges read the limits store: three sendMails and their recipients.
    mailbox = emulator.sent[0].mailbox.id
    used = {
        a["msgraph_mail.limits.budget"]: p.value
        for a, p in points("msgraph_mail.mailbox.budget.used")
        if a["msgraph_mail.mailbox"] == mailbox
    }
    assert used["REQUESTS_PER_10_MINUTES"] >= 5  # three sends and two refused tries
    assert used["RECIPIENTS_PER_24_HOURS"] >= 3
    limits = {
        a["msgraph_mail.limits.budget"]: p.value
        for a, p in points("msgraph_mail.mailbox.budget.limit")
        if a["msgraph_mail.mailbox"] == mailbox
    }
    assert limits["REQUESTS_PER_10_MINUTES"] == 10_000


def test_requests_instrumentation_never_makes_a_second_span(
    emulator: GraphEmulator, spans: InMemorySpanExporter
) -> None:
    instrumentation = pytest.importorskip("opentelemetry.instrumentation.requests")
    instrumentor = instrumentation.RequestsInstrumentor()
    instrumentor.instrument()
    try:
        with override_settings(MSGRAPH_MAIL=mode_settings(emulator, "permissive")):
            message = EmailMessage("s", "b", "noreply@contoso.com", ["alice@contoso.com"])
            assert get_connection().send_messages([message]) == 1
        finished = list(spans.get_finished_spans())
        http = [span for span in finished if span.kind is SpanKind.CLIENT]
        assert len(http) == emulator.count() == 3
        assert all(span.instrumentation_scope.name == "msgraph_mail" for span in http)
        for span in finished:
            no_address(span.attributes)
            assert "url.full" not in (span.attributes or {})
        # Other requests of the process are still the instrumentation's.
        spans.clear()
        requests.get(f"{emulator.url}/v1.0/$metadata", timeout=5)
        [other] = spans.get_finished_spans()
        assert other.instrumentation_scope.name.startswith("opentelemetry.instrumentation")
    finally:
        instrumentor.uninstrument()


def test_url_templates_hold_no_identifier() -> None:
    assert url_template("/users/a@b.com/sendMail") == "/users/{id}/sendMail"
    assert url_template("/users('$x@y.com')/sendMail") == "/users/{id}/sendMail"
    assert url_template("/users?$filter=mail eq 'a@b.com'") == "/users"
    assert (
        url_template("/users/1/messages/AAMk=/attachments/createUploadSession")
        == "/users/{id}/messages/{id}/attachments/createUploadSession"
    )
    assert url_template("/users/1/messages/AAMk=/send") == "/users/{id}/messages/{id}/send"


def test_old_envelopes_load_without_trace_context() -> None:
    data = {
        "message_id": "<a@b>",
        "mime": "",
        "from_address": "noreply@contoso.com",
        "mailbox_override": None,
        "recipients": 1,
        "alias": None,
        "priority": "normal",
        "enqueued_at": "2026-01-01T00:00:00+00:00",
    }
    assert Envelope.from_dict(data).trace_context is None


def test_carrier_is_none_without_a_span() -> None:
    assert telemetry.carrier() is None
    with trace.get_tracer("t").start_as_current_span("x") as span:
        carrier = telemetry.carrier()
    assert carrier is not None
    assert carrier["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")


def _logger_calls() -> Iterator[tuple[Path, ast.Call]]:
    for path in sorted((ROOT / "msgraph_mail").rglob("*.py")):
        if "emulator" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"debug", "info", "warning", "error", "exception", "critical"}
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in {"logger", "log"}
            ):
                yield path, node


def test_every_log_call_has_extra() -> None:
    missing = [
        f"{path.relative_to(ROOT)}:{call.lineno}"
        for path, call in _logger_calls()
        if not any(keyword.arg == "extra" for keyword in call.keywords)
    ]
    assert list(_logger_calls())
    assert not missing, f"logger calls without extra=: {missing}"


def test_log_extra_fields() -> None:
    extra = telemetry.log_extra(request_id="r", mailbox="id-1", status="sent", route="draft")
    assert extra == {
        "msgraph_request_id": "r",
        "msgraph_mailbox": "id-1",
        "msgraph_status": "sent",
        "msgraph_route": "draft",
    }
    assert telemetry.log_extra(mailbox="a@b.com")["msgraph_mailbox"].startswith("sha256:")


def counter_total(name: str, **wanted: Any) -> float:
    return sum(
        p.value
        for a, p in points(name)
        if all(a.get(key) == value for key, value in wanted.items())
    )


@pytest.mark.django_db
def test_queued_message_trace_continues_in_the_worker_and_outbox_depth(
    emulator: GraphEmulator, spans: InMemorySpanExporter
) -> None:
    settings = mode_settings(emulator, "permissive")
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=DUMMY, MSGRAPH_MAIL=settings):
        messages = [
            EmailMessage(f"q{i}", "b", "noreply@contoso.com", ["a@example.com"]) for i in range(2)
        ]
        assert get_connection().send_messages(messages) == 2
        depth = {
            a["msgraph_mail.outbox.status"]: p.value
            for a, p in points("msgraph_mail.outbox.depth")
            if a["msgraph_mail.outbox"] == "tasks"
        }
        assert depth["queued"] == 2
        assert depth["sent"] == 0
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=IMMEDIATE, MSGRAPH_MAIL=settings):
        message = EmailMessage("q", "b", "noreply@contoso.com", ["a@example.com"])
        assert get_connection().send_messages([message]) == 1
        depth = {
            a["msgraph_mail.outbox.status"]: p.value
            for a, p in points("msgraph_mail.outbox.depth")
            if a["msgraph_mail.outbox"] == "tasks"
        }
        assert depth["sent"] == 1
    finished = list(spans.get_finished_spans())
    message_id = message.msgraph_status.message_id
    [queued] = [
        s
        for s in named(finished, "send outbox")
        if s.attributes["messaging.message.id"] == message_id
    ]
    [process] = named(finished, "process outbox")
    assert queued.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is not None
    assert process.parent.span_id == queued.context.span_id
    assert process.attributes["msgraph_mail.status"] == "sent"
    assert process.attributes["msgraph_mail.outbox.attempt"] == 1
    [send] = children(finished, process)
    assert (send.name, send.kind) == ("send", SpanKind.PRODUCER)
    stored = OutboxMessage.objects.get(message_id=message_id)
    assert json.loads(stored.envelope)["trace_context"]["traceparent"].split("-")[1] == format(
        queued.context.trace_id, "032x"
    )


def test_draft_steps_have_spans(emulator: GraphEmulator, spans: InMemorySpanExporter) -> None:
    emulator.roles = ["Mail.Send", "User.Read.All", "Mail.ReadWrite"]
    with override_settings(MSGRAPH_MAIL=emulator.settings(LARGE_MESSAGES=True)):
        message = EmailMessage("big", "b", "noreply@contoso.com", ["alice@contoso.com"])
        message.attach("report.pdf", os.urandom(4 * 1024 * 1024), "application/pdf")
        assert message.send() == 1
    finished = list(spans.get_finished_spans())
    [send] = named(finished, "send")
    assert send.attributes["msgraph_mail.route"] == "draft"
    steps = [s.name for s in children(finished, send) if s.name.startswith("msgraph_mail draft")]
    assert steps == [
        "msgraph_mail draft create",
        "msgraph_mail draft upload",
        "msgraph_mail draft send",
    ]
    [upload] = named(finished, "msgraph_mail draft upload")
    assert upload.attributes["msgraph_mail.attachment.size"] == 4 * 1024 * 1024
    chunks = [s for s in children(finished, upload) if s.kind is SpanKind.CLIENT]
    assert {s.name for s in chunks} >= {"PUT /upload-session"}
    assert all("url.full" not in (s.attributes or {}) for s in finished)


@pytest.mark.parametrize("store", ["process", "redis"])
def test_waits_for_a_budget_and_a_slot(
    spans: InMemorySpanExporter, store: str, request: pytest.FixtureRequest
) -> None:
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else None
    settings = MSGraphMailSettings(
        tenant_id=TENANT_ID,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redis_url=redis_url,
        mailbox_limits={"REQUESTS_PER_10_MINUTES": 1, "CONCURRENT_REQUESTS": 1},
    )
    kind = RedisLimits if redis_url else InProcessLimits
    limits = kind(settings, window_scale=0.0002)  # 10 minutes: 0.12 s
    mailbox = f"telemetry-wait-{uuid.uuid4().hex}"
    before = counter_count("msgraph_mail.limits.wait.duration")
    limits.spend(mailbox, requests=1, recipients=0, upload_bytes=0)
    limits.spend(mailbox, requests=1, recipients=0, upload_bytes=0, max_wait=5)
    held = threading.Event()

    def hold() -> None:
        with limits.hold(mailbox):
            held.set()
            time.sleep(0.1)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    with limits.hold(mailbox):
        pass
    thread.join()
    finished = list(spans.get_finished_spans())
    [budget] = named(finished, "msgraph_mail wait budget")
    assert budget.attributes["msgraph_mail.limits.budget"] == "REQUESTS_PER_10_MINUTES"
    [slot] = named(finished, "msgraph_mail wait slot")
    assert slot.attributes["msgraph_mail.limits.budget"] == "CONCURRENT_REQUESTS"
    assert (slot.end_time - slot.start_time) / 1e9 > 0.02
    assert counter_count("msgraph_mail.limits.wait.duration") - before == 2


def counter_count(name: str) -> int:
    """How many values a histogram has recorded, over all its attributes."""
    return sum(p.count for _, p in points(name))


def test_delivery_events_are_counted() -> None:
    before = counter_total(
        "msgraph_mail.delivery.events", **{"msgraph_mail.delivery.event_type": "bounced"}
    )
    event = DeliveryEvent(
        event_type="bounced",
        recipient="x@example.com",
        timestamp=datetime.now(timezone.utc),
        source="bounces",
    )
    signals.announce_delivery(object, event)
    after = counter_total(
        "msgraph_mail.delivery.events", **{"msgraph_mail.delivery.event_type": "bounced"}
    )
    assert after - before == 1


NO_OTEL = """
import sys
if {absent!r}:
    sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
import django
from django.conf import settings
settings.configure(MSGRAPH_MAIL={settings!r})
django.setup()
from django.core.mail import EmailMessage
from msgraph_mail import telemetry
from msgraph_mail.backend import EmailBackend
assert telemetry.ENABLED is not {absent!r}
assert telemetry.active() is False
to = ["a@example.com"]
messages = [EmailMessage("s%d" % i, "b", "noreply@contoso.com", to) for i in range(3)]
assert EmailBackend().send_messages(messages) == 3
assert telemetry.carrier() is None
assert telemetry.span("x") is telemetry.NO_SPAN
print("ok")
"""


@pytest.mark.parametrize("absent", [True, False], ids=["without-api", "api-without-provider"])
def test_without_opentelemetry_everything_is_a_no_op(emulator: GraphEmulator, absent: bool) -> None:
    code = NO_OTEL.format(settings=mode_settings(emulator, "permissive"), absent=absent)
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert len(emulator.sent) == 3


@pytest.mark.django_db(transaction=True)
def test_a_tracker_pass_has_a_span_and_counts_its_events(
    emulator: GraphEmulator, spans: InMemorySpanExporter
) -> None:
    emulator.roles = ["Mail.Send", "User.Read.All", "Mail.Read", "ExchangeMessageTrace.Read.All"]
    emulator.delivery_delay = 0.05
    bounced = {"msgraph_mail.delivery.event_type": "bounced"}
    before = counter_total("msgraph_mail.delivery.events", **bounced)
    with override_settings(MSGRAPH_MAIL=emulator.settings(DELIVERY_TRACKING=["trace", "bounces"])):
        EmailMessage("Hi", "b", "noreply@contoso.com", ["ghost@nowhere.invalid"]).send()
        time.sleep(0.15)
        tracker = Tracker(load_settings())
        try:
            for _ in range(3):
                tracker.run_once()
        finally:
            tracker.close()
    assert counter_total("msgraph_mail.delivery.events", **bounced) - before == 1
    passes = named(list(spans.get_finished_spans()), "msgraph_mail track")
    assert len(passes) == 3
    assert sum(s.attributes["msgraph_mail.track.events"] for s in passes) >= 1
    for span in spans.get_finished_spans():
        no_address(span.attributes)
        assert "nowhere.invalid" not in str(dict(span.attributes or {}))
