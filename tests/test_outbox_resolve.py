"""RESOLVE_UNKNOWN: an unknown outcome is looked up by its Message-ID in the mailbox's Sent
Items (never sent again): found -> sent, not found -> stays unknown; the emulator's Sent
Items listing over HTTP; both engines' task bodies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.core import mail
from django.test import override_settings

from msgraph_mail import signals
from msgraph_mail.conf import load_settings
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.exceptions import SentItemsDenied
from msgraph_mail.graph import GraphClient
from msgraph_mail.outbox.deliver import RESOLVE_CHECKS
from msgraph_mail.outbox.store import DatabaseStore

from .helpers import DUMMY, QUEUED

pytestmark = pytest.mark.django_db

READ = "Mail.ReadBasic.All"


@pytest.fixture
def dummy(msgraph_emulator: GraphEmulator) -> Iterator[Any]:
    """Django's tasks with the dummy backend: the test runs each enqueued task as a worker."""
    from msgraph_mail.outbox.tasks import send_envelope

    with override_settings(
        EMAIL_BACKEND=QUEUED,
        TASKS=DUMMY,
        MSGRAPH_MAIL=msgraph_emulator.settings(RESOLVE_UNKNOWN=0.01),
    ):
        backend = send_envelope.get_backend()
        backend.clear()
        yield backend
        backend.clear()


def queue_one(subject: str = "Lost answer") -> str:
    message = mail.EmailMessage(subject, "x", "noreply@contoso.com", ["a@example.com"])
    assert mail.get_connection().send_messages([message]) == 1
    return str(message.msgraph_status.message_id)


def run_next(dummy: Any) -> tuple[list[Any], str]:
    """Take the one enqueued task and run it as a worker would: (its args, its result)."""
    from msgraph_mail.outbox.tasks import send_envelope

    assert len(dummy.results) == 1, [r.args for r in dummy.results]
    result = dummy.results[0]
    dummy.clear()
    return list(result.args), send_envelope.call(*result.args)


def sent_signals() -> tuple[list[dict[str, Any]], Any]:
    received: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        received.append(kwargs)

    return received, receiver


def test_a_lost_answer_is_resolved_as_sent(msgraph_emulator: GraphEmulator, dummy: Any) -> None:
    msgraph_emulator.roles.append(READ)
    received, receiver = sent_signals()
    signals.message_sent.connect(receiver)
    try:
        message_id = queue_one()
        msgraph_emulator.fail_next("gateway_timeout")  # delivered, then 504
        args, outcome = run_next(dummy)
        assert (args, outcome) == ([message_id, 1], "unknown")
        assert DatabaseStore().get(message_id).status == "unknown"  # type: ignore[union-attr]
        assert dummy.results[0].task.run_after is not None  # after RESOLVE_UNKNOWN
        args, outcome = run_next(dummy)
        assert (args, outcome) == ([message_id, 1, 1], "resolve:sent")
    finally:
        signals.message_sent.disconnect(receiver)
    stored = DatabaseStore().get(message_id)
    assert stored is not None
    assert stored.status == "sent"
    assert "found in the Sent Items of noreply@contoso.com" in (stored.last_error or "")
    assert msgraph_emulator.count("sendMail") == 1
    assert len(msgraph_emulator.sent) == 1
    assert [r["message_id"] for r in received] == [message_id]
    assert dummy.results == []  # nothing more to do


def test_a_rewritten_message_id_stays_unknown_and_is_never_resent(
    msgraph_emulator: GraphEmulator, dummy: Any
) -> None:
    msgraph_emulator.roles.append(READ)
    msgraph_emulator.rewrite_message_ids = True
    message_id = queue_one()
    msgraph_emulator.fail_next("gateway_timeout")
    assert run_next(dummy)[1] == "unknown"
    for check in range(1, RESOLVE_CHECKS + 1):
        args, outcome = run_next(dummy)
        assert args == [message_id, 1, check]
        assert outcome == ("resolve:again" if check < RESOLVE_CHECKS else "resolve:unknown")
    assert dummy.results == []
    stored = DatabaseStore().get(message_id)
    assert stored is not None
    assert stored.status == "unknown"
    assert "504" in (stored.last_error or "")  # the original error is kept
    assert "not found in the Sent Items" in (stored.last_error or "")
    assert "it is not sent again" in (stored.last_error or "")
    assert msgraph_emulator.count("sendMail") == 1
    assert msgraph_emulator.count("sent_items") == RESOLVE_CHECKS


def test_without_the_permission_it_stays_unknown_with_a_clear_error(
    msgraph_emulator: GraphEmulator, dummy: Any
) -> None:
    message_id = queue_one()
    msgraph_emulator.fail_next("gateway_timeout")
    assert run_next(dummy)[1] == "unknown"
    assert run_next(dummy)[1] == "resolve:unknown"  # no second look: a 403 is lasting
    assert dummy.results == []
    stored = DatabaseStore().get(message_id)
    assert stored is not None
    assert stored.status == "unknown"
    assert "Mail.ReadBasic.All" in (stored.last_error or "")
    assert "Application Mail.ReadBasic" in (stored.last_error or "")
    assert msgraph_emulator.count("sendMail") == 1


def test_resolution_is_off_by_default(msgraph_emulator: GraphEmulator) -> None:
    from msgraph_mail.outbox.tasks import send_envelope

    with override_settings(EMAIL_BACKEND=QUEUED, TASKS=DUMMY):
        backend = send_envelope.get_backend()
        backend.clear()
        queue_one()
        msgraph_emulator.fail_next("gateway_timeout")
        assert run_next(backend)[1] == "unknown"
        assert backend.results == []


def test_a_message_resent_meanwhile_is_left_alone(
    msgraph_emulator: GraphEmulator, dummy: Any
) -> None:
    msgraph_emulator.roles.append(READ)
    message_id = queue_one()
    msgraph_emulator.fail_next("gateway_timeout")
    assert run_next(dummy)[1] == "unknown"
    assert DatabaseStore().requeue(message_id, force=True)  # msgraph_outbox --resend --force
    assert run_next(dummy)[1] == "resolve:skipped"
    assert DatabaseStore().get(message_id).status == "queued"  # type: ignore[union-attr]


# the Celery engine's task body, against Redis ----------------------------------------------


def test_celery_engine_resolves_through_the_redis_store(
    msgraph_emulator: GraphEmulator, redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("celery")
    from msgraph_mail.outbox import celery as engine

    published: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        engine,
        "_publish",
        lambda *args, **kwargs: published.append((*args, kwargs.get("resolve_check", 0))),
    )
    msgraph_emulator.roles.append(READ)
    config = msgraph_emulator.settings(QUEUE="celery", REDIS_URL=redis, RESOLVE_UNKNOWN=0.01)
    with override_settings(EMAIL_BACKEND=QUEUED, MSGRAPH_MAIL=config):
        message_id = queue_one()
        assert published == [(message_id, 1, None, 0.0, 0)]
        published.clear()
        msgraph_emulator.fail_next("gateway_timeout")
        assert engine.run(message_id, 1, None) == "unknown"
        assert published == [(message_id, 1, None, 0.01, 1)]
        assert engine.run(message_id, 1, None, resolve_check=1) == "resolve:sent"
        store = engine.store_for(None)
        record = store.get(message_id)
        assert record is not None
        assert record.status == "sent"
        assert store.counts()["unknown"] == 0
        assert engine.run(message_id, 1, None) == "sent"  # a duplicate run: nothing sent
    assert msgraph_emulator.count("sendMail") == 1


# the emulator's Sent Items, over HTTP --------------------------------------------------------


def client_for(emulator: GraphEmulator) -> GraphClient:
    with override_settings(MSGRAPH_MAIL=emulator.settings()):
        return GraphClient(load_settings())


def send(emulator: GraphEmulator, message_id: str, **kw: Any) -> None:
    with override_settings(
        MSGRAPH_MAIL=emulator.settings(), EMAIL_BACKEND="msgraph_mail.backend.EmailBackend"
    ):
        message = mail.EmailMessage(
            "Hi", "x", "noreply@contoso.com", ["a@example.com"], headers={"Message-ID": message_id}
        )
        assert message.send() == 1


def test_sent_items_lists_what_was_sent_by_message_id(msgraph_emulator: GraphEmulator) -> None:
    msgraph_emulator.roles.append(READ)
    send(msgraph_emulator, "<o'brien.1@contoso.com>")
    send(msgraph_emulator, "<two@contoso.com>")
    client = client_for(msgraph_emulator)
    found = client.find_sent("noreply@contoso.com", "<o'brien.1@contoso.com>")
    assert found is not None
    assert set(found) == {"id", "internetMessageId", "sentDateTime"}
    assert found["internetMessageId"] == "<o'brien.1@contoso.com>"
    assert client.find_sent("noreply@contoso.com", "<three@contoso.com>") is None
    assert client.find_sent("alice@contoso.com", "<two@contoso.com>") is None  # other mailbox
    recorded = msgraph_emulator.requests[-1]
    assert recorded.path.endswith("/mailFolders/sentitems/messages")
    assert recorded.query["$filter"] == "internetMessageId eq '<two@contoso.com>'"
    # the well-known name in any case, no $filter: everything, newest first, default fields
    listed = client.request("GET", "/users/noreply@contoso.com/mailFolders/SentItems/messages")
    assert [m["internetMessageId"] for m in listed.body["value"]] == [
        "<two@contoso.com>",
        "<o'brien.1@contoso.com>",
    ]
    assert [i.internet_message_id for i in msgraph_emulator.sent_items("noreply@contoso.com")] == [
        "<o'brien.1@contoso.com>",
        "<two@contoso.com>",
    ]
    client.close()


def test_sent_items_needs_a_read_permission(msgraph_emulator: GraphEmulator) -> None:
    send(msgraph_emulator, "<one@contoso.com>")
    client = client_for(msgraph_emulator)
    with pytest.raises(SentItemsDenied) as denied:
        client.find_sent("noreply@contoso.com", "<one@contoso.com>")
    assert denied.value.status == 403
    assert denied.value.code == "ErrorAccessDenied"
    assert "Mail.ReadBasic.All" in str(denied.value)
    msgraph_emulator.rbac_read_scope = {"noreply@contoso.com"}  # "Application Mail.ReadBasic"
    assert client.find_sent("noreply@contoso.com", "<one@contoso.com>") is not None
    with pytest.raises(SentItemsDenied):
        client.find_sent("alice@contoso.com", "<one@contoso.com>")
    client.close()


def test_sent_items_refuses_what_graph_refuses(msgraph_emulator: GraphEmulator) -> None:
    msgraph_emulator.roles.append(READ)
    client = client_for(msgraph_emulator)
    token = client.request("GET", "/users/noreply@contoso.com")  # fetch a token
    assert token.status == 200
    base = f"{msgraph_emulator.url}/v1.0/users/noreply@contoso.com/mailFolders"
    from msgraph_mail.auth import tokens

    bearer = {"Authorization": f"Bearer {tokens.get(client.settings, client.session)}"}
    bad_filter = requests.get(
        f"{base}/sentitems/messages",
        params={"$filter": "subject eq 'x'"},
        headers=bearer,
        timeout=10,
    )
    assert bad_filter.status_code == 400
    bad_select = requests.get(
        f"{base}/sentitems/messages", params={"$select": "body"}, headers=bearer, timeout=10
    )
    assert bad_select.status_code == 400
    other = requests.get(f"{base}/inbox/messages", headers=bearer, timeout=10)
    assert other.status_code == 400
    client.close()


def test_rewritten_message_ids_are_not_found(msgraph_emulator: GraphEmulator) -> None:
    msgraph_emulator.roles.append(READ)
    msgraph_emulator.rewrite_message_ids = True
    send(msgraph_emulator, "<ours@contoso.com>")
    client = client_for(msgraph_emulator)
    assert client.find_sent("noreply@contoso.com", "<ours@contoso.com>") is None
    (item,) = msgraph_emulator.sent_items("noreply@contoso.com")
    assert item.internet_message_id != "<ours@contoso.com>"
    client.close()


# msgraph_diagnose --send-test: does the tenant keep our Message-ID? ----------------------------


def diagnose_send_test(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import json
    from io import StringIO

    from django.core.management import call_command

    from msgraph_mail import diagnose

    monkeypatch.setattr(diagnose, "SENT_ITEMS_WAITS", (0.01, 0.02))
    out = StringIO()
    call_command("msgraph_diagnose", "--json", "--send-test", "alice@contoso.com", stdout=out)
    found = json.loads(out.getvalue())
    [finding] = [f for f in found if f["topic"] == "Message-ID kept in Sent Items"]
    return dict(finding)


def test_diagnose_says_unknown_outcomes_can_be_resolved(
    msgraph_emulator: GraphEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    msgraph_emulator.roles.append(READ)
    finding = diagnose_send_test(monkeypatch)
    assert finding["level"] == "ok"
    assert "unknown outcomes can be resolved" in finding["message"]


def test_diagnose_warns_when_the_tenant_rewrites_message_ids(
    msgraph_emulator: GraphEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    msgraph_emulator.roles.append(READ)
    msgraph_emulator.rewrite_message_ids = True
    finding = diagnose_send_test(monkeypatch)
    assert finding["level"] == "warning"
    assert "RESOLVE_UNKNOWN cannot resolve unknown outcomes" in finding["message"]
    assert msgraph_emulator.count("sent_items") == 3  # bounded: one look and two more


def test_diagnose_names_the_permission_when_sent_items_is_refused(
    msgraph_emulator: GraphEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    finding = diagnose_send_test(monkeypatch)
    assert finding["level"] == "info"
    assert "Mail.ReadBasic.All" in finding["message"]
    assert "Application Mail.ReadBasic" in finding["fix"]
