"""Signals for a delivery log: sent by the backend for every outcome, never breaking a send."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core import mail

from msgraph_mail.backend import EmailBackend
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import DeliveryUnknown, SenderNotFound
from msgraph_mail.signals import message_failed, message_sent, message_unknown


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every signal the backend sends during the test, in order."""
    log: list[tuple[str, dict[str, Any]]] = []
    receivers = {}
    for name, signal in (
        ("sent", message_sent),
        ("failed", message_failed),
        ("unknown", message_unknown),
    ):

        def record(sender: type, name: str = name, **kwargs: Any) -> None:
            log.append((name, {"sender": sender, **kwargs}))

        receivers[name] = record
        signal.connect(record)
    yield log
    for name, signal in (
        ("sent", message_sent),
        ("failed", message_failed),
        ("unknown", message_unknown),
    ):
        signal.disconnect(receivers[name])


def test_sent(emulator: GraphEmulator, received: list[tuple[str, dict[str, Any]]]) -> None:
    message = mail.EmailMessage("Hi", "x", "noreply@contoso.com", ["a@example.com"])
    assert message.send() == 1
    [(name, kwargs)] = received
    assert name == "sent"
    assert kwargs["sender"] is EmailBackend
    assert kwargs["message"] is message
    assert kwargs["status"] is message.msgraph_status
    assert kwargs["message_id"] == message.msgraph_status.message_id
    assert kwargs["message_id"].startswith("<")
    assert kwargs["mailbox"] == "noreply@contoso.com"
    assert kwargs["request_id"] == emulator.requests[-1].request_id


def test_failed(emulator: GraphEmulator, received: list[tuple[str, dict[str, Any]]]) -> None:
    message = mail.EmailMessage("Hi", "x", "nobody@contoso.com", ["a@example.com"])
    with pytest.raises(SenderNotFound):
        message.send()
    [(name, kwargs)] = received
    assert name == "failed"
    assert isinstance(kwargs["status"].error, SenderNotFound)


def test_unknown(emulator: GraphEmulator, received: list[tuple[str, dict[str, Any]]]) -> None:
    emulator.fail_next("gateway_timeout")  # delivered, then 504
    with pytest.raises(DeliveryUnknown):
        mail.send_mail("Hi", "x", "noreply@contoso.com", ["a@example.com"])
    assert [name for name, _ in received] == ["unknown"]


def test_one_signal_per_message_of_a_batch(
    emulator: GraphEmulator, received: list[tuple[str, dict[str, Any]]]
) -> None:
    batch = [mail.EmailMessage(f"m{i}", "x", None, [f"r{i}@example.com"]) for i in range(6)]
    batch.append(mail.EmailMessage("nobody", "x", None, []))  # skipped: no request, no signal
    assert mail.get_connection().send_messages(batch) == 6
    assert sorted(kwargs["message"].subject for _, kwargs in received) == [
        f"m{i}" for i in range(6)
    ]


def test_a_failing_receiver_breaks_nothing(
    emulator: GraphEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(sender: type, **kwargs: Any) -> None:
        raise RuntimeError("the delivery log is down")

    message_sent.connect(broken)
    try:
        assert mail.send_mail("Hi", "x", None, ["a@example.com"]) == 1
    finally:
        message_sent.disconnect(broken)
    # Sent once, not repeated. With DEBUG off Django mails the receiver's error to ADMINS
    # (its django.dispatch log): that mail goes out once too, without a signal of its own,
    # instead of meeting the broken receiver again and again.
    subjects = [message.subject for message in emulator.sent]
    assert subjects.count("Hi") == 1
    assert len(subjects) <= 2
    assert "the delivery log is down" in caplog.text
