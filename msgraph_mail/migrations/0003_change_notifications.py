"""Change notifications: the subscriptions on the sending mailboxes, the notifications received."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("msgraph_mail", "0002_delivery_tracking"),
    ]

    operations = [
        migrations.CreateModel(
            name="Notification",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("subscription_id", models.CharField(db_index=True, max_length=100)),
                ("kind", models.CharField(max_length=40)),
                ("resource", models.TextField(blank=True, default="")),
                ("received_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "ordering": ["id"],
            },
        ),
        migrations.CreateModel(
            name="Subscription",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("subscription_id", models.CharField(max_length=100, unique=True)),
                ("mailbox", models.CharField(db_index=True, max_length=320)),
                ("client_state", models.CharField(max_length=128)),
                ("expires_at", models.DateTimeField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
        ),
    ]
