"""Graph's per-mailbox limits, in process and shared through a real redis-server.

The promises are run against both stores; what only Redis can show (several OS processes, a
killed holder, an unreachable server, the keys) is tested against a redis-server of our own
(the ``redis_url`` fixture). Assertions are on counts; time appears only as lower bounds
(waiting can only take longer on a loaded machine) or as generous upper bounds.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import override_settings
from pydantic import ValidationError

from msgraph_mail import limits, shared_state
from msgraph_mail.auth import AccessToken
from msgraph_mail.conf import MSGraphMailSettings, load_settings
from msgraph_mail.exceptions import (
    ConfigurationError,
    LimitsUnavailable,
    MailboxBudgetExhausted,
    MSGraphMailError,
)
from msgraph_mail.limits import (
    TIME_SCALE_ENV,
    InProcessLimits,
    MailboxLimits,
    RedisLimits,
    limits_for,
)
from msgraph_mail.resolvers import Mailbox
from tests.redis_server import free_port

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "66666666-7777-8888-9999-000000000000"
SECRET = "Zq8~sEcReT-value-that-must-never-leak"
REDIS_PASSWORD = "r3dis-PaSsWoRd-never-shown"
BASE = {"TENANT_ID": TENANT, "CLIENT_ID": CLIENT, "CLIENT_SECRET": SECRET}
ALICE = "alice@contoso.com"
ROOT = Path(__file__).resolve().parent.parent


def make_settings(**values: Any) -> MSGraphMailSettings:
    """Settings built directly (lower-case keys), as the backend's validated model."""
    values = {"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET, **values}
    return MSGraphMailSettings(**values)


def error_for(**msgraph_mail: Any) -> str:
    with (
        override_settings(MSGRAPH_MAIL={**BASE, **msgraph_mail}),
        pytest.raises(ConfigurationError) as info,
    ):
        load_settings()
    message = str(info.value)
    assert SECRET not in message
    assert REDIS_PASSWORD not in message
    return message


@pytest.fixture(autouse=True)
def _fresh_limits() -> Iterator[None]:
    limits.clear()
    yield
    limits.clear()


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[redis.Redis]:
    """The session's redis-server, emptied for this test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


Factory = Callable[..., MailboxLimits]


@pytest.fixture(params=["in_process", "redis"])
def make_limits(request: pytest.FixtureRequest) -> Factory:
    """Build limits of either store from lower-case settings and a window scale."""
    url = None
    if request.param == "redis":
        request.getfixturevalue("redis_db")
        url = request.getfixturevalue("redis_url")

    def make(window_scale: float = 1.0, **values: Any) -> MailboxLimits:
        settings = make_settings(redis_url=url, **values)
        store = RedisLimits if url else InProcessLimits
        return store(settings, window_scale=window_scale)

    return make


# -- settings ----------------------------------------------------------------------------


def test_defaults() -> None:
    with override_settings(MSGRAPH_MAIL=BASE):
        settings = load_settings()
    assert settings.redis_url is None
    assert settings.share_token is False
    assert settings.priority == "normal"
    assert settings.bulk_reserve == 0.1
    assert settings.mailbox_limits.as_keys() == {
        "CONCURRENT_REQUESTS": 4,
        "REQUESTS_PER_10_MINUTES": 10_000,
        "UPLOAD_MB_PER_5_MINUTES": 150,
        "RECIPIENTS_PER_24_HOURS": 10_000,
    }
    assert isinstance(limits_for(settings), InProcessLimits)


def test_partial_mailbox_limits_override_only_their_keys() -> None:
    limits_ = {"RECIPIENTS_PER_24_HOURS": 2000, "UPLOAD_MB_PER_5_MINUTES": 37.5}
    with override_settings(MSGRAPH_MAIL={**BASE, "MAILBOX_LIMITS": limits_}):
        settings = load_settings()
    assert settings.mailbox_limits.as_keys() == {
        "CONCURRENT_REQUESTS": 4,
        "REQUESTS_PER_10_MINUTES": 10_000,
        "UPLOAD_MB_PER_5_MINUTES": 37.5,
        "RECIPIENTS_PER_24_HOURS": 2000,
    }
    # backend keyword arguments are lower-case; so may their keys be
    with override_settings(MSGRAPH_MAIL=BASE):
        assert load_settings({"mailbox_limits": {"concurrent_requests": 2}}).mailbox_limits == (
            make_settings(mailbox_limits={"CONCURRENT_REQUESTS": 2}).mailbox_limits
        )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"MAILBOX_LIMITS": {"CONCURRENT_REQUESTS": 0}},
            "['MAILBOX_LIMITS']['CONCURRENT_REQUESTS']",
        ),
        ({"MAILBOX_LIMITS": {"REQUESTS_PER_10_MINUTES": -5}}, "greater than 0"),
        ({"MAILBOX_LIMITS": {"RECIPIENTS_PER_24_HOURS": "many"}}, "RECIPIENTS_PER_24_HOURS"),
        ({"MAILBOX_LIMITS": {"RECIPIENTS_PER_24_HOURS": 10.5}}, "RECIPIENTS_PER_24_HOURS"),
        ({"MAILBOX_LIMITS": {"CONCURRENT_REQUESTS": True}}, "positive whole number"),
        ({"MAILBOX_LIMITS": {"UPLOAD_MB_PER_5_MINUTES": 0}}, "UPLOAD_MB_PER_5_MINUTES"),
        ({"MAILBOX_LIMITS": {"REQUESTS_PER_HOUR": 5}}, "'REQUESTS_PER_HOUR' is not a MAILBOX"),
        ({"MAILBOX_LIMITS": "lots"}, "MAILBOX_LIMITS"),
        ({"PRIORITY": "urgent"}, "['PRIORITY']"),
        ({"BULK_RESERVE": 1}, "less than 1"),
        ({"BULK_RESERVE": -0.1}, "greater than or equal to 0"),
        ({"SHARE_TOKEN": "maybe"}, "['SHARE_TOKEN']"),
        ({"REDIS_URL": f"http://:{REDIS_PASSWORD}@cache:6379/0"}, "redis://, rediss://"),
        ({"REDIS_URL": f"redis://:{REDIS_PASSWORD}@cache:port/0"}, "is not a URL"),
        ({"REDIS_URL": f"redis://:{REDIS_PASSWORD}@cache:6379/zero"}, "database number"),
        ({"REDIS_URL": f"redis://:{REDIS_PASSWORD}@/0"}, "needs a host"),
        ({"REDIS_URL": "unix://"}, "socket's path"),
        ({"REDIS_URL": 6379}, "['REDIS_URL']"),
    ],
)
def test_bad_values_are_named_and_never_quoted(values: dict[str, Any], expected: str) -> None:
    message = error_for(**values)
    assert expected in message
    assert next(iter(values)) in message


def test_unknown_keys_are_errors() -> None:
    assert "['REDIS'] is not a setting" in error_for(REDIS="redis://localhost")


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://localhost",
        f"rediss://default:{REDIS_PASSWORD}@cache.example.com:6380/2",
        f"rediss://:{REDIS_PASSWORD}@cache.example.com:6380/0?ssl_cert_reqs=required",
        "unix:///run/redis/redis.sock?db=1",
    ],
)
def test_redis_urls_are_accepted_and_the_password_hidden(url: str) -> None:
    settings = make_settings(redis_url=url)
    assert settings.redis_url == url  # the full URL, to connect with
    assert REDIS_PASSWORD not in repr(settings)
    assert REDIS_PASSWORD not in repr(settings.redis_url)
    assert isinstance(limits_for(settings), RedisLimits)  # no connection is made yet


def test_rediss_makes_a_tls_client_without_connecting() -> None:
    url = f"rediss://:{REDIS_PASSWORD}@cache.example.com:6380/0"
    client = limits.redis_client(make_settings(redis_url=url))
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert client.connection_pool.connection_kwargs["password"] == REDIS_PASSWORD
    assert "***" in repr(make_settings(redis_url=url + "?password=other").redis_url)


def test_missing_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ValidationError, match=r'pip install "django-msgraph-mailer\[redis\]"'):
        make_settings(redis_url="redis://localhost:6379/0")  # settings refuse it, offline
    settings = make_settings()  # and a store asked for anyway says the same
    settings = settings.model_copy(update={"redis_url": "redis://localhost:6379/0"})
    with pytest.raises(ConfigurationError, match=r'pip install "django-msgraph-mailer\[redis\]"'):
        limits_for(settings)


def test_time_scale_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIME_SCALE_ENV, "0.001")
    assert limits_for(make_settings()).window_scale == 0.001  # type: ignore[attr-defined]
    monkeypatch.setenv(TIME_SCALE_ENV, "fast")
    with pytest.raises(ConfigurationError, match=TIME_SCALE_ENV):
        limits_for(make_settings())


def test_limits_for_is_cached_per_configuration() -> None:
    settings = make_settings()
    assert limits_for(settings) is limits_for(make_settings())
    other = make_settings(mailbox_limits={"CONCURRENT_REQUESTS": 1})
    assert limits_for(other) is not limits_for(settings)


# -- both stores -------------------------------------------------------------------------


def run_threads(count: int, target: Callable[[], None]) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)


def test_hold_caps_requests_in_flight(make_limits: Factory) -> None:
    mailbox_limits = make_limits(mailbox_limits={"CONCURRENT_REQUESTS": 2})
    lock = threading.Lock()
    in_flight, peaks, done = [0], [], []

    def work() -> None:
        for _ in range(4):
            with mailbox_limits.hold(ALICE):
                with lock:
                    in_flight[0] += 1
                    peaks.append(in_flight[0])
                time.sleep(0.01)
                with lock:
                    in_flight[0] -= 1
            done.append(1)

    run_threads(6, work)
    assert len(done) == 24
    assert max(peaks) <= 2
    assert mailbox_limits.usage(ALICE)["CONCURRENT_REQUESTS"] == {"used": 0, "limit": 2}


def test_spend_paces_when_the_wait_fits(make_limits: Factory) -> None:
    # 10 minutes scaled to 0.3 s: 7 requests at 3 per window need two windows to pass
    mailbox_limits = make_limits(window_scale=0.0005, mailbox_limits={"REQUESTS_PER_10_MINUTES": 3})
    started = time.monotonic()
    for _ in range(7):
        mailbox_limits.spend(ALICE, requests=1, recipients=0, upload_bytes=0, max_wait=30)
        assert mailbox_limits.usage(ALICE)["REQUESTS_PER_10_MINUTES"]["used"] <= 3
    assert time.monotonic() - started >= 0.6


def test_a_settled_spend_counts_from_the_answer(make_limits: Factory) -> None:
    # 10 minutes scaled to 0.3 s. The first request's answer comes 0.2 s after it was spent:
    # its entry leaves the window 0.3 s after the answer, not after the spend, as in Graph.
    mailbox_limits = make_limits(window_scale=0.0005, mailbox_limits={"REQUESTS_PER_10_MINUTES": 1})
    receipt = mailbox_limits.spend(ALICE, requests=1, recipients=0, upload_bytes=0)
    assert receipt is not None
    time.sleep(0.2)
    answered = time.monotonic()
    mailbox_limits.settle(ALICE, receipt)
    mailbox_limits.spend(ALICE, requests=1, recipients=0, upload_bytes=0, max_wait=30)
    assert time.monotonic() - answered >= 0.25
    assert mailbox_limits.spend(ALICE, requests=0, recipients=0, upload_bytes=0) is None


def test_spend_raises_before_sending_when_the_wait_does_not_fit(make_limits: Factory) -> None:
    mailbox_limits = make_limits(mailbox_limits={"RECIPIENTS_PER_24_HOURS": 10})
    mailbox_limits.spend(ALICE, requests=1, recipients=8, upload_bytes=0, priority="normal")
    before = datetime.now(timezone.utc)
    with pytest.raises(MailboxBudgetExhausted) as info:
        mailbox_limits.spend(ALICE, requests=1, recipients=5, upload_bytes=100, max_wait=5)
    error = info.value
    assert isinstance(error, MSGraphMailError)
    assert error.mailbox == ALICE
    assert error.budget == "RECIPIENTS_PER_24_HOURS"
    assert error.retry_at is not None
    assert error.retry_at.utcoffset() == timedelta(0)
    assert before < error.retry_at <= datetime.now(timezone.utc) + timedelta(hours=24)
    message = str(error)
    assert ALICE in message
    assert "RECIPIENTS_PER_24_HOURS" in message
    assert "Nothing was sent" in message
    assert "safe to send" in message
    # all or nothing: the refused request spent on no budget
    usage = mailbox_limits.usage(ALICE)
    assert usage["RECIPIENTS_PER_24_HOURS"]["used"] == 8
    assert usage["REQUESTS_PER_10_MINUTES"]["used"] == 1
    assert usage["UPLOAD_MB_PER_5_MINUTES"]["used"] == 0


def test_a_message_larger_than_a_whole_budget_raises_at_once(make_limits: Factory) -> None:
    mailbox_limits = make_limits()
    with pytest.raises(MailboxBudgetExhausted) as info:
        mailbox_limits.spend(ALICE, requests=1, recipients=12_000, upload_bytes=0, max_wait=3600)
    assert info.value.budget == "RECIPIENTS_PER_24_HOURS"
    assert info.value.retry_at is None
    assert (info.value.needed, info.value.limit) == (12_000, 10_000)
    assert "can never be sent" in str(info.value)
    assert mailbox_limits.usage(ALICE)["REQUESTS_PER_10_MINUTES"]["used"] == 0


def test_bulk_keeps_off_the_reserve(make_limits: Factory) -> None:
    mailbox_limits = make_limits(
        mailbox_limits={"RECIPIENTS_PER_24_HOURS": 100, "REQUESTS_PER_10_MINUTES": 1000},
        bulk_reserve=0.1,
    )
    mailbox_limits.spend(ALICE, requests=1, recipients=90, upload_bytes=0, priority="bulk")
    with pytest.raises(MailboxBudgetExhausted) as info:
        mailbox_limits.spend(ALICE, requests=1, recipients=1, upload_bytes=0, priority="bulk")
    assert info.value.budget == "RECIPIENTS_PER_24_HOURS"
    mailbox_limits.spend(ALICE, requests=1, recipients=10, upload_bytes=0, priority="normal")
    with pytest.raises(MailboxBudgetExhausted):
        mailbox_limits.spend(ALICE, requests=1, recipients=1, upload_bytes=0, max_wait=0)


def test_bulk_reserve_of_requests_and_priority_from_settings(make_limits: Factory) -> None:
    mailbox_limits = make_limits(
        mailbox_limits={"REQUESTS_PER_10_MINUTES": 10}, bulk_reserve=0.5, priority="bulk"
    )
    for _ in range(5):
        mailbox_limits.spend(ALICE, requests=1, recipients=0, upload_bytes=0, max_wait=0)
    with pytest.raises(MailboxBudgetExhausted) as info:
        mailbox_limits.spend(ALICE, requests=1, recipients=0, upload_bytes=0, max_wait=0)
    assert info.value.budget == "REQUESTS_PER_10_MINUTES"
    mailbox_limits.spend(ALICE, requests=5, recipients=0, upload_bytes=0, priority="normal")
    with pytest.raises(ValueError, match="priority"):
        mailbox_limits.spend(ALICE, requests=1, recipients=0, upload_bytes=0, priority="urgent")


def test_upload_budget_counts_mb_of_2_to_the_20_bytes(make_limits: Factory) -> None:
    mailbox_limits = make_limits(mailbox_limits={"UPLOAD_MB_PER_5_MINUTES": 1})
    mailbox_limits.spend(ALICE, requests=1, recipients=0, upload_bytes=600_000)
    with pytest.raises(MailboxBudgetExhausted) as info:
        mailbox_limits.spend(ALICE, requests=1, recipients=0, upload_bytes=448_577, max_wait=0)
    assert info.value.budget == "UPLOAD_MB_PER_5_MINUTES"
    mailbox_limits.spend(ALICE, requests=1, recipients=0, upload_bytes=448_576)
    assert mailbox_limits.usage(ALICE)["UPLOAD_MB_PER_5_MINUTES"] == {"used": 1.0, "limit": 1}


def test_budgets_are_per_application_and_mailbox(make_limits: Factory) -> None:
    mailbox_limits = make_limits(mailbox_limits={"RECIPIENTS_PER_24_HOURS": 5})
    mailbox_limits.spend(ALICE, requests=1, recipients=5, upload_bytes=0)
    with pytest.raises(MailboxBudgetExhausted):
        mailbox_limits.spend(ALICE.upper(), requests=1, recipients=1, upload_bytes=0, max_wait=0)
    mailbox_limits.spend("bob@contoso.com", requests=1, recipients=5, upload_bytes=0)
    other_app = make_limits(
        client_id="99999999-7777-8888-9999-000000000000",
        mailbox_limits={"RECIPIENTS_PER_24_HOURS": 5},
    )
    other_app.spend(ALICE, requests=1, recipients=5, upload_bytes=0)


def test_concurrent_spends_never_exceed_a_budget(make_limits: Factory) -> None:
    mailbox_limits = make_limits(mailbox_limits={"REQUESTS_PER_10_MINUTES": 50})
    results: list[bool] = []

    def work() -> None:
        for _ in range(10):
            try:
                mailbox_limits.spend(ALICE, requests=1, recipients=1, upload_bytes=0, max_wait=0)
                results.append(True)
            except MailboxBudgetExhausted:
                results.append(False)

    run_threads(8, work)
    assert results.count(True) == 50
    assert results.count(False) == 30


def test_usage_reports_every_budget(make_limits: Factory) -> None:
    mailbox_limits = make_limits()
    mailbox_limits.spend(ALICE, requests=2, recipients=3, upload_bytes=3 * 2**19)
    with mailbox_limits.hold(ALICE):
        assert mailbox_limits.usage(ALICE) == {
            "CONCURRENT_REQUESTS": {"used": 1, "limit": 4},
            "REQUESTS_PER_10_MINUTES": {"used": 2, "limit": 10_000},
            "UPLOAD_MB_PER_5_MINUTES": {"used": 1.5, "limit": 150},
            "RECIPIENTS_PER_24_HOURS": {"used": 3, "limit": 10_000},
        }


# -- Redis only --------------------------------------------------------------------------

CHILD = f"""
import sys, time
import redis
from msgraph_mail.conf import MSGraphMailSettings
from msgraph_mail.limits import RedisLimits

url, role, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
settings = MSGraphMailSettings(
    tenant_id={TENANT!r}, client_id={CLIENT!r}, client_secret="x", redis_url=url,
    timeout=float(sys.argv[4]), max_retry_wait=30,
    mailbox_limits={{"CONCURRENT_REQUESTS": int(sys.argv[5])}},
)
mailbox_limits = RedisLimits(settings, lease_margin=0.5)
r = redis.Redis.from_url(url)
if role == "holder":
    r.incr("test:ready")
    deadline = time.monotonic() + 30
    while int(r.get("test:ready")) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    for _ in range(6):
        with mailbox_limits.hold({ALICE!r}):
            r.rpush("test:seen", r.incr("test:in_flight"))
            time.sleep(0.02)
            r.decr("test:in_flight")
else:
    with mailbox_limits.hold({ALICE!r}):
        print("held", flush=True)
        time.sleep(120)
"""


def child(url: str, role: str, count: int, timeout: float, slots: int) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 -- this interpreter, our own script
        [sys.executable, "-c", CHILD, url, role, str(count), str(timeout), str(slots)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_never_more_holders_than_slots_across_processes(
    redis_url: str, redis_db: redis.Redis
) -> None:
    processes = [child(redis_url, "holder", 5, 10, 2) for _ in range(5)]
    for process in processes:
        with process:
            assert process.wait(timeout=60) == 0
    seen = [int(value) for value in redis_db.lrange("test:seen", 0, -1)]
    assert len(seen) == 30
    assert max(seen) <= 2
    assert max(seen) == 2  # they did overlap: the cap, not luck, kept it at 2
    settings = make_settings(redis_url=redis_url)
    assert limits_for(settings).usage(ALICE)["CONCURRENT_REQUESTS"]["used"] == 0


def test_a_killed_holder_frees_its_slot_when_the_lease_runs_out(
    redis_url: str, redis_db: redis.Redis
) -> None:
    # the child's lease: TIMEOUT 1.5 + margin 0.5 = 2 s, renewed while it lives
    mailbox_limits = limits_for(
        make_settings(
            redis_url=redis_url, mailbox_limits={"CONCURRENT_REQUESTS": 1}, max_retry_wait=30
        )
    )
    with child(redis_url, "killed", 1, 1.5, 1) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "held"
        assert mailbox_limits.usage(ALICE)["CONCURRENT_REQUESTS"]["used"] == 1
        process.kill()
        process.wait(timeout=10)
    with mailbox_limits.hold(ALICE):
        assert mailbox_limits.usage(ALICE)["CONCURRENT_REQUESTS"]["used"] == 1
    assert mailbox_limits.usage(ALICE)["CONCURRENT_REQUESTS"]["used"] == 0


def test_a_long_hold_renews_its_lease(redis_url: str, redis_db: redis.Redis) -> None:
    settings = make_settings(redis_url=redis_url, timeout=0.4)
    mailbox_limits = RedisLimits(settings, lease_margin=0.2)  # 0.6 s lease, renewed every 0.2 s
    with mailbox_limits.hold(ALICE):
        time.sleep(1.5)
        assert mailbox_limits.usage(ALICE)["CONCURRENT_REQUESTS"]["used"] == 1
    assert mailbox_limits.usage(ALICE)["CONCURRENT_REQUESTS"]["used"] == 0


def test_waiting_for_a_slot_is_bounded(redis_url: str, redis_db: redis.Redis) -> None:
    settings = make_settings(
        redis_url=redis_url,
        timeout=0.3,
        max_retry_wait=0,
        mailbox_limits={"CONCURRENT_REQUESTS": 1},
    )
    mailbox_limits = limits_for(settings)
    with (
        mailbox_limits.hold(ALICE),
        pytest.raises(MailboxBudgetExhausted) as info,
        mailbox_limits.hold(ALICE),
    ):
        pass  # pragma: no cover
    assert info.value.budget == "CONCURRENT_REQUESTS"
    assert info.value.retry_at is not None
    assert info.value.mailbox == ALICE


def test_redis_unreachable_is_a_typed_error_that_hides_the_password() -> None:
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"
    mailbox_limits = limits_for(make_settings(redis_url=url))
    started = time.monotonic()
    with pytest.raises(LimitsUnavailable) as info:
        mailbox_limits.spend(ALICE, requests=1, recipients=1, upload_bytes=0)
    with pytest.raises(LimitsUnavailable), mailbox_limits.hold(ALICE):
        pass  # pragma: no cover
    assert time.monotonic() - started < 20
    message = str(info.value)
    assert isinstance(info.value, MSGraphMailError)
    assert "REDIS_URL redis://:***@127.0.0.1" in message
    assert "nothing was sent" in message
    assert REDIS_PASSWORD not in message
    assert REDIS_PASSWORD not in repr(info.value)


def test_keys_share_one_hash_tag_and_hold_no_secret(redis_url: str, redis_db: redis.Redis) -> None:
    mailbox_limits = limits_for(make_settings(redis_url=redis_url))
    mailbox_limits.spend(ALICE, requests=1, recipients=2, upload_bytes=10)
    with mailbox_limits.hold(ALICE):
        keys = [key.decode() for key in redis_db.keys("*")]
        # every key expires on its own (a lease, a window)
        assert all(redis_db.pttl(key) > 0 for key in keys)
    assert len(keys) == 7
    tags = {key.split("{", 1)[1].split("}", 1)[0] for key in keys}
    assert len(tags) == 1
    for key in keys:
        assert key.startswith("msgraph_mail:{")
        for secret in (SECRET, TENANT, CLIENT, ALICE, "alice"):
            assert secret not in key


# -- shared sender lookups and token -----------------------------------------------------


def test_sender_lookups_are_shared(redis_url: str, redis_db: redis.Redis) -> None:
    settings = make_settings(redis_url=redis_url, sender_cache_ttl=120)
    mailbox = Mailbox(id="0b1c2d3e-0000-0000-0000-000000000001", address=ALICE)
    assert shared_state.get_sender(settings, ALICE) is None
    shared_state.put_sender(settings, ALICE, mailbox)
    assert shared_state.get_sender(settings, ALICE.upper()) == mailbox
    assert 0 < redis_db.pttl(shared_state.sender_key(settings, ALICE)) <= 120_000
    other_app = make_settings(redis_url=redis_url, client_id="99999999-7777-8888-9999-000000000000")
    assert shared_state.get_sender(other_app, ALICE) is None
    # without REDIS_URL, or with the cache off, nothing is shared
    assert shared_state.get_sender(make_settings(), ALICE) is None
    off = make_settings(redis_url=redis_url, sender_cache_ttl=0)
    shared_state.put_sender(off, "bob@contoso.com", mailbox)
    assert shared_state.get_sender(off, "bob@contoso.com") is None


def test_the_token_is_shared_only_with_share_token(redis_url: str, redis_db: redis.Redis) -> None:
    token = AccessToken(value="eyJ0eXAi.token.value", renew_at=time.monotonic() + 60)
    not_shared = make_settings(redis_url=redis_url)
    shared_state.put_token(not_shared, token)
    assert redis_db.keys("*") == []
    assert shared_state.get_token(not_shared) is None

    settings = make_settings(redis_url=redis_url, share_token=True)
    shared_state.put_token(settings, token)
    found = shared_state.get_token(settings)
    assert found is not None
    assert found.value == token.value
    assert found.fresh
    assert found.renew_at <= token.renew_at + 1
    key = shared_state.token_key(settings)
    assert key is not None
    assert SECRET not in key
    assert 0 < redis_db.pttl(key) <= 60_000
    # another secret is another credential
    assert (
        shared_state.get_token(
            make_settings(redis_url=redis_url, share_token=True, client_secret="another")
        )
        is None
    )


def test_a_credential_object_is_never_shared(redis_url: str) -> None:
    class Credential:
        def get_token(self, *scopes: str) -> Any:
            raise NotImplementedError

    settings = make_settings(
        redis_url=redis_url, share_token=True, client_secret=None, token_credential=Credential()
    )
    assert shared_state.token_key(settings) is None
    assert shared_state.get_token(settings) is None


def test_shared_caches_degrade_to_a_miss_when_redis_is_down() -> None:
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"
    settings = make_settings(redis_url=url, share_token=True)
    shared_state.put_sender(settings, ALICE, Mailbox(id="x", address=ALICE))
    assert shared_state.get_sender(settings, ALICE) is None
    shared_state.put_token(settings, AccessToken(value="t", renew_at=time.monotonic() + 60))
    assert shared_state.get_token(settings) is None
