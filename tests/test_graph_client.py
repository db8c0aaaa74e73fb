"""The HTTP client reads the environment once: proxies and CA bundle, as requests would."""

from __future__ import annotations

import pytest
from django.test import override_settings

from msgraph_mail.conf import load_settings
from msgraph_mail.graph import GraphClient

BASE = {
    "TENANT_ID": "contoso.onmicrosoft.com",
    "CLIENT_ID": "66666666-7777-8888-9999-000000000000",
    "CLIENT_SECRET": "s3cret-value",
}


def client() -> GraphClient:
    with override_settings(MSGRAPH_MAIL=BASE):
        return GraphClient(load_settings())


def test_proxies_and_ca_bundle_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.example:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corp-bundle.pem")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = client().session
    assert session.proxies["https"] == "http://proxy.corp.example:3128"
    assert session.verify == "/etc/ssl/corp-bundle.pem"
    assert session.trust_env is False  # read once, not per request


def test_no_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.example:3128")
    monkeypatch.setenv("NO_PROXY", "graph.microsoft.com")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    session = client().session
    assert session.proxies == {}
    assert session.verify is True


def test_pool_fits_the_concurrency() -> None:
    with override_settings(MSGRAPH_MAIL={**BASE, "MAX_CONCURRENCY": 12}):
        adapter = GraphClient(load_settings()).session.get_adapter("https://graph.microsoft.com")
    assert adapter._pool_maxsize == 12  # type: ignore[attr-defined]
