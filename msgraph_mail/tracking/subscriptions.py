"""Graph change-notification subscriptions on the sending mailboxes' Inboxes, kept alive.

With ``NOTIFICATION_URL`` set, each sending mailbox gets one subscription
(``changeType=created`` on ``users/{id}/mailFolders('inbox')/messages``), so an NDR is known
the moment it arrives instead of a polling interval later. Microsoft's rules (Learn, change
notifications): an Outlook message subscription lives at most 10,080 minutes; Graph first
validates both URLs; ``clientState`` (up to 128 characters) comes back with every
notification. Each subscription gets its own random ``clientState``, kept in the tracking
store and never logged.

The tracker renews a subscription when less than :data:`RENEW_WITHIN` is left, recreates it
after ``subscriptionRemoved``, reauthorises it after ``reauthorizationRequired``; polling
(the delta query) still runs, so what was missed while the site was down is found.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

from .. import telemetry
from ..conf import MSGraphMailSettings
from ..exceptions import GraphAPIError
from ..graph import GraphClient, user_path
from .store import TrackingStore, Watch
from .trace import _iso, _parse_time

__all__ = ["LIFETIME", "RENEW_WITHIN", "create", "delete", "ensure", "reauthorize", "renew"]

logger = logging.getLogger("msgraph_mail")

#: What a subscription is asked to live: just under Graph's 10,080 minutes.
LIFETIME = timedelta(minutes=10_070)
#: Renewed when less than this is left (a tracker down for a day does not lose it).
RENEW_WITHIN = timedelta(days=3)


def resource(mailbox: str) -> str:
    return f"{user_path(mailbox).lstrip('/')}/mailFolders('inbox')/messages"


def create(
    client: GraphClient, store: TrackingStore, settings: MSGraphMailSettings, mailbox: str
) -> Watch:
    """Subscribe to new messages in ``mailbox``'s Inbox (Graph validates our URLs first)."""
    endpoints = settings.notification_endpoints
    if endpoints is None:
        raise ValueError("NOTIFICATION_URL is not set")
    client_state = secrets.token_urlsafe(96)[:128]
    body = {
        "changeType": "created",
        "notificationUrl": endpoints[0],
        "lifecycleNotificationUrl": endpoints[1],
        "resource": resource(mailbox),
        "expirationDateTime": _iso(datetime.now(timezone.utc) + LIFETIME),
        "clientState": client_state,
    }
    created = client.request("POST", "/subscriptions", json=body).body or {}
    watch = Watch(str(created["id"]), mailbox.lower(), client_state, _expiry(created))
    store.save_watch(watch)
    logger.info(
        "Subscribed to new messages in %s (subscription %s, until %s)",
        mailbox,
        watch.subscription_id,
        watch.expires_at.isoformat(),
        extra=telemetry.log_extra(settings, mailbox=mailbox),
    )
    return watch


def renew(
    client: GraphClient, store: TrackingStore, settings: MSGraphMailSettings, watch: Watch
) -> Watch:
    """A new expiry; a subscription Graph no longer knows is created again."""
    body = {"expirationDateTime": _iso(datetime.now(timezone.utc) + LIFETIME)}
    try:
        renewed = client.request("PATCH", f"/subscriptions/{watch.subscription_id}", json=body).body
    except GraphAPIError as exc:
        if exc.status != 404:
            raise
        store.drop_watch(watch.subscription_id)
        return create(client, store, settings, watch.mailbox)
    watch = Watch(watch.subscription_id, watch.mailbox, watch.client_state, _expiry(renewed))
    store.save_watch(watch)
    return watch


def reauthorize(
    client: GraphClient, store: TrackingStore, settings: MSGraphMailSettings, watch: Watch
) -> Watch:
    """After ``reauthorizationRequired``: reauthorise, then renew, as Microsoft asks."""
    try:
        client.request("POST", f"/subscriptions/{watch.subscription_id}/reauthorize")
    except GraphAPIError as exc:
        if exc.status != 404:
            raise
    return renew(client, store, settings, watch)


def delete(client: GraphClient, store: TrackingStore, watch: Watch) -> None:
    try:
        client.request("DELETE", f"/subscriptions/{watch.subscription_id}")
    except GraphAPIError as exc:
        if exc.status != 404:
            raise
    store.drop_watch(watch.subscription_id)


def ensure(
    client: GraphClient,
    store: TrackingStore,
    settings: MSGraphMailSettings,
    mailboxes: list[str],
) -> list[str]:
    """One live subscription per mailbox: created when missing, renewed when it nears its
    end. Returns what was done, one line each (no request when nothing is due)."""
    now = datetime.now(timezone.utc)
    by_mailbox = {watch.mailbox: watch for watch in store.watches()}
    done: list[str] = []
    for mailbox in mailboxes:
        watch = by_mailbox.get(mailbox.lower())
        if watch is not None and watch.expires_at <= now:
            store.drop_watch(watch.subscription_id)  # expired: Graph has forgotten it
            watch = None
        if watch is None:
            watch = create(client, store, settings, mailbox)
            done.append(f"created {watch.subscription_id} for {mailbox}")
        elif watch.expires_at - now < RENEW_WITHIN:
            watch = renew(client, store, settings, watch)
            done.append(f"renewed {watch.subscription_id} for {mailbox}")
    return done


def _expiry(body: Any) -> datetime:
    when = (body or {}).get("expirationDateTime")
    return _parse_time(when) if when else datetime.now(timezone.utc) + LIFETIME
