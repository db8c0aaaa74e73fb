"""Spans, metrics and log fields for OpenTelemetry, from one small module that costs nothing
when it is off.

The package depends on ``opentelemetry-api`` only through the ``otel`` extra, and never on the
SDK: the application picks its provider and exporter. Without the API every helper here is a
no-op (:data:`ENABLED` is False, a shared do-nothing span); with the API but no provider
configured, every helper takes the same no-op path (:func:`active` is False until a provider is
set); with a provider, attributes are only built for a span that records.

What is measured (see docs/observability.md): a ``send_messages`` span per batch, a PRODUCER
``send`` span per message, a CLIENT span per HTTP request (our own: the requests
instrumentation is suppressed for our requests, so there is never a second span for one
request, and never a URL -- which may hold an address or an upload session's key -- in an
attribute), child spans for the token, the sender lookup, the draft steps, the waits for a
slot or a budget and the retries; the outbox worker's ``process outbox`` span continues the
trace of the request that queued the message (W3C trace context in the envelope).

No personal data by default: mailboxes are named by their directory id (an address used as an
id becomes a hash); ``TELEMETRY_ADDRESSES = True`` adds the sending mailbox's address.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .conf import MSGraphMailSettings

try:
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError:  # the otel extra is not installed: every helper is a no-op
    ENABLED = False
else:
    ENABLED = True

__all__ = [
    "ENABLED",
    "NO_OPERATION",
    "NO_SPAN",
    "Operation",
    "active",
    "batch",
    "carrier",
    "count_delivery_event",
    "count_message",
    "count_retry",
    "describe_mailbox",
    "failed",
    "http_span",
    "log_extra",
    "mailbox_label",
    "note_retries",
    "operation",
    "record_wait",
    "retrying",
    "span",
    "waited",
    "watch_mailbox",
    "watch_outbox",
]

logger = logging.getLogger("msgraph_mail")

#: The instrumentation scope of every span and metric.
SCOPE = "msgraph_mail"
#: ``messaging.system``: Exchange Online's mail, reached through Microsoft Graph.
SYSTEM = "microsoft_graph"


#: The providers of a process where none was set: the API's stand-ins.
_UNSET = frozenset(
    {"ProxyTracerProvider", "NoOpTracerProvider", "_ProxyMeterProvider", "NoOpMeterProvider"}
)
_active = False


def active() -> bool:
    """Whether telemetry is recorded: the API is installed and the application has set a
    tracer or meter provider. Until then every helper takes the no-op path, as without the
    API; once set, a provider stays (the API sets it once per process), and so does this."""
    global _active
    if _active or not ENABLED:
        return _active
    _active = (
        type(trace.get_tracer_provider()).__name__ not in _UNSET
        or type(metrics.get_meter_provider()).__name__ not in _UNSET
    )
    return _active


class _NoSpan:
    """What a helper yields when OpenTelemetry is absent: a span that records nothing."""

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass


#: The one do-nothing span (and context manager) of the process.
NO_SPAN = _NoSpan()


def _version() -> str:
    from . import __version__

    return __version__


_tracers: list[Any] = []


def _tracer() -> Any:
    """The package's tracer, made once: the SDK makes a new one per call, and the global
    provider cannot change once set (a proxy tracer follows a provider set later)."""
    if not _tracers:
        _tracers.append(trace.get_tracer(SCOPE, _version()))
    return _tracers[0]


_KINDS: dict[str, Any] = (
    {
        "internal": SpanKind.INTERNAL,
        "producer": SpanKind.PRODUCER,
        "consumer": SpanKind.CONSUMER,
        "client": SpanKind.CLIENT,
    }
    if ENABLED
    else {}
)


def span(
    name: str,
    *,
    kind: str = "internal",
    parent: Mapping[str, str] | None = None,
) -> AbstractContextManager[Any]:
    """A span around the block, current inside it; errors set its status, never a message.

    Exceptions are not recorded as events: their messages may name addresses. ``parent``
    is a W3C trace-context carrier (an envelope's), continued instead of the current span.
    """
    if not active():
        return NO_SPAN
    return _span(name, _KINDS[kind], parent)


@contextmanager
def _span(name: str, kind: Any, parent: Mapping[str, str] | None) -> Iterator[Any]:
    context, links = None, None
    if parent:
        # The queuing request's trace is continued; the span this process was in (a Celery
        # task's, from its own instrumentation) is linked, not lost.
        context = propagate.extract(dict(parent))
        here = trace.get_current_span().get_span_context()
        links = [Link(here)] if here.is_valid else None
    with _tracer().start_as_current_span(
        name,
        context=context,
        kind=kind,
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            failed(current, exc)
            raise


def failed(current: Any, exc: BaseException) -> None:
    """Mark a span failed: ``error.type`` (the exception's class), Graph's error code and
    HTTP status; the message stays out (it may name an address)."""
    if not current.is_recording():
        return
    current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    current.set_attribute("error.type", type(exc).__name__)
    code = getattr(exc, "code", None)
    if code:
        current.set_attribute("msgraph_mail.error.code", str(code))
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        current.set_attribute("http.response.status_code", status)
    request_id = getattr(exc, "request_id", None)
    if request_id:
        current.set_attribute("msgraph_mail.request_id", str(request_id))


def batch(count: int, backend: str) -> AbstractContextManager[Any]:
    """``send_messages``: the parent of one batch's message spans."""
    if not active():
        return NO_SPAN
    return _batch(count, backend)


@contextmanager
def _batch(count: int, backend: str) -> Iterator[Any]:
    with _span("send_messages", SpanKind.INTERNAL, None) as current:
        if current.is_recording():
            current.set_attributes(
                {
                    "messaging.system": SYSTEM,
                    "messaging.operation.name": "send_messages",
                    "messaging.operation.type": "send",
                    "messaging.batch.message_count": count,
                    "msgraph_mail.backend": backend,
                }
            )
        yield current


class Operation:
    """One message's send (or outbox step): its span, and the duration metric on exit."""

    __slots__ = ("outcome", "route", "span", "started")

    def __init__(self, current: Any) -> None:
        self.span = current
        self.started = time.perf_counter()
        self.outcome = "failed"
        self.route: str | None = None

    def set(self, key: str, value: Any) -> None:
        """One attribute, when the span records and the value is known."""
        if value is not None and self.span.is_recording():
            self.span.set_attribute(key, value)


def operation(
    name: str,
    settings: MSGraphMailSettings,
    *,
    kind: str = "producer",
    operation_type: str = "send",
    destination: str | None = None,
    parent: Mapping[str, str] | None = None,
) -> AbstractContextManager[Operation]:
    """The span of one message's ``send`` (PRODUCER) or the worker's ``process outbox``
    (CONSUMER), with the messaging attributes; records ``messaging.client.operation.duration``
    by route and outcome (``op.route``, ``op.outcome``) when the block ends."""
    if not active():
        return NO_OPERATION
    return _operation(name, settings, kind, operation_type, destination, parent)


@contextmanager
def _operation(
    name: str,
    settings: MSGraphMailSettings,
    kind: str,
    operation_type: str,
    destination: str | None,
    parent: Mapping[str, str] | None,
) -> Iterator[Operation]:
    with _span(name, _KINDS[kind], parent) as current:
        op = Operation(current)
        if current.is_recording():
            current.set_attributes(
                {
                    "messaging.system": SYSTEM,
                    "messaging.operation.name": name.split()[0],
                    "messaging.operation.type": operation_type,
                    "msgraph_mail.mode": settings.mode,
                }
            )
            if destination is not None:
                current.set_attribute("messaging.destination.name", destination)
        try:
            yield op
        except BaseException as exc:
            _record_duration(op, name, type(exc).__name__)
            raise
        op.set("msgraph_mail.status", op.outcome)
        op.set("msgraph_mail.route", op.route)
        _record_duration(op, name, None)


class _NoOperation(Operation):
    """The operation of a process without OpenTelemetry: a context manager doing nothing."""

    def set(self, key: str, value: Any) -> None:
        pass

    def __enter__(self) -> Operation:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NO_OPERATION = _NoOperation(NO_SPAN)


def _record_duration(op: Operation, name: str, error: str | None) -> None:
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": name.split()[0],
        "msgraph_mail.outcome": op.outcome,
    }
    if op.route:
        attributes["msgraph_mail.route"] = op.route
    if error:
        attributes["error.type"] = error
    _instruments().duration.record(time.perf_counter() - op.started, attributes)


# -- requests --------------------------------------------------------------------------


def http_span(method: str, template: str, server: str | None = None) -> AbstractContextManager[Any]:
    """A CLIENT span for one HTTP request we make; the requests instrumentation, when it is
    active, is suppressed inside it so that one request never has two spans.

    ``template`` is the path with its identifiers replaced (``/users/{id}/sendMail``): never
    the URL, whose path or query may hold an address (a lookup's ``$filter``, a mailbox
    named by its address) or a key (an upload session's URL).
    """
    if not active():
        return NO_SPAN
    return _http_span(method, template, server)


@contextmanager
def _http_span(method: str, template: str, server: str | None) -> Iterator[Any]:
    with _span(f"{method} {template}", SpanKind.CLIENT, None) as current:
        if current.is_recording():
            current.set_attributes({"http.request.method": method, "url.template": template})
            if server:
                current.set_attribute("server.address", server)
        with _suppressed_http():
            yield current


def answered(current: Any, status: int, headers: Mapping[str, str] | None = None) -> None:
    """Put an HTTP answer on its span: status, Graph's request-id; 4xx/5xx as errors."""
    if not current.is_recording():
        return
    current.set_attribute("http.response.status_code", status)
    request_id = headers.get("request-id") if headers is not None else None
    if request_id:
        current.set_attribute("msgraph_mail.request_id", request_id)
    if status >= 400:
        current.set_status(Status(StatusCode.ERROR))
        current.set_attribute("error.type", str(status))


_suppress: Callable[[], AbstractContextManager[Any]] | None = None


def _suppressed_http() -> AbstractContextManager[Any]:
    """opentelemetry-instrumentation's own switch for HTTP spans, when it is installed."""
    global _suppress
    if _suppress is None:
        try:
            from opentelemetry.instrumentation.utils import (  # type: ignore[import-not-found,unused-ignore]
                suppress_http_instrumentation,
            )
        except ImportError:
            _suppress = nullcontext
        else:
            _suppress = suppress_http_instrumentation
    return _suppress()


# -- waits and retries -------------------------------------------------------------------


@contextmanager
def waited(kind: str, budget: str) -> Iterator[None]:
    """A wait for a mailbox's slot or budget (``kind`` "slot" or "budget"): a span, and the
    seconds in ``msgraph_mail.limits.wait.duration``."""
    if not active():
        yield
        return
    started = time.perf_counter()
    with _span(f"msgraph_mail wait {kind}", SpanKind.INTERNAL, None) as current:
        if current.is_recording():
            current.set_attribute("msgraph_mail.limits.budget", budget)
        try:
            yield
        finally:
            _instruments().limits_wait.record(
                time.perf_counter() - started, {"msgraph_mail.limits.budget": budget}
            )


def record_wait(kind: str, budget: str, started_ns: int) -> None:
    """A wait that is known only once it is over (a slot taken after polling): its span,
    dated from ``started_ns`` (``time.time_ns()``), and its seconds."""
    if not active():
        return
    ended = time.time_ns()
    current = _tracer().start_span(
        f"msgraph_mail wait {kind}", kind=SpanKind.INTERNAL, start_time=started_ns
    )
    if current.is_recording():
        current.set_attribute("msgraph_mail.limits.budget", budget)
    current.end(end_time=ended)
    _instruments().limits_wait.record(
        (ended - started_ns) / 1e9, {"msgraph_mail.limits.budget": budget}
    )


def note_retries(count: int) -> None:
    """``msgraph_mail.retry_count`` on the current span (a message's ``send``, a draft
    step): how many times its Graph request was tried again."""
    if count and active():
        current = trace.get_current_span()
        if current.is_recording():
            current.set_attribute("msgraph_mail.retry_count", count)


def retry_reason(status: int | None, code: str | None = None) -> str:
    """Why a request is tried again, as a low-cardinality word."""
    if status == 429:
        return "throttled"
    if status == 401:
        return "token_rejected"
    if status is not None and status >= 500:
        return "server_error"
    return code or "connection"


def count_retry(target: str, reason: str, status: int | None) -> dict[str, Any] | None:
    """``msgraph_mail.retries``: one request of ``target`` (graph, token, upload) is tried
    again for ``reason``; returns the attributes, for the wait's span."""
    if not active():
        return None
    attributes: dict[str, Any] = {
        "msgraph_mail.retry.reason": reason,
        "msgraph_mail.retry.target": target,
    }
    if status is not None:
        attributes["http.response.status_code"] = status
    _instruments().retries.add(1, attributes)
    return attributes


def retrying(
    target: str, reason: str, status: int | None, wait: float
) -> AbstractContextManager[Any]:
    """The wait before a retry: counted (:func:`count_retry`), in a ``msgraph_mail retry``
    span with its reason and seconds."""
    attributes = count_retry(target, reason, status)
    if attributes is None:
        return NO_SPAN
    return _retry_span(attributes, wait)


@contextmanager
def _retry_span(attributes: dict[str, Any], wait: float) -> Iterator[Any]:
    with _span("msgraph_mail retry", SpanKind.INTERNAL, None) as current:
        if current.is_recording():
            current.set_attributes({**attributes, "msgraph_mail.retry.wait": wait})
        yield current


# -- messages, propagation ---------------------------------------------------------------


def count_message(outcome: str, route: str | None) -> None:
    """``msgraph_mail.messages``: one message reached ``outcome`` (sent, failed, unknown,
    queued), counted where its signal is sent."""
    if not active():
        return
    attributes = {"msgraph_mail.outcome": outcome}
    if route:
        attributes["msgraph_mail.route"] = route
    _instruments().messages.add(1, attributes)


def count_delivery_event(event_type: str) -> None:
    """``msgraph_mail.delivery.events``: what delivery tracking learnt after the 202."""
    if active():
        _instruments().delivery_events.add(1, {"msgraph_mail.delivery.event_type": event_type})


def carrier() -> dict[str, str] | None:
    """The current trace context as W3C headers (``traceparent``, ``tracestate``), for an
    envelope; None when there is no span to continue."""
    if not active() or not trace.get_current_span().get_span_context().is_valid:
        return None
    found: dict[str, str] = {}
    propagate.inject(found)
    return found or None


def mailbox_label(settings: MSGraphMailSettings | None, mailbox: str | None) -> str | None:
    """How telemetry names a mailbox: its directory id. An id that is an address (MODE
    single_mailbox with an address as MAILBOX) becomes ``sha256:`` and 16 hex digits of its
    hash, unless TELEMETRY_ADDRESSES is on."""
    if not mailbox or "@" not in mailbox:
        return mailbox
    if settings is not None and settings.telemetry_addresses:
        return mailbox
    return "sha256:" + hashlib.sha256(mailbox.lower().encode()).hexdigest()[:16]


def describe_mailbox(
    op: Operation, settings: MSGraphMailSettings, mailbox_id: str, address: str
) -> None:
    """The mailbox on a message's span: its id (``messaging.destination.name`` and
    ``msgraph_mail.mailbox``), and its address only with TELEMETRY_ADDRESSES."""
    if not op.span.is_recording():
        return
    label = mailbox_label(settings, mailbox_id)
    op.set("messaging.destination.name", label)
    op.set("msgraph_mail.mailbox", label)
    if settings.telemetry_addresses:
        op.set("msgraph_mail.mailbox.address", address)


def log_extra(
    settings: MSGraphMailSettings | None = None,
    *,
    request_id: str | None = None,
    mailbox: str | None = None,
    address: str | None = None,
    status: str | None = None,
    route: str | None = None,
) -> dict[str, Any]:
    """The ``extra`` of a log record: fields a JSON formatter picks up.

    ``msgraph_mailbox`` is the mailbox's id (:func:`mailbox_label`), its ``address`` only
    when TELEMETRY_ADDRESSES is on; ``msgraph_trace_id`` and ``msgraph_span_id`` (hex) when a
    span is active.
    """
    shown = address if address and settings is not None and settings.telemetry_addresses else None
    extra: dict[str, Any] = {
        "msgraph_request_id": request_id,
        "msgraph_mailbox": shown or mailbox_label(settings, mailbox),
        "msgraph_status": status,
        "msgraph_route": route,
    }
    if active():
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            extra["msgraph_trace_id"] = format(context.trace_id, "032x")
            extra["msgraph_span_id"] = format(context.span_id, "016x")
    return extra


# -- metrics -----------------------------------------------------------------------------


class _Instruments:
    """The package's instruments, made once (the API's proxy meter binds them to a provider
    set later)."""

    def __init__(self) -> None:
        meter = metrics.get_meter(SCOPE, _version())
        self.duration = meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Duration of sending one message (or queuing, or processing it)",
        )
        self.messages = meter.create_counter(
            "msgraph_mail.messages", unit="{message}", description="Messages by outcome"
        )
        self.delivery_events = meter.create_counter(
            "msgraph_mail.delivery.events",
            unit="{event}",
            description="Delivery events found after Graph's 202 (DELIVERY_TRACKING)",
        )
        self.retries = meter.create_counter(
            "msgraph_mail.retries",
            unit="{retry}",
            description="Requests tried again, by reason (throttled: 429, server_error: 5xx)",
        )
        self.limits_wait = meter.create_histogram(
            "msgraph_mail.limits.wait.duration",
            unit="s",
            description="Time waited for a mailbox's slot or budget (MAILBOX_LIMITS)",
        )
        meter.create_observable_gauge(
            "msgraph_mail.mailbox.budget.used",
            callbacks=[_budget_used],
            description="What a mailbox has used of each MAILBOX_LIMITS budget, in the "
            "budget's unit (requests in flight, requests, MB, recipients)",
        )
        meter.create_observable_gauge(
            "msgraph_mail.mailbox.budget.limit",
            callbacks=[_budget_limit],
            description="Each MAILBOX_LIMITS budget of a mailbox",
        )
        meter.create_observable_gauge(
            "msgraph_mail.outbox.depth",
            callbacks=[_outbox_depth],
            unit="{message}",
            description="Messages in the outbox, by status",
        )


_made: _Instruments | None = None
_made_lock = threading.Lock()


def _instruments() -> _Instruments:
    global _made
    if _made is None:
        with _made_lock:
            if _made is None:
                _made = _Instruments()
    return _made


#: (limits store, mailbox) pairs this process has sent through, for the budget gauges.
_mailboxes: dict[tuple[int, str], tuple[Any, str]] = {}
#: Outbox stores this process has used, for the depth gauge.
_outboxes: dict[str, Any] = {}


def watch_mailbox(limits: Any, mailbox: str) -> None:
    """Report this mailbox's budgets (``limits.usage``) in the budget gauges."""
    if ENABLED:
        key = (id(limits), mailbox)
        if key not in _mailboxes:
            _mailboxes[key] = (limits, mailbox)
            if active():
                _instruments()


def watch_outbox(store: Any, name: str) -> None:
    """Report this outbox's counts by status (``store.counts()``) in the depth gauge."""
    if ENABLED and name not in _outboxes:
        _outboxes[name] = store
        if active():
            _instruments()


def _usage() -> Iterable[tuple[str, str, dict[str, float]]]:
    for limits, mailbox in list(_mailboxes.values()):
        try:
            usage = limits.usage(mailbox)
        except Exception as exc:  # a gauge must never break the exporter
            logger.debug("Budget gauge: %s", type(exc).__name__, extra=log_extra())
            continue
        label = mailbox_label(limits.settings, mailbox) or ""
        for budget, values in usage.items():
            yield label, budget, values


def _budget_used(options: CallbackOptions) -> Iterable[Observation]:
    for label, budget, values in _usage():
        yield Observation(
            values["used"], {"msgraph_mail.mailbox": label, "msgraph_mail.limits.budget": budget}
        )


def _budget_limit(options: CallbackOptions) -> Iterable[Observation]:
    for label, budget, values in _usage():
        yield Observation(
            values["limit"], {"msgraph_mail.mailbox": label, "msgraph_mail.limits.budget": budget}
        )


def _outbox_depth(options: CallbackOptions) -> Iterable[Observation]:
    for name, store in list(_outboxes.items()):
        try:
            counts = store.counts()
        except Exception as exc:
            logger.debug("Outbox gauge: %s", type(exc).__name__, extra=log_extra())
            continue
        for status, count in counts.items():
            yield Observation(
                count, {"msgraph_mail.outbox": name, "msgraph_mail.outbox.status": status}
            )
