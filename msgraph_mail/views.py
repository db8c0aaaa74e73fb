"""Graph's change notifications, received: answer fast, check, record, leave the work.

Microsoft's rules (Learn, "Receive change notifications through webhooks"): the validation
request (``?validationToken=``) is answered within 10 s with 200, ``text/plain`` and the
token; every notification within 3 s with a 2xx, or Graph retries for up to 4 hours and,
when more than 10 % of answers take over 2.9 s, throttles the endpoint. So these views only
check a notification (JSON, a known subscription, its ``clientState`` compared in constant
time) and record it in the tracking store; the tracker fetches and parses the NDRs. A
notification that fails a check is refused whole (4xx) and nothing of it is recorded.

Only these two views are exempt from CSRF: Graph cannot send Django's token, and the
``clientState`` secret of each subscription stands in for it.
"""

from __future__ import annotations

import hmac
import json
import logging

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import telemetry
from .tracking.store import TrackingStore

__all__ = ["MAX_BODY", "lifecycle", "notifications"]

logger = logging.getLogger("msgraph_mail")

#: The largest notification body taken (Graph batches at most a few hundred small items).
MAX_BODY = 1024 * 1024
LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})


@csrf_exempt  # type: ignore[untyped-decorator]
@require_POST  # type: ignore[untyped-decorator]
def notifications(request: HttpRequest) -> HttpResponse:
    """Change notifications: a message was created in a watched Inbox."""
    return _receive(request, lifecycle=False)


@csrf_exempt  # type: ignore[untyped-decorator]
@require_POST  # type: ignore[untyped-decorator]
def lifecycle(request: HttpRequest) -> HttpResponse:
    """Lifecycle notifications: reauthorizationRequired, subscriptionRemoved, missed."""
    return _receive(request, lifecycle=True)


def _receive(request: HttpRequest, *, lifecycle: bool) -> HttpResponse:
    token = request.GET.get("validationToken")
    if token is not None:  # Graph checks the endpoint before it creates a subscription
        return HttpResponse(token, content_type="text/plain; charset=utf-8")
    raw = request.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY or int(request.META.get("CONTENT_LENGTH") or 0) > MAX_BODY:
        return _refused(413, "the body is larger than a notification can be")
    try:
        body = json.loads(raw)
        items = body["value"]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _refused(400, "the body is not a JSON change notification collection")
    store = _store()
    notices: list[tuple[str, str, str]] = []
    for item in items:
        watch = store.watch(str(item.get("subscriptionId") or ""))
        if watch is None:
            return _refused(404, "a notification names no subscription of ours")
        given = str(item.get("clientState") or "").encode()
        if not hmac.compare_digest(given, watch.client_state.encode()):
            return _refused(403, "a notification's clientState does not match its subscription")
        kind = str(item.get("lifecycleEvent") or "") if lifecycle else "created"
        if lifecycle and kind not in LIFECYCLE_EVENTS:
            return _refused(400, "an unknown lifecycle event")
        notices.append((watch.subscription_id, kind, str(item.get("resource") or "")[:1000]))
    store.notify(notices)
    return HttpResponse(status=202)


def _refused(status: int, why: str) -> HttpResponse:
    logger.warning(
        "Refused a Graph notification (HTTP %d): %s",
        status,
        why,
        extra=telemetry.log_extra(status=str(status)),
    )
    return HttpResponse(why, status=status, content_type="text/plain; charset=utf-8")


def _store() -> TrackingStore:
    """The tracking store of the settings (MSGRAPH_MAIL, or the default mailer of ours)."""
    from . import mailers
    from .conf import load_settings
    from .tracking.store import store_for

    return store_for(load_settings(mailers.pick(None).options))
