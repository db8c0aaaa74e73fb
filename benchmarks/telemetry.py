"""What OpenTelemetry costs a send: the same loop without the API, with the API and no
provider, and with the SDK recording every span and metric (in memory), in one run.

    python benchmarks/telemetry.py --runs 5

The emulator runs in its own process, as in benchmarks/throughput.py (same messages, latency
and per-mailbox limit). Each measurement is a fresh child process -- the only way to have a
process without ``opentelemetry`` (it is hidden from the import system) beside one with it
-- that warms up (token, sender lookup), then sends MESSAGES in one ``send_messages``; the
modes take turns within each run. The table shows medians: messages per second, our CPU per
message, HTTP requests per message, spans per message, and each mode against "absent".
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import LATENCY, MESSAGES, Emulator

MODES = ("absent", "api", "sdk")
LABELS = {
    "absent": "opentelemetry not installed",
    "api": "opentelemetry-api, no provider",
    "sdk": "SDK, in-memory exporter and reader",
}


def child(mode: str, url: str, count: int) -> None:
    """One measurement: set up ``mode``, warm up, wait for "go", send, print the figures."""
    spans: Any = None
    if mode == "absent":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    elif mode == "sdk":
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    from throughput import configure_django, messages, ours

    configure_django(url)
    from msgraph_mail import telemetry

    assert telemetry.ENABLED is (mode != "absent")
    send = ours(8)
    send(messages(1, f"{mode} warm-up"))
    if spans is not None:
        spans.clear()
    print("ready", flush=True)
    sys.stdin.readline()
    batch = messages(count, mode)
    cpu, started = time.process_time(), time.perf_counter()
    sent = send(batch)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finished = len(spans.get_finished_spans()) if spans is not None else 0
    print(json.dumps({"sent": sent, "seconds": seconds, "cpu": cpu, "spans": finished}))


def measure(emulator: Emulator, mode: str, count: int) -> dict[str, float]:
    process = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--url",
            emulator.url,
            "--messages",
            str(count),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise SystemExit(f"{mode}: the child did not start")
    emulator.ask("reset")
    process.stdin.write("go\n")
    process.stdin.flush()
    result = json.loads(process.stdout.readline())
    process.wait(30)
    stats = emulator.ask("stats")
    if result["sent"] != count or stats["delivered"] != count:
        raise SystemExit(f"{mode}: sent {result['sent']}, delivered {stats['delivered']}")
    return {
        "rate": count / result["seconds"],
        "cpu_ms": 1000 * result["cpu"] / count,
        "requests": stats["requests"] / count,
        "spans": result["spans"] / count,
    }


def report(runs: list[dict[str, dict[str, float]]], count: int, latency: float) -> None:
    def median(mode: str, key: str) -> float:
        return statistics.median(run[mode][key] for run in runs)

    print(
        f"\n{count} messages per measurement, {latency * 1000:g} ms per request, "
        f"{len(runs)} runs (medians), Python {sys.version.split()[0]}\n"
    )
    print(
        f"{'mode':38} {'msgs/s':>8} {'vs absent':>10} {'CPU ms/msg':>11} {'vs absent':>10} "
        f"{'requests/msg':>13} {'spans/msg':>10}"
    )
    for mode in MODES:
        rate, cpu = median(mode, "rate"), median(mode, "cpu_ms")
        print(
            f"{LABELS[mode]:38} {rate:8.1f} {rate / median('absent', 'rate'):10.3f} "
            f"{cpu:11.3f} {cpu / median('absent', 'cpu_ms'):10.3f} "
            f"{median(mode, 'requests'):13.3f} {median(mode, 'spans'):10.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs; the table shows medians")
    parser.add_argument("--latency", type=float, default=LATENCY, help="seconds per request")
    parser.add_argument("--messages", type=int, default=MESSAGES, help="messages per measurement")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.url, args.messages)
        return 0
    emulator = Emulator(args.latency)
    try:
        runs = []
        for number in range(args.runs):
            run = {mode: measure(emulator, mode, args.messages) for mode in MODES}
            runs.append(run)
            print(f"run {number + 1}: " + ", ".join(f"{m} {run[m]['rate']:.1f}/s" for m in MODES))
    finally:
        emulator.stop()
    report(runs, args.messages, args.latency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
