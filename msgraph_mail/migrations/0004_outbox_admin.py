"""The outbox admin: the listing's own columns (filled from the envelopes of queued rows),
the attempts history, the newest-first indexes and the Redis outbox's proxy model."""

import json
from typing import Any

from django.db import migrations, models


def fill_columns(apps: Any, schema_editor: Any) -> None:
    """Rows queued before 0004: the listing's columns, read from their envelopes."""
    OutboxMessage = apps.get_model("msgraph_mail", "OutboxMessage")
    rows = OutboxMessage.objects.using(schema_editor.connection.alias).filter(route="")
    for row in rows.iterator(chunk_size=500):
        try:
            data = json.loads(row.envelope)
        except ValueError:
            continue
        addresses = data.get("recipient_addresses") or []
        row.subject = str(data.get("subject") or "")[:998]
        row.from_address = str(data.get("from_address") or "")[:320]
        row.mailbox = str(data.get("mailbox_override") or row.from_address)[:320]
        row.recipient_count = int(data.get("recipients") or len(addresses))
        row.first_recipient = str(data.get("first_recipient") or "")[:320]
        row.recipients = "\n".join(addresses)
        row.route = "draft" if data.get("draft") else "json" if data.get("json_body") else "mime"
        row.save(
            update_fields=[
                "subject",
                "from_address",
                "mailbox",
                "recipient_count",
                "first_recipient",
                "recipients",
                "route",
            ]
        )


class Migration(migrations.Migration):
    dependencies = [
        ("msgraph_mail", "0003_change_notifications"),
    ]

    operations = [
        migrations.CreateModel(
            name="RedisOutboxMessage",
            fields=[],
            options={
                "verbose_name": "outbox message (Redis)",
                "verbose_name_plural": "outbox messages (Redis)",
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("msgraph_mail.outboxmessage",),
        ),
        migrations.AddField(
            model_name="outboxmessage",
            name="first_recipient",
            field=models.CharField(blank=True, default="", max_length=320),
        ),
        migrations.AddField(
            model_name="outboxmessage",
            name="from_address",
            field=models.CharField(blank=True, default="", max_length=320, verbose_name="from"),
        ),
        migrations.AddField(
            model_name="outboxmessage",
            name="history",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.AddField(
            model_name="outboxmessage",
            name="mailbox",
            field=models.CharField(blank=True, db_index=True, default="", max_length=320),
        ),
        migrations.AddField(
            model_name="outboxmessage",
            name="recipient_count",
            field=models.PositiveIntegerField(default=0, verbose_name="recipients"),
        ),
        migrations.AddField(
            model_name="outboxmessage",
            name="recipients",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.AddField(
            model_name="outboxmessage",
            name="route",
            field=models.CharField(
                blank=True,
                choices=[("mime", "MIME"), ("json", "JSON"), ("draft", "draft")],
                default="",
                max_length=8,
            ),
        ),
        migrations.AddField(
            model_name="outboxmessage",
            name="subject",
            field=models.CharField(blank=True, default="", max_length=998),
        ),
        migrations.AddIndex(
            model_name="outboxmessage",
            index=models.Index(fields=["-created_at"], name="msgraph_outbox_newest"),
        ),
        migrations.AddIndex(
            model_name="outboxmessage",
            index=models.Index(
                fields=["status", "-created_at"], name="msgraph_outbox_status_newest"
            ),
        ),
        migrations.RunPython(fill_columns, migrations.RunPython.noop),
    ]
