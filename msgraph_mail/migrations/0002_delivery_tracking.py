"""Delivery tracking: tracked messages, reported events, the suppression list, tracker state."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("msgraph_mail", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeliveryRecord",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("key", models.CharField(max_length=500, unique=True)),
                ("tracking_id", models.CharField(db_index=True, max_length=64)),
                ("recipient", models.CharField(max_length=320)),
                ("event_type", models.CharField(max_length=20)),
                ("final", models.BooleanField(default=False)),
                ("event", models.TextField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "verbose_name": "delivery event",
                "ordering": ["created_at"],
            },
        ),
        migrations.CreateModel(
            name="Suppression",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("address", models.CharField(max_length=320, unique=True)),
                ("status_code", models.CharField(blank=True, default="", max_length=16)),
                ("reason", models.TextField(blank=True, default="")),
                ("message_id", models.CharField(blank=True, default="", max_length=255)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
        ),
        migrations.CreateModel(
            name="TrackedMessage",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("tracking_id", models.CharField(max_length=64, unique=True)),
                (
                    "message_id",
                    models.CharField(blank=True, db_index=True, default="", max_length=255),
                ),
                ("sender", models.CharField(max_length=320)),
                ("mailbox", models.CharField(blank=True, default="", max_length=320)),
                ("recipients", models.TextField()),
                ("outbox_id", models.CharField(blank=True, default="", max_length=255)),
                ("sent_at", models.DateTimeField(db_index=True)),
                ("settled", models.BooleanField(db_index=True, default=False)),
            ],
            options={
                "verbose_name": "tracked message",
            },
        ),
        migrations.CreateModel(
            name="TrackerState",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(max_length=255, unique=True)),
                ("value", models.TextField(blank=True, default="")),
                ("holder", models.CharField(blank=True, default="", max_length=100)),
                ("expires_at", models.DateTimeField(blank=True, null=True)),
            ],
        ),
    ]
