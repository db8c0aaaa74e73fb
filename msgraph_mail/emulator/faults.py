"""Injected faults: the failures a reliable sender must survive, on demand and reproducibly.

Graph throttles (429), has outages (503), and its gateway can time out (504) *after* the
mailbox accepted the message, which is why 5xx and timeouts mean "maybe sent" (GRAPH_NOTES
B.3). Connections also die with or without the work done. And not every error is Graph's
JSON: Exchange's front end can answer 503 with an HTML page and no Retry-After, a gateway 502
with plain text (the ``html_unavailable`` and ``bad_gateway`` faults). Tests queue such faults
one by one (``fail_next``) or draw them at a rate from a seeded generator (``fault_rate``), so
a run of a thousand sends with 10 % faults is the same run every time.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import EntraError, GraphError, unauthenticated

#: Faults answered as Graph answers (its JSON errors) or not at all, in the order the
#: documentation lists them.
FAULTS = (
    "throttle",
    "unavailable",
    "gateway_timeout",
    "gateway_timeout_lost",
    "expired_token",
    "reset_before",
    "reset_after",
    "slow",
)
#: Faults answered with what a front end or gateway serves instead of Graph's JSON error:
#: an HTML 503 without Retry-After, a plain-text 502 (after delivering: it may have been
#: forwarded). Kept apart from ``FAULTS`` so that a ``fault_rate`` over ``FAULTS`` draws what
#: it always drew.
PAGE_FAULT_NAMES = ("html_unavailable", "bad_gateway")
#: Every fault name.
ALL_FAULTS = FAULTS + PAGE_FAULT_NAMES
#: Request kinds (as ``emu.count()`` names them) a fault can be aimed at.
FAULT_KINDS = (
    "sendMail",
    "token",
    "user_list",
    "user_get",
    "draft_create",
    "attachment",
    "upload_session",
    "upload_chunk",
    "draft_send",
    "draft_delete",
    "sent_items",
    "inbox_delta",
    "message_get",
    "message_value",
    "message_trace",
    "message_trace_detail",
)
#: Faults that let the request be processed normally first (the work is done, then lost).
PROCESSING_FAULTS = frozenset({"gateway_timeout", "reset_after", "slow", "bad_gateway"})
#: Faults answered with a page that is not Graph's (or Entra's) JSON error.
PAGE_FAULTS = frozenset(PAGE_FAULT_NAMES)
#: A token endpoint has no bearer token to expire.
_NOT_ON_TOKEN = frozenset({"expired_token"})


@dataclass(frozen=True)
class InjectedFault:
    """One fault as served; ``delivered``: the message reached ``emu.sent`` regardless."""

    fault: str
    kind: str
    path: str
    delivered: bool
    client_request_id: str | None
    request_id: str


@dataclass(frozen=True)
class PlannedFault:
    """A fault waiting for its request, with the Retry-After it will advertise."""

    name: str
    retry_after: float | None


@dataclass
class _Rate:
    rate: float
    faults: tuple[str, ...]
    rng: random.Random
    retry_after: float | None


def _check_kind(on: str, retry_after: float | None) -> None:
    """Refuse what the emulator does not know, so a typo never silently injects nothing."""
    if on not in FAULT_KINDS:
        raise ValueError(f"cannot inject faults on {on!r}; one of {', '.join(FAULT_KINDS)}")
    if retry_after is not None and retry_after < 0:
        raise ValueError("retry_after must be >= 0 or None")


def _check_fault(fault: str, on: str) -> None:
    if fault not in ALL_FAULTS:
        raise ValueError(f"unknown fault {fault!r}; one of {', '.join(ALL_FAULTS)}")
    if on == "token" and fault in _NOT_ON_TOKEN:
        raise ValueError(f"fault {fault!r} needs a bearer token; it cannot apply to 'token'")


class FaultPlan:
    """Queued and random faults per request kind, and the record of those served.

    Thread-safe: handler threads draw while the test thread configures.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: dict[str, deque[PlannedFault]] = {}
        self._rates: dict[str, _Rate] = {}
        self._served: list[InjectedFault] = []
        #: Called when what is armed changes (the dev inbox's faults panel follows it).
        self.changed: Callable[[], None] = lambda: None

    def fail_next(
        self,
        fault: str,
        times: int = 1,
        *,
        on: str = "sendMail",
        retry_after: float | None = 0.01,
    ) -> None:
        """Serve ``fault`` to the next ``times`` requests of kind ``on`` (before random ones).

        Faults: "throttle" (429), "unavailable" (503), "gateway_timeout" (delivers, then
        504), "gateway_timeout_lost" (504, nothing delivered), "expired_token" (401, the token
        is revoked), "reset_before" / "reset_after" (TCP reset without a response, before or
        after processing), "slow" (delivers, then waits ``slow_seconds`` before the 202),
        "html_unavailable" (503 with an HTML page, as Exchange's front end serves it, and no
        Retry-After), "bad_gateway" (delivers, then a gateway's 502 in plain text).
        ``retry_after`` goes into the Retry-After header of 429 and of Graph's JSON 503.
        """
        _check_kind(on, retry_after)
        _check_fault(fault, on)
        if times < 0:
            raise ValueError("times must be >= 0")
        with self._lock:
            queue = self._queued.setdefault(on, deque())
            queue.extend(PlannedFault(fault, retry_after) for _ in range(times))
        self.changed()

    def fault_rate(
        self,
        rate: float,
        faults: Sequence[str],
        *,
        on: str = "sendMail",
        seed: int = 0,
        retry_after: float | None = 0.01,
    ) -> None:
        """Fault each request of kind ``on`` with probability ``rate`` (0 stops it).

        The fault is drawn from ``faults`` by a generator seeded with ``seed`` and restarted by
        each call, so the same requests in the same order get the same faults every run.
        """
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if isinstance(faults, str):
            raise TypeError("faults is a sequence of fault names, not one name")
        if rate > 0 and not faults:
            raise ValueError("a non-zero rate needs at least one fault")
        _check_kind(on, retry_after)
        for fault in faults:
            _check_fault(fault, on)
        with self._lock:
            if rate == 0:
                self._rates.pop(on, None)
                return
            rng = random.Random(seed)  # noqa: S311 - reproducible test faults, not security
            self._rates[on] = _Rate(rate, tuple(faults), rng, retry_after)

    def draw(self, kind: str) -> PlannedFault | None:
        """The fault for the next request of ``kind``: queued first, then a random one."""
        with self._lock:
            queue = self._queued.get(kind)
            if queue:
                return queue.popleft()
            chosen = self._rates.get(kind)
            if chosen is None or chosen.rng.random() >= chosen.rate:
                return None
            return PlannedFault(chosen.rng.choice(chosen.faults), chosen.retry_after)

    def pending(self, on: str = "sendMail") -> list[PlannedFault]:
        """The faults ``fail_next`` queued for requests of kind ``on``, not yet served, in the
        order they will be served."""
        with self._lock:
            return list(self._queued.get(on, ()))

    def clear(self, on: str | None = None) -> None:
        """Drop the queued and random faults for ``on`` (None: every kind)."""
        with self._lock:
            for table in (self._queued, self._rates):
                if on is None:
                    table.clear()
                else:
                    table.pop(on, None)
        self.changed()

    def served(self, record: InjectedFault) -> None:
        with self._lock:
            self._served.append(record)
        self.changed()  # one fewer armed

    @property
    def injected(self) -> list[InjectedFault]:
        with self._lock:
            return list(self._served)

    def forget_served(self) -> None:
        with self._lock:
            self._served.clear()


def retry_after_header(seconds: float | None) -> dict[str, str]:
    """``Retry-After`` in (possibly fractional) seconds, as Graph writes it: ``0.01``, ``2``."""
    if seconds is None:
        return {}
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return {"Retry-After": text or "0"}


def graph_fault(fault: PlannedFault) -> GraphError:
    """The Graph answer for a fault that answers at all (not the resets, not ``slow``)."""
    retry = retry_after_header(fault.retry_after)
    if fault.name == "throttle":
        inner = {"code": "429", "message": "Please retry after", "status": "429"}
        return GraphError(429, "TooManyRequests", "Please retry again later.", retry, inner=inner)
    if fault.name == "unavailable":
        return GraphError(
            503,
            "serviceNotAvailable",
            "The service is temporarily unavailable. Try the request again after a delay.",
            retry,
        )
    if fault.name in ("gateway_timeout", "gateway_timeout_lost"):
        return GraphError(
            504,
            "GatewayTimeout",
            "The gateway did not receive a timely response from the upstream service.",
        )
    if fault.name == "expired_token":
        return unauthenticated("Access token has expired or is not yet valid.")
    raise ValueError(f"fault {fault.name!r} has no HTTP answer")


def entra_fault(fault: PlannedFault) -> tuple[EntraError, dict[str, str]]:
    """The token endpoint's answer for a fault, and its extra headers (Retry-After)."""
    retry = retry_after_header(fault.retry_after)
    if fault.name == "throttle":
        error = EntraError(
            429, "too_many_requests", 90055, "There are too many incoming requests. Retry later."
        )
        return error, retry
    if fault.name == "unavailable":
        error = EntraError(
            503, "temporarily_unavailable", 90006, "The service is temporarily unavailable."
        )
        return error, retry
    if fault.name in ("gateway_timeout", "gateway_timeout_lost"):
        error = EntraError(504, "temporarily_unavailable", 90012, "The request has timed out.")
        return error, {}
    raise ValueError(f"fault {fault.name!r} has no token-endpoint answer")


#: What Exchange's front end (IIS) serves when the service is down: no Retry-After, no JSON.
UNAVAILABLE_PAGE = """<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN" \
"http://www.w3.org/TR/html4/strict.dtd">
<HTML><HEAD><TITLE>Service Unavailable</TITLE>
<META HTTP-EQUIV="Content-Type" Content="text/html; charset=us-ascii">
<STYLE>body { font-family: Segoe UI, sans-serif; }</STYLE></HEAD>
<BODY><h2>Service Unavailable</h2>
<hr><p>HTTP Error 503. The service is unavailable.</p>
</BODY></HTML>
"""
#: A gateway's answer when what stands behind it gave it no valid response.
BAD_GATEWAY_TEXT = "502 Bad Gateway: the upstream server sent an invalid response.\n"


def page_fault(fault: PlannedFault) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers of a fault answered without Graph's JSON (``PAGE_FAULTS``):
    the same from Graph and from the token endpoint, since a front end answers for both."""
    if fault.name == "html_unavailable":
        return 503, UNAVAILABLE_PAGE.encode("ascii"), {"Content-Type": "text/html"}
    if fault.name == "bad_gateway":
        return 502, BAD_GATEWAY_TEXT.encode("ascii"), {"Content-Type": "text/plain"}
    raise ValueError(f"fault {fault.name!r} is not a page")
