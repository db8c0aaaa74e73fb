"""The outbox in Django's admin, through Django's test client: both stores, the list's
columns, filters and search, the detail page and its sandboxed preview, resend (failed at
once, unknown only after a confirmation), delete, permissions and the admin's history."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission
from django.core import mail
from django.test import Client, override_settings

from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.models import OutboxMessage
from msgraph_mail.outbox.store import DatabaseStore

from .helpers import IMMEDIATE, QUEUED, inline_image

pytestmark = pytest.mark.django_db

LIST = "/admin/msgraph_mail/outboxmessage/"
REDIS = "/admin/msgraph_mail/redisoutboxmessage/"
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
    b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00"
    b"\x00\x00\x00IEND\xaeB`\x82"
)


@pytest.fixture
def admin(django_user_model: Any) -> Client:
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(user)
    return client


def staff(django_user_model: Any, name: str, *codenames: str) -> Client:
    """A staff member with only these permissions of msgraph_mail."""
    user = django_user_model.objects.create_user(name, f"{name}@example.com", "pw", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="msgraph_mail", codename=codename)
        )
    client = Client()
    client.force_login(user)
    return client


def queue(*messages: mail.EmailMessage) -> list[str]:
    assert mail.get_connection().send_messages(list(messages)) == len(messages)
    return [m.msgraph_status.message_id for m in messages]


def message(subject: str, to: list[str] | None = None, **kwargs: Any) -> mail.EmailMessage:
    return mail.EmailMessage(
        subject, "Body", "noreply@contoso.com", to or ["a@example.com"], **kwargs
    )


def finish(message_id: str, status: str, error: str = "") -> None:
    store = DatabaseStore()
    assert store.claim(message_id)
    store.finish(message_id, status, error=error or f"why {status}", mailbox="noreply@contoso.com")


def subjects(client: Client, url: str = LIST, **query: str) -> list[str]:
    """The subjects a change list shows, in its order."""
    page = client.get(url, query).content.decode()
    return re.findall(r'class="field-subject_label"><a href="[^"]*">([^<]*)</a>', page)


def pk(message_id: str) -> str:
    return quote(str(OutboxMessage.objects.get(message_id=message_id).pk))


# the database store ------------------------------------------------------------------------


def test_the_list_shows_filters_and_searches(admin: Client, dummy_tasks: Any) -> None:
    _, welcome, report = queue(
        message("Invoice 42", ["a@example.com", "b@example.com"], cc=["c@example.com"]),
        message("Welcome", ["newcomer@fabrikam.com"]),
        message("Report", ["boss@example.com"]),
    )
    finish(welcome, "failed", "SenderNotFound: no mailbox")
    page = admin.get(LIST).content.decode()
    for text in ("a@example.com and 2 more", "SenderNotFound: no mailbox", "failed", "queued"):
        assert text in page
    assert subjects(admin) == ["Report", "Welcome", "Invoice 42"]  # newest first
    assert subjects(admin, status__exact="failed") == ["Welcome"]
    assert subjects(admin, q="fabrikam") == ["Welcome"]
    assert subjects(admin, q=report.strip("<>").split("@")[0]) == ["Report"]  # Message-ID
    assert subjects(admin, q="c@example.com") == ["Invoice 42"]  # any recipient, not the first
    assert subjects(admin, route__exact="mime", q="welcome") == ["Welcome"]
    assert subjects(admin, route__exact="json") == []
    assert subjects(admin, mailbox="noreply@contoso.com") == ["Report", "Welcome", "Invoice 42"]
    assert subjects(admin, mailbox="other@contoso.com") == []
    assert admin.get(LIST + "add/").status_code == 403  # mail is queued by sending it


def test_the_list_reads_no_envelope_and_runs_a_fixed_number_of_queries(
    admin: Client, dummy_tasks: Any, django_assert_max_num_queries: Any
) -> None:
    queue(*(message(f"M{n}") for n in range(30)))
    admin.get(LIST)  # the session and the user, cached
    with django_assert_max_num_queries(12) as captured:
        assert admin.get(LIST).status_code == 200
    assert not any(
        '"envelope"' in q["sql"] and "SELECT" in q["sql"] for q in captured.captured_queries
    )


def test_the_detail_shows_the_message_and_a_sandboxed_preview(
    admin: Client, dummy_tasks: Any
) -> None:
    rich = mail.EmailMultiAlternatives(
        "Newsletter",
        "Text body",
        "noreply@contoso.com",
        ["a@example.com"],
        bcc=["hidden@example.com"],
    )
    rich.attach_alternative(
        '<p>Hello</p><img src="cid:logo"><img src="https://tracker.example/p.gif">'
        "<script>alert(1)</script>",
        "text/html",
    )
    rich.attach("report.pdf", b"%PDF-1.4 " + b"x" * 2000, "application/pdf")
    rich.attach(inline_image(PNG, "logo.png", "logo"))
    [message_id] = queue(rich)
    page = admin.get(f"{LIST}{pk(message_id)}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    for expected in (
        "Newsletter",
        "hidden@example.com",
        "report.pdf",
        "application/pdf",
        "2.0",
        "logo.png",
        "Text body",
        "Message-ID",
    ):
        assert expected in text, expected
    assert 'sandbox src="../preview/"' in text
    preview = admin.get(f"{LIST}{pk(message_id)}/preview/")
    assert preview.status_code == 200
    csp = preview["Content-Security-Policy"]
    assert csp.startswith("sandbox;")
    assert "default-src 'none'" in csp
    assert "script-src" not in csp
    assert "img-src data:" in csp
    assert "https:" not in csp
    assert preview["X-Frame-Options"] == "SAMEORIGIN"
    body = preview.content.decode()
    assert "data:image/png;base64," in body
    assert "cid:logo" not in body


def test_a_failed_message_is_resent_and_delivered(
    admin: Client, msgraph_emulator: GraphEmulator
) -> None:
    """End to end: an unknown sender fails for good; the mailbox is created; the admin's
    action resends it, the worker delivers it once, and the admin's history says who did."""
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=IMMEDIATE):
        [message_id] = queue(
            mail.EmailMessage("Welcome", "Body", "sales@contoso.com", ["a@example.com"])
        )
        row = OutboxMessage.objects.get(message_id=message_id)
        assert row.status == "failed"
        msgraph_emulator.add_user("sales@contoso.com")
        answer = admin.post(
            LIST, {"action": "resend_failed", "_selected_action": [row.pk]}, follow=True
        )
        assert "1 message(s) queued again" in answer.content.decode()
    assert [m.subject for m in msgraph_emulator.sent] == ["Welcome"]
    row.refresh_from_db()
    assert row.status == "sent"
    assert [h["outcome"] for h in DatabaseStore().get(message_id).history] == [  # type: ignore[union-attr]
        "failed",
        "resent",
        "sent",
    ]
    [entry] = LogEntry.objects.filter(object_id=str(row.pk))
    assert entry.user.username == "root"
    assert "Resent (it was failed)" in entry.get_change_message()
    detail = admin.get(f"{LIST}{row.pk}/change/").content.decode()
    assert "admin:root" in detail
    assert "Resent (it was failed)" in detail


def test_an_unknown_message_is_resent_only_after_the_confirmation(
    admin: Client, dummy_tasks: Any
) -> None:
    unknown, failed = queue(message("Maybe sent"), message("Refused"))
    finish(unknown, "unknown", "The request timed out")
    finish(failed, "failed")
    dummy_tasks.clear()
    rows = [OutboxMessage.objects.get(message_id=m).pk for m in (unknown, failed)]
    page = admin.post(LIST, {"action": "resend_unknown", "_selected_action": rows})
    text = page.content.decode()
    assert page.status_code == 200
    assert "may have been delivered" in text
    assert "deliver it twice" in text
    assert "Maybe sent" in text
    assert "Refused" not in text  # only unknown ones are listed
    assert OutboxMessage.objects.get(message_id=unknown).status == "unknown"
    assert not dummy_tasks.results
    admin.post(
        LIST,
        {"action": "resend_unknown", "_selected_action": rows, "confirmed": "yes"},
    )
    assert OutboxMessage.objects.get(message_id=unknown).status == "queued"
    assert OutboxMessage.objects.get(message_id=failed).status == "failed"
    assert len(dummy_tasks.results) == 1
    # the failed-only action leaves an unknown message alone
    finish(unknown, "unknown")
    admin.post(LIST, {"action": "resend_failed", "_selected_action": rows[:1]})
    assert OutboxMessage.objects.get(message_id=unknown).status == "unknown"


def test_the_detail_page_resends_with_the_same_confirmation(
    admin: Client, dummy_tasks: Any
) -> None:
    [unknown] = queue(message("Maybe sent"))
    finish(unknown, "unknown")
    url = f"{LIST}{pk(unknown)}/change/"
    assert "Resend (may deliver twice)" in admin.get(url).content.decode()
    confirm = admin.post(url, {"resend": "unknown"})
    assert "deliver it twice" in confirm.content.decode()
    assert OutboxMessage.objects.get(message_id=unknown).status == "unknown"
    admin.post(url, {"resend": "unknown", "confirmed": "yes"})
    assert OutboxMessage.objects.get(message_id=unknown).status == "queued"


def test_permissions(django_user_model: Any, dummy_tasks: Any) -> None:
    [failed] = queue(message("Refused"))
    finish(failed, "failed")
    row = OutboxMessage.objects.get(message_id=failed)
    nobody = staff(django_user_model, "nobody")
    assert nobody.get(LIST).status_code == 403
    assert nobody.get(f"{LIST}{row.pk}/change/").status_code == 403
    assert nobody.get(f"{LIST}{row.pk}/preview/").status_code == 403
    viewer = staff(django_user_model, "viewer", "view_outboxmessage")
    page = viewer.get(LIST).content.decode()
    assert "Refused" in page
    assert "resend_failed" not in page
    assert "delete_selected" not in page
    detail = viewer.get(f"{LIST}{row.pk}/change/").content.decode()
    assert "Refused" in detail
    assert 'id="resend"' not in detail
    assert viewer.post(f"{LIST}{row.pk}/change/", {"resend": "failed"}).status_code == 403
    viewer.post(LIST, {"action": "resend_failed", "_selected_action": [row.pk]})
    assert OutboxMessage.objects.get(message_id=failed).status == "failed"


def test_delete_is_logged(admin: Client, dummy_tasks: Any) -> None:
    [failed] = queue(message("Refused"))
    row = OutboxMessage.objects.get(message_id=failed)
    admin.post(f"{LIST}{row.pk}/delete/", {"post": "yes"})
    assert not OutboxMessage.objects.filter(pk=row.pk).exists()
    assert LogEntry.objects.get(object_id=str(row.pk)).is_deletion()


def test_attempts_are_kept_with_their_outcome(
    admin: Client, msgraph_emulator: GraphEmulator
) -> None:
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=IMMEDIATE):
        [message_id] = queue(message("Hello"))
    stored = DatabaseStore().get(message_id)
    assert stored is not None
    assert stored.status == "sent"
    [attempt] = stored.history
    assert attempt["outcome"] == "sent"
    assert attempt["mailbox"] == "noreply@contoso.com"
    assert attempt["request_id"] == stored.request_id
    detail = admin.get(f"{LIST}{pk(message_id)}/change/").content.decode()
    assert attempt["request_id"] in detail


def test_a_deferred_attempt_keeps_its_reason(admin: Client, dummy_tasks: Any) -> None:
    from datetime import datetime, timedelta, timezone

    [message_id] = queue(message("Throttled"))
    store = DatabaseStore()
    assert store.claim(message_id)
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    store.defer(message_id, later, error="429 TooManyRequests", request_id="req-1")
    [deferred] = store.get(message_id).history  # type: ignore[union-attr]
    assert (deferred["outcome"], deferred["error"], deferred["request_id"]) == (
        "deferred",
        "429 TooManyRequests",
        "req-1",
    )
    page = admin.get(LIST).content.decode()
    assert "deferred" in page
    detail = admin.get(f"{LIST}{pk(message_id)}/change/").content.decode()
    assert "429 TooManyRequests" in detail
    assert "req-1" in detail


def test_a_sent_message_without_its_content_says_so(
    admin: Client, msgraph_emulator: GraphEmulator
) -> None:
    options = {**msgraph_emulator.settings(), "OUTBOX_KEEP_CONTENT": False}
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=IMMEDIATE, MSGRAPH_MAIL=options):
        [message_id] = queue(message("Gone", ["kept@example.com"]))
        detail = admin.get(f"{LIST}{pk(message_id)}/change/").content.decode()
    assert "not kept once it is sent" in detail
    assert "Gone" in detail
    assert "kept@example.com" in admin.get(LIST).content.decode()


# the Redis store (QUEUE = "celery") ----------------------------------------------------------


@pytest.fixture
def celery_outbox(
    redis: str, msgraph_emulator: GraphEmulator, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """QueuedEmailBackend on the Celery engine, its outbox in the test's Redis; the tasks it
    publishes are recorded (message ids), not sent to a broker."""
    pytest.importorskip("celery")
    from msgraph_mail.outbox import celery as engine

    published: list[str] = []
    monkeypatch.setattr(
        engine, "_publish", lambda message_id, *a, **k: published.append(message_id)
    )
    options = {**msgraph_emulator.settings(), "QUEUE": "celery", "REDIS_URL": redis}
    with override_settings(EMAIL_BACKEND=QUEUED, MSGRAPH_MAIL=options):
        yield published


def redis_store() -> Any:
    from msgraph_mail.outbox.deliver import settings_for
    from msgraph_mail.outbox.redis_store import RedisStore

    return RedisStore.for_settings(settings_for(None))


def redis_finish(message_id: str, status: str, error: str = "") -> None:
    store = redis_store()
    assert store.claim(message_id)
    store.finish(message_id, status, error=error or f"why {status}", mailbox="noreply@contoso.com")


def test_the_redis_outbox_is_listed_only_when_celery_is_used(
    admin: Client, dummy_tasks: Any
) -> None:
    assert "Outbox messages (Redis)" not in admin.get("/admin/").content.decode()
    assert "Outbox messages" in admin.get("/admin/").content.decode()


def test_the_redis_outbox_lists_filters_and_searches(
    admin: Client, celery_outbox: list[str]
) -> None:
    _, welcome, report = queue(
        message("Invoice 42", ["a@example.com", "b@example.com"], cc=["c@example.com"]),
        message("Welcome", ["newcomer@fabrikam.com"]),
        message("Report", ["boss@example.com"]),
    )
    assert len(celery_outbox) == 3
    assert "Outbox messages (Redis)" in admin.get("/admin/").content.decode()
    redis_finish(welcome, "failed", "SenderNotFound: no mailbox")
    page = admin.get(REDIS).content.decode()
    for text in ("a@example.com and 2 more", "SenderNotFound: no mailbox", "failed", "queued"):
        assert text in page
    assert subjects(admin, REDIS) == ["Welcome", "Report", "Invoice 42"]  # latest change first
    assert subjects(admin, REDIS, status="failed") == ["Welcome"]
    assert subjects(admin, REDIS, q="fabrikam") == ["Welcome"]
    assert subjects(admin, REDIS, q=report.strip("<>").split("@")[0]) == ["Report"]
    assert subjects(admin, REDIS, q="c@example.com") == ["Invoice 42"]
    assert subjects(admin, REDIS, route="mime", q="welcome") == ["Welcome"]
    assert subjects(admin, REDIS, route="json") == []
    assert len(subjects(admin, REDIS, mailbox="noreply@contoso.com")) == 3
    assert "noreply@contoso.com" in page  # the mailbox filter offers it


def test_the_redis_outbox_detail_preview_resend_and_delete(
    admin: Client, celery_outbox: list[str]
) -> None:
    rich = mail.EmailMultiAlternatives(
        "Newsletter",
        "Text body",
        "noreply@contoso.com",
        ["a@example.com"],
        bcc=["hidden@example.com"],
    )
    rich.attach_alternative('<p>Hi</p><img src="cid:logo">', "text/html")
    rich.attach(inline_image(PNG, "logo.png", "logo"))
    failed, unknown = queue(rich, message("Maybe sent"))
    redis_finish(failed, "failed")
    redis_finish(unknown, "unknown", "The request timed out")
    url = f"{REDIS}{quote(failed)}/change/"
    detail = admin.get(url).content.decode()
    for expected in ("Newsletter", "hidden@example.com", "logo.png", "Text body", "why failed"):
        assert expected in detail
    preview = admin.get(f"{REDIS}{quote(failed)}/preview/")
    assert preview["Content-Security-Policy"].startswith("sandbox;")
    assert "data:image/png;base64," in preview.content.decode()
    # resend the failed one from the list
    celery_outbox.clear()
    admin.post(REDIS, {"action": "resend_failed", "_selected_action": [failed, unknown]})
    assert redis_store().get(failed).status == "queued"
    assert redis_store().get(unknown).status == "unknown"
    assert celery_outbox == [failed]
    [entry] = LogEntry.objects.filter(object_id=failed)
    assert entry.content_type.model == "redisoutboxmessage"
    assert "Resent (it was failed)" in entry.get_change_message()
    # the unknown one only after the confirmation
    confirm = admin.post(REDIS, {"action": "resend_unknown", "_selected_action": [unknown]})
    assert "deliver it twice" in confirm.content.decode()
    assert redis_store().get(unknown).status == "unknown"
    admin.post(
        REDIS, {"action": "resend_unknown", "_selected_action": [unknown], "confirmed": "yes"}
    )
    assert redis_store().get(unknown).status == "queued"
    assert celery_outbox == [failed, unknown]
    # delete
    page = admin.get(f"{REDIS}{quote(unknown)}/delete/")
    assert "Are you sure" in page.content.decode()
    admin.post(f"{REDIS}{quote(unknown)}/delete/")
    assert redis_store().get(unknown) is None
    assert LogEntry.objects.get(object_id=unknown, action_flag=3).is_deletion()
    assert subjects(admin, REDIS) == ["Newsletter"]


def test_the_redis_outbox_permissions(django_user_model: Any, celery_outbox: list[str]) -> None:
    [failed] = queue(message("Refused"))
    redis_finish(failed, "failed")
    nobody = staff(django_user_model, "nobody")
    assert nobody.get(REDIS).status_code == 403
    assert nobody.get(f"{REDIS}{quote(failed)}/change/").status_code == 403
    viewer = staff(django_user_model, "viewer", "view_redisoutboxmessage")
    page = viewer.get(REDIS).content.decode()
    assert "Refused" in page
    assert "resend_failed" not in page
    assert "delete_selected" not in page
    assert (
        viewer.post(REDIS, {"action": "resend_failed", "_selected_action": [failed]}).status_code
        == 403
    )
    assert viewer.post(f"{REDIS}{quote(failed)}/change/", {"resend": "failed"}).status_code == 403
    assert viewer.post(f"{REDIS}{quote(failed)}/delete/").status_code == 403
    assert redis_store().get(failed).status == "failed"


def test_the_detail_shows_the_delivery_events(
    admin: Client, msgraph_emulator: GraphEmulator
) -> None:
    """With delivery tracking, the page lists what Exchange reported per recipient."""
    import time

    from msgraph_mail.conf import load_settings
    from msgraph_mail.tracking.tracker import Tracker

    msgraph_emulator.roles = [
        "Mail.Send",
        "User.Read.All",
        "Mail.Read",
        "ExchangeMessageTrace.Read.All",
    ]
    msgraph_emulator.delivery_delay = 0.05
    options = msgraph_emulator.settings(DELIVERY_TRACKING=["trace", "bounces"])
    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=IMMEDIATE, MSGRAPH_MAIL=options):
        [message_id] = queue(message("Hi", ["ghost@nowhere.invalid", "ok@example.com"]))
        time.sleep(0.2)
        tracker = Tracker(load_settings())
        try:
            tracker.run_once()
        finally:
            tracker.close()
        detail = admin.get(f"{LIST}{pk(message_id)}/change/").content.decode()
    events = detail[detail.index("Delivery events") :]
    assert "bounced" in events
    assert "ghost@nowhere.invalid" in events
    assert "delivered" in events
    assert "ok@example.com" in events


def test_an_encrypted_message_is_shown_with_its_mailers_keys(
    admin: Client, msgraph_emulator: GraphEmulator, dummy_tasks: Any
) -> None:
    """OUTBOX_ENCRYPTION_KEYS: the page opens the content with the mailer's keys; without
    the key it was encrypted with, it says so instead of showing an empty message."""
    from cryptography.fernet import Fernet

    key, other = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    options = {**msgraph_emulator.settings(), "OUTBOX_ENCRYPTION_KEYS": [key]}
    with override_settings(MSGRAPH_MAIL=options):
        sealed = mail.EmailMessage("Sealed", "The launch code is 0000", to=["a@example.com"])
        [message_id] = queue(sealed)
        row = OutboxMessage.objects.get(message_id=message_id)
        assert "launch code" not in row.envelope
        detail = admin.get(f"{LIST}{row.pk}/change/").content.decode()
        assert "The launch code is 0000" in detail  # the text body, from the decrypted MIME
    options["OUTBOX_ENCRYPTION_KEYS"] = [other]
    with override_settings(MSGRAPH_MAIL=options):
        detail = admin.get(f"{LIST}{row.pk}/change/").content.decode()
    assert "not in OUTBOX_ENCRYPTION_KEYS" in detail
    assert "launch code" not in detail
    assert "Sealed" in detail  # what the list shows stays readable
