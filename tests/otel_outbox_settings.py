"""tests/outbox_settings.py with OpenTelemetry: the web and worker processes of
tests/test_telemetry_worker.py write their spans to OTEL_SPANS_FILE (tests/otel_spans.py)."""

from tests.otel_spans import configure
from tests.outbox_settings import *  # noqa: F403

configure()
