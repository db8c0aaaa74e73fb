"""Encryption at rest of the outbox (OUTBOX_ENCRYPTION_KEYS): the content of every stored
message sealed in the database and in Redis, old rows still readable, key rotation with
``msgraph_outbox --reencrypt``, a message no key opens failed (never sent), and the keys never
shown in checks, reprs, errors or logs."""

from __future__ import annotations

import base64
import json
import logging
from io import StringIO
from typing import Any

import django
import pytest
from django.core import mail
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

pytest.importorskip("cryptography")

from cryptography.fernet import Fernet

from msgraph_mail.conf import load_settings
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import ConfigurationError, OutboxDecryptionError
from msgraph_mail.models import OutboxMessage
from msgraph_mail.outbox import sealing
from msgraph_mail.outbox.envelope import Envelope, payload_of
from msgraph_mail.outbox.store import DatabaseStore

from .helpers import DUMMY, QUEUED

pytestmark = pytest.mark.django_db

A = Fernet.generate_key().decode()
B = Fernet.generate_key().decode()
C = Fernet.generate_key().decode()
BODY = "The launch code is 0000 (a body that must never be stored in clear)"
ATTACHMENT = b"quarterly-figures-that-must-stay-sealed"


def configured(emulator: GraphEmulator, keys: list[str] | None, **extra: Any) -> Any:
    """QueuedEmailBackend on the tasks engine (a tasks backend that runs nothing), these keys."""
    values = emulator.settings(**extra)
    if keys is not None:
        values["OUTBOX_ENCRYPTION_KEYS"] = keys
    return override_settings(EMAIL_BACKEND=QUEUED, TASKS=DUMMY, MSGRAPH_MAIL=values)


def send(subject: str = "Quarterly figures") -> str:
    message = mail.EmailMessage(subject, BODY, "noreply@contoso.com", ["a@example.com"])
    message.attach("figures.txt", ATTACHMENT, "text/plain")
    assert message.send() == 1
    return str(message.msgraph_status.message_id)


def raw(message_id: str) -> str:
    return str(OutboxMessage.objects.get(message_id=message_id).envelope)


def assert_sealed(text: str) -> None:
    """Neither the body nor the attachment, in clear or in base64, nor any MIME."""
    data = json.loads(text)
    assert data["sealed"]
    assert data["mime"] == ""
    assert data["json_body"] is None
    assert data["draft"] is None
    for secret in (BODY.encode(), ATTACHMENT):
        assert secret.decode() not in text
        assert base64.b64encode(secret).decode()[:24] not in text
    assert "Content-Type" not in text
    assert "launch" not in text


def envelope(message_id: str = "<m@x>", **fields: Any) -> Envelope:
    values: dict[str, Any] = {
        "message_id": message_id,
        "mime": base64.b64encode(BODY.encode()).decode(),
        "from_address": "noreply@contoso.com",
        "mailbox_override": None,
        "recipients": 1,
        "alias": None,
        "priority": "normal",
        "enqueued_at": "2026-12-05T10:00:00+00:00",
        "subject": "Quarterly figures",
        "first_recipient": "a@example.com",
    }
    return Envelope(**{**values, **fields})


def outbox(*args: str) -> str:
    out = StringIO()
    call_command("msgraph_outbox", *args, stdout=out)
    return out.getvalue()


# sealing itself -------------------------------------------------------------------------


def test_every_kind_of_content_is_sealed_and_opened_again() -> None:
    draft = {
        "mime": base64.b64encode(BODY.encode()).decode(),
        "mime_size": 10,
        "message_id": "<m@x>",
        "uploads": [
            {
                "name": "figures.txt",
                "content_type": "text/plain",
                "inline": False,
                "content_id": None,
                "content": base64.b64encode(ATTACHMENT).decode(),
            }
        ],
        "posts": [],
    }
    for original in (
        envelope(),
        envelope(mime="", draft=draft),
        envelope(mime="", json_body=json.dumps({"message": {"body": BODY}})),
    ):
        text = sealing.dump(original, [A])
        assert_sealed(text)
        assert json.loads(text)["subject"] == "Quarterly figures"  # the listing's, readable
        assert sealing.load(text, [A]) == original
        closed = sealing.load(text, [B])
        assert closed.sealed == json.loads(text)["sealed"]
        assert (closed.mime, closed.json_body, closed.draft) == ("", None, None)
        assert closed.described() == ("Quarterly figures", "a@example.com")


def test_without_keys_the_stored_text_is_as_before() -> None:
    text = sealing.dump(envelope(), [])
    assert "sealed" not in json.loads(text)
    assert sealing.load(text, []) == sealing.load(text, [A]) == envelope()


def test_a_sealed_envelope_is_never_sent() -> None:
    closed = sealing.load(sealing.dump(envelope(), [A]), [B])
    with pytest.raises(OutboxDecryptionError) as info:
        payload_of(closed)
    text = str(info.value)
    assert "no key in OUTBOX_ENCRYPTION_KEYS decrypts" in text
    assert "msgraph_outbox --resend <m@x>" in text
    assert A not in text
    assert B not in text
    # written back (a status change, a resend) it keeps its token: a restored key opens it
    assert sealing.load(sealing.dump(closed, [B]), [B, A]) == envelope()
    assert sealing.load(sealing.dump(closed.without_content(), [B]), [A]).sealed is None


def test_reencrypt_says_what_it_did() -> None:
    old = sealing.dump(envelope(), [A])
    assert sealing.reencrypt(sealing.dump(envelope(), [B]), [B, A]) is None  # current
    rotated = sealing.reencrypt(old, [B, A])
    assert rotated is not None
    assert sealing.load(rotated, [B]) == envelope()
    clear = sealing.reencrypt(sealing.dump(envelope(), []), [B])
    assert clear is not None
    assert_sealed(clear)
    assert sealing.reencrypt(sealing.dump(envelope().without_content(), []), [B]) is None
    with pytest.raises(OutboxDecryptionError):
        sealing.reencrypt(old, [B, C])


# the database store, through django.core.mail --------------------------------------------


def test_the_database_keeps_the_content_sealed(msgraph_emulator: GraphEmulator) -> None:
    with configured(msgraph_emulator, [A]):
        message_id = send()
        assert_sealed(raw(message_id))
        from msgraph_mail.outbox.engines import store_for

        found = store_for(load_settings()).get(message_id)
    assert found is not None
    assert found.envelope.sealed is None
    assert BODY.encode() in base64.b64decode(payload_of(found.envelope).body)
    # without the keys the listing still shows what it always did
    with configured(msgraph_emulator, None):
        listed = outbox()
    assert message_id in listed
    assert '"Quarterly figures" to a@example.com' in listed
    assert BODY not in listed


def test_the_worker_opens_and_sends_it(msgraph_emulator: GraphEmulator) -> None:
    from msgraph_mail.outbox.tasks import send_envelope

    with configured(msgraph_emulator, [A]):
        message_id = send()
        assert send_envelope.call(message_id, 1) == "sent"
    [sent] = msgraph_emulator.sent
    assert sent.header("Message-ID") == message_id
    assert BODY in sent.text
    assert OutboxMessage.objects.get(message_id=message_id).status == "sent"


def test_rows_written_before_keys_were_configured_are_still_read(
    msgraph_emulator: GraphEmulator,
) -> None:
    from msgraph_mail.outbox.tasks import send_envelope

    with configured(msgraph_emulator, None):
        message_id = send()
    assert "sealed" not in json.loads(raw(message_id))
    with configured(msgraph_emulator, [A]):
        assert send_envelope.call(message_id, 1) == "sent"
    assert BODY in msgraph_emulator.sent[0].text


def test_rotation_and_reencrypt(msgraph_emulator: GraphEmulator) -> None:
    with configured(msgraph_emulator, None):
        clear = send("clear")
    with configured(msgraph_emulator, [A]):
        old = send("old key")
    with configured(msgraph_emulator, [B]):
        current = send("new key")
    with configured(msgraph_emulator, [C]):
        lost = send("a key nobody has any more")
    assert DatabaseStore(keys=[B, A]).get(old).envelope.sealed is None  # type: ignore[union-attr]
    assert DatabaseStore(keys=[B]).get(old).envelope.sealed is not None  # type: ignore[union-attr]
    untouched = raw(current)
    with configured(msgraph_emulator, [B, A]):
        text = outbox("--reencrypt")
    counts = "Re-encrypted 2 message(s) under the first key; 1 already current; 1 not decryptable"
    assert counts in text
    assert "Not decryptable (add the key they were encrypted with back to" in text
    assert text.rstrip().endswith(lost)
    assert raw(current) == untouched
    store = DatabaseStore(keys=[B])
    for message_id in (clear, old, current):
        assert_sealed(raw(message_id))
        opened = store.get(message_id)
        assert opened is not None
        assert opened.envelope.sealed is None
    assert store.get(lost).envelope.sealed is not None  # type: ignore[union-attr]
    with configured(msgraph_emulator, [B, A]):
        again = outbox("--reencrypt")
    assert "Re-encrypted 0 message(s) under the first key; 3 already current; 1 not" in again


def test_reencrypt_never_overwrites_a_change_made_meanwhile(
    msgraph_emulator: GraphEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with configured(msgraph_emulator, [A]):
        message_id = send()
    worker = DatabaseStore(keys=[A])
    changed = sealing.dump(worker.get(message_id).envelope.without_content(), [A])  # type: ignore[union-attr]
    real = sealing.reencrypt
    calls: list[str] = []

    def meanwhile(text: str, keys: Any) -> str | None:
        if not calls:  # between the read and the write, a worker drops the content
            OutboxMessage.objects.filter(message_id=message_id).update(envelope=changed)
        calls.append(text)
        return real(text, keys)

    monkeypatch.setattr(sealing, "reencrypt", meanwhile)
    done = sealing.reencrypt_store(DatabaseStore(), [B, A])
    assert len(calls) == 2
    assert calls[1] == changed
    assert (done.rewritten, done.current, done.skipped) == ([], [message_id], [])
    assert raw(message_id) == changed


def test_reencrypt_needs_keys(msgraph_emulator: GraphEmulator) -> None:
    with configured(msgraph_emulator, None), pytest.raises(CommandError, match="no key"):
        outbox("--reencrypt")
    with pytest.raises(ConfigurationError):
        sealing.reencrypt_store(DatabaseStore(), [])


def test_a_message_no_key_opens_fails_clearly_and_nothing_is_sent(
    msgraph_emulator: GraphEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    from msgraph_mail import signals
    from msgraph_mail.outbox.tasks import send_envelope

    failures: list[Any] = []

    def record(sender: Any, **kwargs: Any) -> None:
        failures.append(kwargs["status"])

    signals.message_failed.connect(record)
    caplog.set_level(logging.DEBUG, logger="msgraph_mail")
    try:
        with configured(msgraph_emulator, [A]):
            message_id = send()
        with configured(msgraph_emulator, [B]):  # the old key dropped too early
            assert send_envelope.call(message_id, 1) == "failed"
    finally:
        signals.message_failed.disconnect(record)
    assert msgraph_emulator.count() == 0  # not even a token: nothing reached Graph
    assert msgraph_emulator.sent == []
    row = OutboxMessage.objects.get(message_id=message_id)
    assert row.status == "failed"
    assert "no key in OUTBOX_ENCRYPTION_KEYS decrypts" in row.last_error
    assert "(the old key) back to OUTBOX_ENCRYPTION_KEYS" in row.last_error
    assert f"msgraph_outbox --resend {message_id}" in row.last_error
    assert_sealed(row.envelope)  # still sealed, so the old key can still open it
    assert [type(s.error).__name__ for s in failures] == ["OutboxDecryptionError"]
    assert A not in caplog.text
    assert B not in caplog.text
    # the old key back, after the new one: the resend delivers it, intact
    with configured(msgraph_emulator, [B, A]):
        assert "Queued" in outbox("--resend", message_id)
        assert send_envelope.call(message_id, 1) == "sent"
    assert BODY in msgraph_emulator.sent[0].text


@pytest.mark.skipif(django.VERSION < (6, 1), reason="MAILERS is Django 6.1")
def test_mailers_options_reach_the_store(msgraph_emulator: GraphEmulator) -> None:
    from msgraph_mail.outbox.deliver import settings_for
    from msgraph_mail.outbox.engines import store_for

    mailers = {"default": {"BACKEND": QUEUED, "OPTIONS": {"outbox_encryption_keys": [A]}}}
    with override_settings(MAILERS=mailers, TASKS=DUMMY, MSGRAPH_MAIL=msgraph_emulator.settings()):
        message_id = send()
        store = store_for(settings_for("default"))
    assert [key.get_secret_value() for key in store.keys] == [A]  # type: ignore[attr-defined]
    assert_sealed(raw(message_id))


# the Redis store ---------------------------------------------------------------------------


@pytest.fixture
def redis_store(redis: str) -> Any:
    import redis as redis_py

    from msgraph_mail.outbox.redis_store import RedisStore

    return lambda keys: RedisStore(redis_py.Redis.from_url(redis), keys=keys)


def test_redis_keeps_the_content_sealed(redis_store: Any) -> None:
    store = redis_store([A])
    store.add(envelope())
    stored = store.client.hget(store.message_key("<m@x>"), "envelope").decode()
    assert_sealed(stored)
    assert store.get("<m@x>").envelope == envelope()
    assert store.claim("<m@x>")
    store.finish("<m@x>", "failed", error="refused")
    assert store.get("<m@x>").envelope == envelope()  # a status change keeps it sealed
    assert_sealed(store.client.hget(store.message_key("<m@x>"), "envelope").decode())
    closed = redis_store([B]).list()
    assert [m.envelope.sealed is not None for m in closed] == [True]
    assert closed[0].envelope.described() == ("Quarterly figures", "a@example.com")


def test_redis_old_records_and_rotation(
    msgraph_emulator: GraphEmulator, redis: str, redis_store: Any
) -> None:
    redis_store([]).add(envelope("<clear@x>"))
    redis_store([A]).add(envelope("<old@x>"))
    redis_store([C]).add(envelope("<lost@x>"))
    old = redis_store([A])
    assert old.claim("<old@x>")
    old.finish("<old@x>", "failed", error="refused")
    ttl = old.client.ttl(old.message_key("<old@x>"))
    assert ttl > 0
    assert redis_store([A]).get("<clear@x>").envelope == envelope("<clear@x>")
    assert redis_store([B, A]).get("<old@x>").envelope == envelope("<old@x>")
    settings = msgraph_emulator.settings(
        QUEUE="celery", REDIS_URL=redis, OUTBOX_ENCRYPTION_KEYS=[B, A]
    )
    with override_settings(EMAIL_BACKEND=QUEUED, MSGRAPH_MAIL=settings):
        text = outbox("--reencrypt")
    assert "Re-encrypted 2 message(s) under the first key; 0 already current; 1 not" in text
    assert text.rstrip().endswith("<lost@x>")
    new = redis_store([B])
    for message_id in ("<clear@x>", "<old@x>"):
        assert new.get(message_id).envelope == envelope(message_id)
        assert_sealed(new.client.hget(new.message_key(message_id), "envelope").decode())
    assert 0 < new.client.ttl(new.message_key("<old@x>")) <= ttl  # its expiry kept
    assert new.get("<lost@x>").envelope.sealed is not None


def test_redis_reencrypt_is_a_compare_and_set(
    redis_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = redis_store([A])
    store.add(envelope())
    key = store.message_key("<m@x>")
    changed = sealing.dump(envelope(subject="changed"), [A])
    real = sealing.reencrypt
    calls: list[str] = []

    def meanwhile(text: str, keys: Any) -> str | None:
        if not calls:
            store.client.hset(key, "envelope", changed)
        calls.append(text)
        return real(text, keys)

    monkeypatch.setattr(sealing, "reencrypt", meanwhile)
    done = sealing.reencrypt_store(store, [B, A])
    assert len(calls) == 2
    assert calls[1] == changed
    assert done.rewritten == ["<m@x>"]
    assert redis_store([B]).get("<m@x>").envelope == envelope(subject="changed")


# settings and checks -------------------------------------------------------------------


def check_output(**values: Any) -> tuple[list[str], str]:
    settings: dict[str, Any] = {
        "MSGRAPH_MAIL": values,
        "DEFAULT_FROM_EMAIL": "a@contoso.com",
        "TASKS": {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}},
    }
    if django.VERSION >= (6, 1):
        settings["MAILERS"] = {"default": {"BACKEND": QUEUED}}
    else:
        settings["EMAIL_BACKEND"] = QUEUED
    with override_settings(**settings):
        found = run_checks(tags=["mail"])
    return [m.id or "" for m in found], " ".join(f"{m} {m.hint}" for m in found)


GOOD = {
    "TENANT_ID": "contoso.onmicrosoft.com",
    "CLIENT_ID": "66666666-7777-8888-9999-000000000000",
    "CLIENT_SECRET": "s3cret",
}


def test_a_malformed_key_is_a_check_error_naming_its_position() -> None:
    bad = A[:-6] + "AAAA"  # 33 bytes, not 32
    found, text = check_output(**GOOD, OUTBOX_ENCRYPTION_KEYS=[A, bad])
    assert "msgraph_mail.E024" in found
    assert "MSGRAPH_MAIL['OUTBOX_ENCRYPTION_KEYS'][1] is not a Fernet key" in text
    assert "key number 2 of the list" in text
    assert "Fernet.generate_key().decode()" in text
    assert A not in text
    assert bad not in text
    assert A[:20] not in text
    invalid = {**GOOD, "OUTBOX_ENCRYPTION_KEYS": ["not a key"]}
    with override_settings(MSGRAPH_MAIL=invalid), pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "not a key" not in str(info.value)
    found, text = check_output(**GOOD, OUTBOX_ENCRYPTION_KEYS=A)
    assert "msgraph_mail.E009" in found
    assert "not one string" in text
    assert A not in text
    assert check_output(**GOOD, OUTBOX_ENCRYPTION_KEYS=[B, A.encode()])[0] == []


def test_keys_without_cryptography_are_a_check_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from msgraph_mail import conf

    real = conf._installed
    monkeypatch.setattr(conf, "_installed", lambda name: name != "cryptography" and real(name))
    found, text = check_output(**GOOD, OUTBOX_ENCRYPTION_KEYS=[A])
    assert "msgraph_mail.E025" in found
    assert 'pip install "django-msgraph-mailer[encryption]"' in text
    assert A not in text
    assert check_output(**GOOD)[0] == []  # no keys: cryptography is not needed


def test_keys_never_show_in_reprs() -> None:
    with override_settings(MSGRAPH_MAIL={**GOOD, "OUTBOX_ENCRYPTION_KEYS": [A, B]}):
        settings = load_settings()
    assert A not in repr(settings)
    assert B not in repr(settings)
    assert A not in str(settings)
    assert A not in repr(DatabaseStore(keys=settings.outbox_encryption_keys).__dict__)
