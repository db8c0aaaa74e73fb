"""What the tracking stores keep, as values: shared by the database store
(:mod:`.store`) and the Redis one (:mod:`.redis_store`), which import it, not each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .events import DeliveryEvent

__all__ = ["Notice", "Tracked", "Watch", "event_key"]


@dataclass(frozen=True)
class Tracked:
    """A message sent with tracking on, as the send line recorded it."""

    tracking_id: str
    message_id: str | None
    sender: str
    mailbox: str | None
    recipients: tuple[str, ...]
    sent_at: datetime
    outbox_id: str | None = None


@dataclass(frozen=True)
class Watch:
    """A change-notification subscription on one mailbox's Inbox (``client_state`` is its
    secret: kept here and in Graph, never shown)."""

    subscription_id: str
    mailbox: str
    client_state: str = field(repr=False)
    expires_at: datetime


@dataclass(frozen=True)
class Notice:
    """A notification the webhook view accepted: ``kind`` is ``created`` or a lifecycle
    event (``reauthorizationRequired``, ``subscriptionRemoved``, ``missed``)."""

    id: str
    subscription_id: str
    kind: str
    resource: str = ""


def event_key(tracking_id: str, event: DeliveryEvent) -> str:
    """The key an event is reported once under: message, recipient and event type."""
    return f"{tracking_id}|{event.recipient.lower()}|{event.event_type}"
