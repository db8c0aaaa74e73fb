"""The outbox of :class:`~msgraph_mail.backend.QueuedEmailBackend` with ``QUEUE = "tasks"``.

One row per queued message, written in the caller's transaction (with django-tasks-db the
task row is too: a transactional outbox). ``status`` is ``queued`` (waiting, or deferred
until ``next_try_at``), ``sending`` (claimed by a worker), ``sent``, ``failed`` or
``unknown`` (the request left and no answer came: maybe sent, never sent again).
"""

from __future__ import annotations

from django.db import models

STATUSES = ("queued", "sending", "sent", "failed", "unknown")


class OutboxMessage(models.Model):
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

    class Meta:
        verbose_name = "outbox message"
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.message_id} ({self.status})"
