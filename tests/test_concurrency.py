"""Bulk sends run at Graph's limit: 4 in flight per mailbox, never a 5th, nothing lost."""

from __future__ import annotations

import threading

import pytest
from django.core.mail import EmailMessage, get_connection
from django.test import override_settings

from msgraph_mail.emulator import GraphEmulator


def batch(n: int, from_email: str = "noreply@contoso.com", prefix: str = "m") -> list[EmailMessage]:
    return [EmailMessage(f"{prefix}{i}", "b", from_email, [f"r{i}@example.com"]) for i in range(n)]


def throttled(emulator: GraphEmulator) -> int:
    return sum(r.status == 429 for r in emulator.requests)


def test_one_mailbox_runs_four_at_a_time(emulator: GraphEmulator) -> None:
    emulator.latency = 0.05
    messages = batch(40)
    with override_settings(MSGRAPH_MAIL=emulator.settings(MAX_CONCURRENCY=16)):
        assert get_connection().send_messages(messages) == 40
    assert emulator.max_in_flight("noreply@contoso.com") == 4
    assert throttled(emulator) == 0  # the limit was never exceeded, so Graph never said 429
    assert sorted(m.subject for m in emulator.sent) == sorted(m.subject for m in messages)
    assert all(m.msgraph_status.status == "sent" for m in messages)


def test_mailboxes_do_not_limit_each_other(emulator: GraphEmulator) -> None:
    emulator.latency = 0.05
    messages = batch(16, "noreply@contoso.com", "n") + batch(16, "alice@contoso.com", "a")
    with override_settings(MSGRAPH_MAIL=emulator.settings(MAX_CONCURRENCY=16)):
        assert get_connection().send_messages(messages) == 32
    assert emulator.max_in_flight("noreply@contoso.com") == 4
    assert emulator.max_in_flight("alice@contoso.com") == 4
    assert throttled(emulator) == 0


def test_limit_is_shared_by_backends_and_threads(emulator: GraphEmulator) -> None:
    emulator.latency = 0.03
    batches = [batch(12, prefix=f"t{t}-") for t in range(4)]
    with override_settings(MSGRAPH_MAIL=emulator.settings(MAX_CONCURRENCY=8)):
        threads = [
            threading.Thread(target=get_connection().send_messages, args=(b,)) for b in batches
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(emulator.sent) == 48
    assert emulator.max_in_flight("noreply@contoso.com") <= 4
    assert throttled(emulator) == 0


def test_max_concurrency_bounds_the_threads(emulator: GraphEmulator) -> None:
    emulator.latency = 0.05
    messages = batch(8, "noreply@contoso.com", "n") + batch(8, "alice@contoso.com", "a")
    with override_settings(MSGRAPH_MAIL=emulator.settings(MAX_CONCURRENCY=2)):
        assert get_connection().send_messages(messages) == 16
    assert emulator.max_in_flight() <= 2
    assert emulator.connections <= 3  # 2 senders' connections (+1 if the token came first)


def test_statuses_and_count_stay_exact(emulator: GraphEmulator) -> None:
    messages = batch(10)
    messages[3] = EmailMessage("ghost", "b", "ghost@contoso.com", ["x@example.com"])
    messages[7] = EmailMessage("nobody", "b", "noreply@contoso.com")
    assert get_connection(fail_silently=True).send_messages(messages) == 8
    statuses = [m.msgraph_status.status for m in messages]
    assert statuses.count("sent") == 8
    assert statuses[3] == "failed"
    assert messages[3].msgraph_status.error.mailbox == "ghost@contoso.com"


def test_single_message_uses_no_thread(
    emulator: GraphEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import msgraph_mail.backend

    def no_pool(*args: object, **kwargs: object) -> None:
        raise AssertionError("a single message must not start a thread pool")

    monkeypatch.setattr(msgraph_mail.backend, "ThreadPoolExecutor", no_pool)
    assert get_connection().send_messages(batch(1)) == 1
