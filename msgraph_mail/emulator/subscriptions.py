"""Graph change notifications for new Inbox messages: subscriptions, validation, delivery.

As Microsoft Learn describes them ("Set up notifications for changes in resource data",
"Receive change notifications through webhooks", the ``subscription`` resource):

- ``POST /subscriptions`` on ``users/{id}/mailFolders('inbox')/messages`` with
  ``changeType`` ``created``: Graph first POSTs ``?validationToken=`` to ``notificationUrl``
  (and ``lifecycleNotificationUrl``) and needs, within 10 s, 200 with ``text/plain`` and the
  token; else 400. ``notificationUrl`` must be https (http is accepted here for loopback
  only, so tests can use a local server). ``clientState`` at most 128 characters. An Outlook
  message subscription lives at most 10,080 minutes; less than 45 minutes is raised to 45
  (Learn, subscription resource, "Subscription lifetime"). Needs Mail.ReadBasic, Mail.Read or
  Mail.ReadWrite (application); at most 1,000 active subscriptions per mailbox.
- Each new message is posted as a ``changeNotificationCollection``; the endpoint must answer
  2xx within 3 s (``timeout``), else the emulator retries after ``retry_delays`` (Graph
  retries for up to 4 hours, with backoff: the schedule here is shorter, and a knob).
- Lifecycle notifications (``reauthorizationRequired``, ``subscriptionRemoved``, ``missed``)
  are sent on demand (:meth:`Subscriptions.send_lifecycle`).

UNCONFIRMED, chosen here: the exact texts of the 400s; that an expired subscription simply
disappears from ``GET /subscriptions``; the retry schedule.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlsplit
from urllib.request import ProxyHandler, build_opener
from urllib.request import Request as HttpRequest

from .directory import TENANT_ID, Tenant, User
from .entra import IssuedToken
from .errors import GraphError, access_denied, bad_request
from .http import Request, Response, graph_time, json_response

MAX_MINUTES, MIN_MINUTES = 10_080, 45
MAX_PER_MAILBOX = 1000
CHANGE_TYPES = frozenset({"created", "updated", "deleted"})
LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})
#: Graph reaches the endpoint directly: no proxy from the environment in between.
_OPENER = build_opener(ProxyHandler({}))


@dataclass
class Subscription:
    id: str
    mailbox_id: str
    resource: str
    change_type: str
    notification_url: str
    lifecycle_url: str | None
    expires: datetime
    client_state: str | None = field(repr=False)
    app_id: str

    def graph(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "resource": self.resource,
            "changeType": self.change_type,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": graph_time(self.expires, ".0000000"),
            "clientState": self.client_state,
            "applicationId": self.app_id,
            "creatorId": self.app_id,
            "latestSupportedTlsVersion": "v1_2",
            "includeResourceData": False,
        }


@dataclass
class Delivery:
    """One notification POSTed (or tried): what the dev and the tests can read back."""

    subscription_id: str
    url: str
    body: dict[str, Any]
    attempts: list[tuple[int | None, float, str]] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return any(status is not None and 200 <= status < 300 for status, _, _ in self.attempts)


class Subscriptions:
    """The tenant's subscriptions and a sender thread posting their notifications."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.timeout = 3.0
        self.retry_delays: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 4.0)
        self._lock = threading.Lock()
        self._subscriptions: dict[str, Subscription] = {}
        self._log: list[Delivery] = []
        self._queue: queue.Queue[tuple[float, Delivery, int]] = queue.Queue()
        self._thread: threading.Thread | None = None
        #: Called by the sender thread to let what is due arrive (the delivery reports).
        self.tick: Callable[[], None] = lambda: None

    # lifecycle of the sender -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="graph-notify", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def clear(self) -> None:
        with self._lock:
            self._subscriptions.clear()
            self._log.clear()

    # Graph's API -------------------------------------------------------------------------

    def listing(self, token: IssuedToken) -> Response:
        return json_response(200, {"value": [s.graph() for s in self._live(token.app_id)]})

    def get(self, item: str, token: IssuedToken) -> Response:
        return json_response(200, self._find(item, token.app_id).graph())

    def update(self, request: Request, item: str, token: IssuedToken) -> Response:
        found = self._find(item, token.app_id)
        body = _body(request)
        if set(body) - {"expirationDateTime", "notificationUrl"}:
            raise _invalid("Only expirationDateTime can be updated.")
        found.expires = _expiry(body.get("expirationDateTime"))
        return json_response(200, found.graph())

    def reauthorize(self, item: str, token: IssuedToken) -> Response:
        self._find(item, token.app_id)
        return Response(204)

    def delete(self, item: str, token: IssuedToken) -> Response:
        found = self._find(item, token.app_id)
        with self._lock:
            del self._subscriptions[found.id]
        return Response(204)

    def create(self, request: Request, token: IssuedToken) -> Response:
        body = _body(request)
        change_type = str(body.get("changeType") or "")
        if not change_type or set(change_type.split(",")) - CHANGE_TYPES:
            raise _invalid(f"Invalid changeType '{change_type}'.")
        mailbox = self._mailbox(str(body.get("resource") or ""))
        if not self.tenant.may_read(mailbox, token.roles):  # Mail.ReadBasic or more, or RBAC
            raise access_denied()
        state = body.get("clientState")
        if state is not None and len(str(state)) > 128:
            raise _invalid("clientState must be at most 128 characters.")
        url, lifecycle = _url(body.get("notificationUrl")), body.get("lifecycleNotificationUrl")
        if lifecycle is not None:
            lifecycle = _url(lifecycle)
        if len([s for s in self._live(None) if s.mailbox_id == mailbox.id]) >= MAX_PER_MAILBOX:
            raise GraphError(403, "ExtensionError", "Too many subscriptions on this mailbox.")
        for target in filter(None, (url, lifecycle)):
            _validate(target)
        subscription = Subscription(
            id=str(uuid.uuid4()),
            mailbox_id=mailbox.id,
            resource=str(body["resource"]),
            change_type=change_type,
            notification_url=url,
            lifecycle_url=lifecycle,
            expires=_expiry(body.get("expirationDateTime")),
            client_state=None if state is None else str(state),
            app_id=token.app_id,
        )
        with self._lock:
            self._subscriptions[subscription.id] = subscription
        return json_response(201, subscription.graph())

    # notifications -----------------------------------------------------------------------

    def arrived(self, mailbox_id: str, message_id: str) -> None:
        """A message arrived in ``mailbox_id``'s Inbox: notify whoever subscribed."""
        for subscription in self._live(None):
            if subscription.mailbox_id != mailbox_id or "created" not in subscription.change_type:
                continue
            item = {
                "changeType": "created",
                "resource": f"Users/{mailbox_id}/Messages/{message_id}",
                "resourceData": {
                    "@odata.type": "#Microsoft.Graph.Message",
                    "@odata.id": f"Users/{mailbox_id}/Messages/{message_id}",
                    "id": message_id,
                },
            }
            self._post(subscription, subscription.notification_url, item)

    def send_lifecycle(self, subscription_id: str, event: str) -> None:
        """Post a lifecycle notification (``reauthorizationRequired``,
        ``subscriptionRemoved``: also removes the subscription, ``missed``)."""
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(f"lifecycle events: {', '.join(sorted(LIFECYCLE_EVENTS))}")
        with self._lock:
            subscription = self._subscriptions[subscription_id]
            if event == "subscriptionRemoved":
                del self._subscriptions[subscription_id]
        url = subscription.lifecycle_url or subscription.notification_url
        self._post(subscription, url, {"lifecycleEvent": event})

    def deliveries(self, subscription_id: str | None = None) -> list[Delivery]:
        """Every notification posted (or tried), with each attempt's (status, seconds,
        error); ``delivered`` tells whether one attempt got a 2xx in time."""
        with self._lock:
            return [d for d in self._log if subscription_id in (None, d.subscription_id)]

    def listed(self) -> list[dict[str, Any]]:
        """The live change-notification subscriptions, as Graph shows them."""
        return [s.graph() for s in self._live(None)]

    def _post(self, subscription: Subscription, url: str, fields: dict[str, Any]) -> None:
        """Queue one notification: ``fields`` in the envelope every notification has."""
        item = {
            "subscriptionId": subscription.id,
            "subscriptionExpirationDateTime": graph_time(subscription.expires, ".0000000"),
            **fields,
            "clientState": subscription.client_state,
            "tenantId": TENANT_ID,
        }
        delivery = Delivery(subscription.id, url, {"value": [item]})
        with self._lock:
            self._log.append(delivery)
        self._queue.put((time.monotonic(), delivery, 0))

    def _run(self) -> None:
        waiting: list[tuple[float, Delivery, int]] = []
        while not self._stop.is_set():
            if self._subscriptions:
                self.tick()
            with contextlib.suppress(queue.Empty):
                waiting.append(self._queue.get(timeout=0.02))
            now = time.monotonic()
            due = [w for w in waiting if w[0] <= now]
            waiting = [w for w in waiting if w[0] > now]
            for _, delivery, attempt in due:
                if not self._attempt(delivery) and attempt < len(self.retry_delays):
                    waiting.append((now + self.retry_delays[attempt], delivery, attempt + 1))

    def _attempt(self, delivery: Delivery) -> bool:
        data = json.dumps(delivery.body).encode()
        request = HttpRequest(  # noqa: S310 - https or loopback http, checked by _url
            delivery.url, data=data, headers={"Content-Type": "application/json"}, method="POST"
        )
        started = time.monotonic()
        try:
            with _OPENER.open(request, timeout=self.timeout) as answer:
                status, error = int(answer.status), ""
        except HTTPError as exc:
            status, error = exc.code, exc.reason
        except (URLError, OSError) as exc:
            status, error = None, str(exc)
        took = time.monotonic() - started
        if took > self.timeout:
            status, error = None, f"answered after {took:.1f} s (over {self.timeout:g} s)"
        with self._lock:
            delivery.attempts.append((status, took, str(error)))
        return status is not None and 200 <= status < 300

    # helpers -----------------------------------------------------------------------------

    def _live(self, app_id: str | None) -> list[Subscription]:
        now = datetime.now(timezone.utc)
        with self._lock:
            self._subscriptions = {k: s for k, s in self._subscriptions.items() if s.expires > now}
            return [s for s in self._subscriptions.values() if app_id in (None, s.app_id)]

    def _find(self, subscription_id: str, app_id: str) -> Subscription:
        found = next((s for s in self._live(app_id) if s.id == subscription_id), None)
        if found is None:
            raise GraphError(
                404, "ResourceNotFound", f"The object '{subscription_id}' doesn't exist."
            )
        return found

    def _mailbox(self, resource: str) -> User:
        parts = [p for p in resource.strip("/").split("/") if p]
        folder = "/".join(parts[2:]).lower()
        inbox = folder in ("mailfolders('inbox')/messages", "mailfolders/inbox/messages")
        user = self.tenant.by_id_or_upn(parts[1]) if len(parts) > 1 else None
        if parts[:1] not in (["users"], ["Users"]) or not inbox or user is None:
            raise _invalid(f"Invalid resource '{resource}'.")
        return user


def _validate(url: str) -> None:
    """Graph's validation request: the endpoint must echo the token, as text, within 10 s."""
    token = f"Validation: Testing client application reachability {uuid.uuid4().hex}"
    request = HttpRequest(  # noqa: S310 - https or loopback http, checked by _url
        f"{url}?validationToken={quote(token)}", data=b"", method="POST"
    )
    request.add_header("Content-Type", "text/plain; charset=utf-8")
    try:
        with _OPENER.open(request, timeout=10) as answer:
            ok = answer.status == 200 and answer.read().decode() == token
            ok = ok and answer.headers.get_content_type() == "text/plain"
    except (URLError, OSError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise _invalid(
            f"Subscription validation request failed. Notification endpoint must respond "
            f"with 200 OK to validation request. ({url})",
        )


def _url(value: Any) -> str:
    parts = urlsplit(str(value or ""))
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise _invalid("The notification URL must use https (http://127.0.0.1 here).")
    return str(value)


def _expiry(value: Any) -> datetime:
    text = re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "000000")[:6], str(value), count=1)
    try:  # Graph's seven decimals and Z, which Python 3.10's fromisoformat refuses
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        when = when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
    except ValueError:
        raise _invalid("Invalid expirationDateTime.") from None
    now = datetime.now(timezone.utc)
    if when > now + timedelta(minutes=MAX_MINUTES):
        raise _invalid(f"Subscription expiration can only be {MAX_MINUTES} minutes in the future.")
    return max(when, now + timedelta(minutes=MIN_MINUTES))


def _invalid(message: str) -> GraphError:
    return GraphError(400, "InvalidRequest", message)


def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise bad_request("Invalid JSON.") from None
    if not isinstance(body, dict):
        raise bad_request("Invalid JSON.")
    return body
