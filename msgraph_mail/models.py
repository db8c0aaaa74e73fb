"""The outbox of :class:`~msgraph_mail.backend.QueuedEmailBackend` with ``QUEUE = "tasks"``.

One row per queued message, written in the caller's transaction (with django-tasks-db the
task row is too: a transactional outbox). ``status`` is ``queued`` (waiting, or deferred
until ``next_try_at``), ``sending`` (claimed by a worker), ``sent``, ``failed`` or
``unknown`` (the request left and no answer came: maybe sent, never sent again).
"""

from __future__ import annotations

from django.db import models

STATUSES = ("queued", "sending", "sent", "failed", "unknown")


ROUTES = (("mime", "MIME"), ("json", "JSON"), ("draft", "draft"))


class OutboxMessage(models.Model):
    """One queued message. What the admin lists, filters and searches is kept in columns of
    its own (copied from the envelope when it is queued), so a listing of 100,000 rows never
    reads or decodes an envelope."""

    message_id = models.CharField(max_length=255, unique=True)
    # JSON text, not a JSONField: Django 6.1's checks would open a database connection to
    # test JSON support, and manage.py check must stay offline.
    envelope = models.TextField()
    status = models.CharField(
        max_length=16, choices=[(s, s) for s in STATUSES], default="queued", db_index=True
    )
    attempts = models.PositiveIntegerField(default=0)
    next_try_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    request_id = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    subject = models.CharField(max_length=998, blank=True, default="")
    from_address = models.CharField("from", max_length=320, blank=True, default="")
    # The From address (or X-MSGraph-Mailbox) when queued; the mailbox it went through after.
    mailbox = models.CharField(max_length=320, blank=True, default="", db_index=True)
    recipient_count = models.PositiveIntegerField("recipients", default=0)
    first_recipient = models.CharField(max_length=320, blank=True, default="")
    recipients = models.TextField(blank=True, default="")  # every address, one per line
    route = models.CharField(max_length=8, choices=ROUTES, blank=True, default="")
    # One JSON object per line: each attempt's outcome and each manual action, oldest first.
    history = models.TextField(blank=True, default="")

    class Meta:
        verbose_name = "outbox message"
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["-created_at"], name="msgraph_outbox_newest"),
            models.Index(fields=["status", "-created_at"], name="msgraph_outbox_status_newest"),
        ]

    def __str__(self) -> str:
        return f"{self.message_id} ({self.status})"


class RedisOutboxMessage(OutboxMessage):
    """The outbox of ``QUEUE = "celery"``, kept in Redis: a proxy whose only use is to give
    its admin view a place in the admin and permissions of its own (no row is ever stored
    through it)."""

    class Meta:
        proxy = True
        verbose_name = "outbox message (Redis)"
        verbose_name_plural = "outbox messages (Redis)"


class TrackedMessage(models.Model):
    """A message sent with DELIVERY_TRACKING on: what correlates Exchange's reports with it.

    ``tracking_id`` is the value of our ``X-MSGraph-Tracking-Id`` header; ``settled`` turns
    True once every recipient has a final event, and the trace stops asking about it.
    """

    tracking_id = models.CharField(max_length=64, unique=True)
    message_id = models.CharField(max_length=255, blank=True, default="", db_index=True)
    sender = models.CharField(max_length=320)
    mailbox = models.CharField(max_length=320, blank=True, default="")
    recipients = models.TextField()  # JSON list of addresses, lower-case
    outbox_id = models.CharField(max_length=255, blank=True, default="")
    sent_at = models.DateTimeField(db_index=True)
    settled = models.BooleanField(default=False, db_index=True)

    class Meta:
        verbose_name = "tracked message"

    def __str__(self) -> str:
        return f"{self.message_id or self.tracking_id} ({self.sender})"


class DeliveryRecord(models.Model):
    """One reported delivery event: its unique ``key`` is how an event is reported once."""

    key = models.CharField(max_length=500, unique=True)
    tracking_id = models.CharField(max_length=64, db_index=True)
    recipient = models.CharField(max_length=320)
    event_type = models.CharField(max_length=20)
    final = models.BooleanField(default=False)
    event = models.TextField()  # DeliveryEvent.as_dict() as JSON
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "delivery event"
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.event_type} {self.recipient}"


class Suppression(models.Model):
    """An address that hard-bounced (SUPPRESS_BOUNCED): later messages leave it out."""

    address = models.CharField(max_length=320, unique=True)
    status_code = models.CharField(max_length=16, blank=True, default="")
    reason = models.TextField(blank=True, default="")
    message_id = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return str(self.address)


class TrackerState(models.Model):
    """The tracker's cursors (delta links, the trace's budget) and its lease."""

    name = models.CharField(max_length=255, unique=True)
    value = models.TextField(blank=True, default="")
    holder = models.CharField(max_length=100, blank=True, default="")
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return str(self.name)


class Subscription(models.Model):
    """A Graph change-notification subscription on a sending mailbox's Inbox.

    ``client_state`` is the secret Graph returns with every notification; it is checked in
    constant time and never shown (not in ``__str__``, not in the admin, not in logs).
    """

    subscription_id = models.CharField(max_length=100, unique=True)
    mailbox = models.CharField(max_length=320, db_index=True)
    client_state = models.CharField(max_length=128)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.subscription_id} ({self.mailbox})"


class Notification(models.Model):
    """A change or lifecycle notification the webhook view accepted, until the tracker has
    handled it (then the row is deleted)."""

    subscription_id = models.CharField(max_length=100, db_index=True)
    kind = models.CharField(max_length=40)  # "created", or the lifecycle event
    resource = models.TextField(blank=True, default="")
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.subscription_id}"
