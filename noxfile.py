"""The whole test suite: lint and types, the Django matrix, the browser tests, the docs.

Run everything with ``nox``; one part with ``nox -s lint``, ``nox -s "tests(6.1)"``,
``nox -s browser`` (the dev inbox and the outbox admin in headless Chromium) or
``nox -s docs``. Pythons come from pyenv (see .python-version).
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests", "browser", "docs"]
nox.options.error_on_missing_interpreters = True

# (Python, Django): 5.2 is the last series for 3.10/3.11; 6.0 and 6.1 need 3.12+.
MATRIX = [("3.10", "5.2"), ("3.11", "5.2"), ("3.12", "6.0"), ("3.13", "6.1")]
IDS = ["5.2-py3.10", "5.2", "6.0", "6.1"]


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff (lint and format) and mypy on the package."""
    session.install("ruff==0.17.6", "mypy", "types-requests", "types-cachetools", "-e", ".[test]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "msgraph_mail")


@nox.session
@nox.parametrize(("python", "django"), MATRIX, ids=IDS)
def tests(session: nox.Session, django: str) -> None:
    """pytest against the bundled Graph emulator, for one Django release."""
    session.install(f"django~={django}.0", "-e", ".[test]")
    session.run("python", "-m", "pytest", "-m", "not browser", *session.posargs)


@nox.session(python="3.11")
def browser(session: nox.Session) -> None:
    """The dev inbox and the outbox admin in headless Chromium (Debian's chromium and
    chromium-driver)."""
    session.install("selenium", "-e", ".[test]")
    session.run("python", "-m", "pytest", "-m", "browser", *session.posargs)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors."""
    session.install("-r", "docs/requirements.txt", "-e", ".")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
@nox.parametrize(("python", "django"), [("3.11", "5.2"), ("3.13", "6.1")], ids=["5.2", "6.1"])
def bench(session: nox.Session, django: str) -> None:
    """Throughput against Graph's limit and django-msgraphbackend (not part of ``nox``).

    ``nox -s bench`` runs both Django releases; ``nox -s "bench(6.1)" -- --runs 5`` one.
    """
    session.install(f"django~={django}.0", "-e", ".", "django-msgraphbackend==5.2.0")
    session.run("python", "benchmarks/throughput.py", *session.posargs)


@nox.session(python="3.13")
def bench_telemetry(session: nox.Session) -> None:
    """What OpenTelemetry costs a send: without the API, with it and no provider, with the
    SDK (not part of ``nox``; ``nox -s bench_telemetry -- --runs 5``)."""
    session.install("django~=6.1.0", "-e", ".[otel]", "opentelemetry-sdk")
    session.run("python", "benchmarks/telemetry.py", *session.posargs)
