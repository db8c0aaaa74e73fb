"""An OpenTelemetry SDK set-up for test subprocesses: every finished span written as one JSON
line to the file named by ``OTEL_SPANS_FILE`` (the web and worker processes of
tests/test_telemetry_worker.py), so the test can read both processes' spans."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class JsonLinesExporter(SpanExporter):
    """Appends each span (names, ids, kind, attributes) to a file, one JSON object a line."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as out:
            for span in spans:
                context = span.get_span_context()
                assert context is not None
                out.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "kind": span.kind.name,
                            "trace_id": format(context.trace_id, "032x"),
                            "span_id": format(context.span_id, "016x"),
                            "parent_id": format(span.parent.span_id, "016x")
                            if span.parent
                            else None,
                            "attributes": dict(span.attributes or {}),
                            "pid": os.getpid(),
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS


def configure() -> None:
    """Install the SDK with the JSON-lines exporter, when OTEL_SPANS_FILE is set."""
    path = os.environ.get("OTEL_SPANS_FILE")
    if not path:
        return
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    trace.set_tracer_provider(provider)
