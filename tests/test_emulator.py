"""The bundled Graph emulator, tested over real HTTP: it must refuse what Graph refuses.

No Django here: the emulator is standard library only, and these tests prove it on its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest
import requests

from msgraph_mail.emulator import (
    ALICE_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    GUEST_ID,
    NOREPLY_ID,
    TENANT_DOMAIN,
    TENANT_ID,
    GraphEmulator,
)
from tests.helpers import get_token, graph_error, mime, token_form

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
GUEST_UPN = "guest_fabrikam.com#EXT#@contoso.onmicrosoft.com"


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def auth(emu: GraphEmulator, http: requests.Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {get_token(emu, http)}"}


def send_mime(
    emu: GraphEmulator,
    http: requests.Session,
    message: EmailMessage | bytes,
    mailbox: str = "noreply@contoso.com",
) -> requests.Response:
    raw = message if isinstance(message, bytes) else message.as_bytes()
    return http.post(
        f"{emu.url}/v1.0/users/{mailbox}/sendMail",
        data=base64.encodebytes(raw),  # wrapped at 76 characters, like Microsoft's sample
        headers={**auth(emu, http), "Content-Type": "text/plain"},
    )


def send_json(
    emu: GraphEmulator,
    http: requests.Session,
    message: dict[str, Any],
    mailbox: str = "noreply@contoso.com",
    **extra: Any,
) -> requests.Response:
    return http.post(
        f"{emu.url}/v1.0/users/{mailbox}/sendMail",
        json={"message": message, **extra},
        headers=auth(emu, http),
    )


def to(*addresses: str) -> list[dict[str, Any]]:
    return [{"emailAddress": {"address": a}} for a in addresses]


# lifecycle -----------------------------------------------------------------------------------


def test_lifecycle_and_settings() -> None:
    emu = GraphEmulator()
    with pytest.raises(RuntimeError):
        _ = emu.url
    emu.start()
    url = emu.url
    assert url.startswith("http://127.0.0.1:")
    assert not url.endswith("/")
    emu.stop()
    emu.stop()
    assert emu.url == url
    assert emu.settings(MODE="rbac") == {
        "TENANT_ID": TENANT_ID,
        "CLIENT_ID": CLIENT_ID,
        "CLIENT_SECRET": CLIENT_SECRET,
        "GRAPH_URL": url,
        "AUTHORITY_URL": url,
        "MODE": "rbac",
    }
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=2)


def test_default_directory(emu: GraphEmulator) -> None:
    noreply = emu.user("shop@contoso.com")
    assert noreply is not None
    assert noreply.id == NOREPLY_ID
    assert noreply.display_name == "Contoso Notifications"
    assert noreply.addresses() == [
        "noreply@contoso.com",
        "shop@contoso.com",
        "no-reply@contoso.com",
    ]
    assert emu.user(ALICE_ID) == emu.user("A.Example@contoso.com")
    guest = emu.user("guest@fabrikam.com")
    assert guest is not None
    assert guest.id == GUEST_ID
    assert not guest.mailbox_enabled
    assert len(emu.users) == 4
    with pytest.raises(ValueError, match=r"shop@contoso\.com"):
        emu.add_user("other@contoso.com", aliases=["SHOP@contoso.com"])


# tokens --------------------------------------------------------------------------------------


def test_token_carries_roles_and_identity(emu: GraphEmulator, http: requests.Session) -> None:
    response = http.post(
        f"{emu.url}/{TENANT_DOMAIN}/oauth2/v2.0/token",
        data=token_form(emu, scope="https://graph.microsoft.com/.default"),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3599
    assert body["ext_expires_in"] >= 3599
    token = claims(body["access_token"])
    assert token["roles"] == ["Mail.Send", "User.Read.All"]
    assert token["aud"] == "https://graph.microsoft.com"
    assert (token["tid"], token["appid"], token["azp"]) == (TENANT_ID, CLIENT_ID, CLIENT_ID)
    assert token["exp"] - token["iat"] == 3599
    assert token["nbf"] <= token["iat"]
    assert token["oid"]
    again = claims(get_token(emu, http))
    assert again["uti"] != token["uti"]
    assert again["aud"] == emu.url
    assert emu.count("token") == 2


def test_token_without_roles_has_no_roles_claim(emu: GraphEmulator, http: requests.Session) -> None:
    emu.roles = []
    emu.token_lifetime = 600
    token = get_token(emu, http)
    assert "roles" not in claims(token)
    assert claims(token)["exp"] - claims(token)["iat"] == 600


def test_secret_by_http_basic(emu: GraphEmulator, http: requests.Session) -> None:
    form = token_form(emu, client_id=None, client_secret=None)
    response = http.post(
        f"{emu.url}/{TENANT_ID}/oauth2/v2.0/token", data=form, auth=(CLIENT_ID, CLIENT_SECRET)
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("tenant", "changes", "status", "error", "code"),
    [
        ("fabrikam.onmicrosoft.com", {}, 400, "invalid_request", 90002),
        ("common", {}, 400, "invalid_request", 50059),
        ("organizations", {}, 400, "invalid_request", 50059),
        (TENANT_ID, {"client_id": "00000000-0000-0000-0000-000000000001"}, 400,
         "unauthorized_client", 700016),
        (TENANT_ID, {"client_secret": None}, 401, "invalid_client", 7000218),
        (TENANT_ID, {"client_secret": "wrong-secret-value"}, 401, "invalid_client", 7000215),
        (TENANT_ID, {"scope": "https://graph.microsoft.com/Mail.Send"}, 400, "invalid_scope",
         70011),
        (TENANT_ID, {"scope": None}, 400, "invalid_request", 900144),
        (TENANT_ID, {"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
    ],
)  # fmt: skip
def test_token_errors(
    emu: GraphEmulator,
    http: requests.Session,
    tenant: str,
    changes: dict[str, str | None],
    status: int,
    error: str,
    code: int,
) -> None:
    response = http.post(
        f"{emu.url}/{tenant}/oauth2/v2.0/token",
        data=token_form(emu, **changes),
        headers={"client-request-id": "corr-1"},
    )
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert f"Trace ID: {body['trace_id']}" in body["error_description"]
    assert body["correlation_id"] == "corr-1"
    assert body["error_uri"].endswith(f"?code={code}")
    assert body["timestamp"]
    assert "wrong-secret-value" not in response.text
    assert CLIENT_SECRET not in response.text
    assert emu.issued_tokens == []


# Graph authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "Access token is empty."),
        ("Bearer ", "Access token is empty."),
        (f"Basic {base64.b64encode(b'x:y').decode()}", "Access token is empty."),
        ("Bearer not-a-token", "CompactToken parsing failed with error code: 80049217"),
    ],
)
def test_graph_refuses_missing_or_unknown_tokens(
    emu: GraphEmulator, http: requests.Session, authorization: str | None, message: str
) -> None:
    headers = {"client-request-id": "abc-123"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = http.get(f"{emu.url}/v1.0/users/alice@contoso.com", headers=headers)
    assert graph_error(response, 401, "InvalidAuthenticationToken") == message
    assert response.headers["client-request-id"] == "abc-123"
    assert response.json()["error"]["innerError"]["client-request-id"] == "abc-123"
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_expire_tokens(emu: GraphEmulator, http: requests.Session) -> None:
    headers = auth(emu, http)
    assert http.get(f"{emu.url}/v1.0/users/{ALICE_ID}", headers=headers).status_code == 200
    emu.expire_tokens()
    response = http.get(f"{emu.url}/v1.0/users/{ALICE_ID}", headers=headers)
    message = graph_error(response, 401, "InvalidAuthenticationToken")
    assert message == "Access token has expired or is not yet valid."
    assert http.get(f"{emu.url}/v1.0/users/{ALICE_ID}", headers=auth(emu, http)).ok


def test_token_lifetime_is_honoured(emu: GraphEmulator, http: requests.Session) -> None:
    emu.token_lifetime = 0
    response = http.get(f"{emu.url}/v1.0/users/{ALICE_ID}", headers=auth(emu, http))
    assert "expired" in graph_error(response, 401, "InvalidAuthenticationToken")


# users ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"users/{ALICE_ID}",
        "users/alice@contoso.com",
        "users/ALICE%40Contoso.com",
        "users('alice@contoso.com')",
        "Users('alice%40contoso.com')",
    ],
)
def test_get_user(emu: GraphEmulator, http: requests.Session, path: str) -> None:
    response = http.get(f"{emu.url}/v1.0/{path}", headers=auth(emu, http))
    assert response.status_code == 200
    assert response.headers["request-id"]
    user = response.json()
    assert user["id"] == ALICE_ID
    assert user["userPrincipalName"] == "alice@contoso.com"
    assert user["displayName"] == "Alice Example"
    assert "proxyAddresses" not in user
    assert user["@odata.context"] == f"{emu.url}/v1.0/$metadata#users/$entity"
    assert emu.count("user_get") == 1


def test_get_user_select_and_guest(emu: GraphEmulator, http: requests.Session) -> None:
    url = f"{emu.url}/v1.0/users/{GUEST_UPN.replace('#', '%23')}?$select=mail,proxyAddresses"
    user = http.get(url, headers=auth(emu, http)).json()
    assert {k: v for k, v in user.items() if k != "@odata.context"} == {
        "id": GUEST_ID,
        "mail": "guest@fabrikam.com",
        "proxyAddresses": ["SMTP:guest@fabrikam.com"],
    }


@pytest.mark.parametrize("key", ["shop@contoso.com", "nobody@contoso.com", ALICE_ID.upper()])
def test_get_user_only_by_id_or_upn(emu: GraphEmulator, http: requests.Session, key: str) -> None:
    response = http.get(f"{emu.url}/v1.0/users/{key}", headers=auth(emu, http))
    message = graph_error(response, 404, "Request_ResourceNotFound")
    assert message.startswith(f"Resource '{key}' does not exist")


def test_unknown_select_property(emu: GraphEmulator, http: requests.Session) -> None:
    response = http.get(
        f"{emu.url}/v1.0/users/{ALICE_ID}",
        params={"$select": "id,shoeSize"},
        headers=auth(emu, http),
    )
    assert "shoeSize" in graph_error(response, 400, "Request_BadRequest")


def list_users(
    emu: GraphEmulator, http: requests.Session, filter_: str, select: str = "id"
) -> list[str]:
    response = http.get(
        f"{emu.url}/v1.0/users",
        params={"$filter": filter_, "$select": select},
        headers=auth(emu, http),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@odata.context"] == f"{emu.url}/v1.0/$metadata#users({select})"
    return [user["id"] for user in body["value"]]


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        ("mail eq 'alice@contoso.com'", [ALICE_ID]),
        ("mail eq 'ALICE@Contoso.COM'", [ALICE_ID]),
        ("mail eq 'shop@contoso.com'", []),
        ("userPrincipalName eq 'noreply@contoso.com'", [NOREPLY_ID]),
        ("proxyAddresses/any(p:p eq 'smtp:shop@contoso.com')", [NOREPLY_ID]),
        ("proxyAddresses/any(x: x eq 'SMTP:SHOP@contoso.com')", [NOREPLY_ID]),
        ("proxyAddresses/any(p:p eq 'shop@contoso.com')", []),
        ("mail eq 'guest@fabrikam.com'", [GUEST_ID]),
        (
            "mail eq 'a.example@contoso.com' or "
            "proxyAddresses/any(p:p eq 'smtp:a.example@contoso.com')",
            [ALICE_ID],
        ),
        ("(mail eq 'bob@contoso.com') or (mail eq 'alice@contoso.com')", [ALICE_ID, "bob"]),
    ],
)
def test_filter_grammar(
    emu: GraphEmulator, http: requests.Session, filter_: str, expected: list[str]
) -> None:
    bob = emu.user("bob@contoso.com")
    assert bob is not None
    wanted = [bob.id if e == "bob" else e for e in expected]
    assert list_users(emu, http, filter_) == wanted


def test_filter_quote_escaping_and_url_decoding(emu: GraphEmulator, http: requests.Session) -> None:
    obrien = emu.add_user("o'brien@contoso.com", aliases=["sean+news@contoso.com"])
    assert list_users(emu, http, "mail eq 'o''brien@contoso.com'") == [obrien.id]
    assert list_users(emu, http, "proxyAddresses/any(p:p eq 'smtp:sean+news@contoso.com')") == [
        obrien.id
    ]
    # requests encodes spaces as "+"; a hand-written URL uses %20: both mean a space.
    raw = "$filter=mail%20eq%20'o''brien%40contoso.com'&$select=id"
    body = http.get(f"{emu.url}/v1.0/users?{raw}", headers=auth(emu, http)).json()
    assert [u["id"] for u in body["value"]] == [obrien.id]


def test_filter_select_shapes_the_result(emu: GraphEmulator, http: requests.Session) -> None:
    response = http.get(
        f"{emu.url}/v1.0/users",
        params={
            "$filter": "proxyAddresses/any(p:p eq 'smtp:shop@contoso.com')",
            "$select": "mail,userPrincipalName,proxyAddresses",
        },
        headers=auth(emu, http),
    )
    assert response.json()["value"] == [
        {
            "id": NOREPLY_ID,
            "mail": "noreply@contoso.com",
            "userPrincipalName": "noreply@contoso.com",
            "proxyAddresses": [
                "SMTP:noreply@contoso.com",
                "smtp:shop@contoso.com",
                "smtp:no-reply@contoso.com",
            ],
        }
    ]
    assert emu.count("user_list") == 1


@pytest.mark.parametrize(
    "filter_",
    [
        "startswith(mail,'alice')",
        "mail ne 'alice@contoso.com'",
        "mail eq 'a@x.com' and mail eq 'b@x.com'",
        "displayName eq 'Alice Example'",
        "mail eq 'unterminated",
        "mail eq alice@contoso.com",
        "proxyAddresses/any(p:q eq 'smtp:a@b.com')",
        "mail in ('alice@contoso.com')",
        "mail eq 'a@x.com' or",
    ],
)
def test_unsupported_filters(emu: GraphEmulator, http: requests.Session, filter_: str) -> None:
    response = http.get(
        f"{emu.url}/v1.0/users", params={"$filter": filter_}, headers=auth(emu, http)
    )
    assert graph_error(response, 400, "Request_UnsupportedQuery") == "Unsupported Query."


def test_directory_needs_a_read_role(emu: GraphEmulator, http: requests.Session) -> None:
    emu.roles = ["Mail.Send"]
    headers = auth(emu, http)
    for url in (f"{emu.url}/v1.0/users/{ALICE_ID}", f"{emu.url}/v1.0/users?$select=id"):
        message = graph_error(http.get(url, headers=headers), 403, "Authorization_RequestDenied")
        assert message == "Insufficient privileges to complete the operation."
    emu.roles.append("Directory.Read.All")
    assert http.get(f"{emu.url}/v1.0/users/{ALICE_ID}", headers=auth(emu, http)).ok


# sendMail: MIME ------------------------------------------------------------------------------


def rich_message() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Zoë Contoso <noreply@contoso.com>"
    message["To"] = "Ångström <angstrom@example.com>, plain@example.com"
    message["Cc"] = "Çelik <celik@example.com>"
    message["Bcc"] = "blind@example.com"
    message["Reply-To"] = "Support <support@contoso.com>"
    message["Subject"] = "Grüße aus Köln — 東京 ✓"
    message["Message-ID"] = make_msgid(domain="contoso.com")
    message["X-Campaign"] = "winter"
    message.set_content("Text: Grüße\n")
    message.add_alternative("<p>HTML: <b>Grüße</b> <img src='cid:logo'></p>", subtype="html")
    html = list(message.iter_parts())[1]
    assert isinstance(html, EmailMessage)
    html.add_related(PNG, "image", "png", cid="<logo>", filename="logo.png", disposition="inline")
    message.add_attachment(b"col1,col2\n1,2\n", "text", "csv", filename="report.csv")
    message.add_attachment(bytes(range(256)), "application", "octet-stream", filename="daten-ü.bin")
    return message


def test_mime_message_is_recorded_as_exchange_sees_it(
    emu: GraphEmulator, http: requests.Session
) -> None:
    message = rich_message()
    response = send_mime(emu, http, message, mailbox=NOREPLY_ID)
    assert response.status_code == 202, response.text
    assert response.content == b""
    assert response.headers["Content-Length"] == "0"
    [sent] = emu.sent
    assert sent.mailbox.id == NOREPLY_ID
    assert sent.format == "mime"
    assert sent.request_id == response.headers["request-id"]
    assert sent.raw == message.as_bytes()
    assert sent.subject == "Grüße aus Köln — 東京 ✓"
    assert sent.from_ == "noreply@contoso.com"
    assert sent.from_header == "Zoë Contoso <noreply@contoso.com>"
    assert sent.to == ["angstrom@example.com", "plain@example.com"]
    assert sent.cc == ["celik@example.com"]
    assert sent.bcc == ["blind@example.com"]
    assert sent.reply_to == ["support@contoso.com"]
    assert sent.header("x-campaign") == "winter"
    assert sent.header("Message-ID") == message["Message-ID"]
    assert sent.header("X-Missing") is None
    assert [name for name, _ in sent.headers][:6] == [
        "From",
        "To",
        "Cc",
        "Bcc",
        "Reply-To",
        "Subject",
    ]
    assert sent.text == "Text: Grüße\n"
    assert sent.html is not None
    assert "<b>Grüße</b>" in sent.html
    by_name = {a.filename: a for a in sent.attachments}
    assert list(by_name) == ["logo.png", "report.csv", "daten-ü.bin"]
    logo = by_name["logo.png"]
    assert (logo.inline, logo.content_id, logo.content_type) == (True, "logo", "image/png")
    assert logo.sha256 == hashlib.sha256(PNG).hexdigest()
    assert logo.content == PNG
    report = by_name["report.csv"]
    assert not report.inline
    assert report.size == 14
    assert report.sha256 == hashlib.sha256(b"col1,col2\n1,2\n").hexdigest()
    assert by_name["daten-ü.bin"].sha256 == hashlib.sha256(bytes(range(256))).hexdigest()


def test_base64_without_line_breaks_and_rfc2047_headers(
    emu: GraphEmulator, http: requests.Session
) -> None:
    raw = (
        b"From: =?utf-8?q?Zo=C3=AB?= <Shop@Contoso.com>\r\n"
        b"To: =?utf-8?b?w4VuZ3N0csO2bQ==?= <a@xn--bcher-kva.example>\r\n"
        b"Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\n\r\nhi\r\n"
    )
    response = http.post(
        f"{emu.url}/v1.0/users/noreply@contoso.com/sendMail",
        data=base64.b64encode(raw),
        headers={**auth(emu, http), "Content-Type": "text/plain; charset=utf-8"},
    )
    assert response.status_code == 202, response.text
    [sent] = emu.sent
    assert (sent.subject, sent.from_, sent.to) == (
        "Grüße",
        "shop@contoso.com",
        ["a@xn--bcher-kva.example"],
    )
    assert sent.from_header == "Zoë <Shop@Contoso.com>"
    assert sent.text == "hi\n"


def test_bcc_only_message_is_accepted(emu: GraphEmulator, http: requests.Session) -> None:
    message = mime(to=None, Bcc="x@example.com, y@example.com")
    assert send_mime(emu, http, message).status_code == 202
    assert (emu.sent[0].to, emu.sent[0].bcc) == ([], ["x@example.com", "y@example.com"])


def test_recipients_come_from_headers_only(emu: GraphEmulator, http: requests.Session) -> None:
    response = send_mime(emu, http, mime(to=None))
    message = graph_error(response, 400, "ErrorInvalidRecipients")
    assert message == (
        "At least one recipient is not valid., "
        "A message can't be sent because it contains no recipients."
    )
    response = send_mime(emu, http, mime(to="not-an-address"))
    assert "not-an-address" in graph_error(response, 400, "ErrorInvalidRecipients")
    assert emu.sent == []


@pytest.mark.parametrize("body", [b"this is not base64!", b"QUJD=QUJD", "Zm9v\u00e9".encode()])
def test_bad_base64(emu: GraphEmulator, http: requests.Session, body: bytes) -> None:
    response = http.post(
        f"{emu.url}/v1.0/users/noreply@contoso.com/sendMail",
        data=body,
        headers={**auth(emu, http), "Content-Type": "text/plain"},
    )
    message = graph_error(response, 400, "ErrorMimeContentInvalidBase64String")
    assert message == "Invalid base64 string for MIME content."


def test_base64_that_is_not_mime(emu: GraphEmulator, http: requests.Session) -> None:
    response = send_mime(emu, http, b"just some words without any header")
    assert graph_error(response, 400, "ErrorMimeContentInvalid") == "Invalid MIME content."


def test_request_over_4mb_is_refused_and_connection_survives(
    emu: GraphEmulator, http: requests.Session
) -> None:
    headers = {**auth(emu, http), "Content-Type": "text/plain"}
    url = f"{emu.url}/v1.0/users/noreply@contoso.com/sendMail"
    response = http.post(url, data=b"A" * (4 * 1024 * 1024 + 4), headers=headers)
    message = graph_error(response, 413, "BadRequest")
    assert message == "The maximum request length supported is 4MB."
    body = base64.b64encode(mime().as_bytes())
    assert http.post(url, data=body, headers=headers).status_code == 202
    assert emu.connections == 1
    assert len(emu.sent) == 1
    assert [r.status for r in emu.requests if r.kind == "sendMail"] == [413, 202]


def test_mail_send_role_is_needed(emu: GraphEmulator, http: requests.Session) -> None:
    emu.roles = ["User.Read.All"]
    message = graph_error(send_mime(emu, http, mime()), 403, "ErrorAccessDenied")
    assert message == "Access is denied. Check credentials and try again."


def test_rbac_scope_alone_allows_its_mailboxes(emu: GraphEmulator, http: requests.Session) -> None:
    emu.roles = []
    emu.rbac_scope = {"Alice@Contoso.com"}
    emu.rbac_scope.add(NOREPLY_ID)
    assert send_mime(emu, http, mime(sender="alice@contoso.com"), "alice@contoso.com").ok
    assert send_mime(emu, http, mime(), NOREPLY_ID).ok
    refused = send_mime(emu, http, mime(sender="bob@contoso.com"), "bob@contoso.com")
    graph_error(refused, 403, "ErrorAccessDenied")
    assert [m.mailbox.user_principal_name for m in emu.sent] == [
        "alice@contoso.com",
        "noreply@contoso.com",
    ]


def test_from_must_belong_to_the_mailbox(emu: GraphEmulator, http: requests.Session) -> None:
    assert send_mime(emu, http, mime(sender="Shop <SHOP@contoso.com>")).status_code == 202
    response = send_mime(emu, http, mime(sender="alice@contoso.com"))
    message = graph_error(response, 403, "ErrorSendAsDenied")
    assert message.endswith("Cannot submit message.")
    emu.add_user("sales@contoso.com", send_as=["alice@contoso.com"])
    assert send_mime(emu, http, mime(sender="alice@contoso.com"), "sales@contoso.com").ok
    assert [(m.mailbox.user_principal_name, m.from_) for m in emu.sent] == [
        ("noreply@contoso.com", "shop@contoso.com"),
        ("sales@contoso.com", "alice@contoso.com"),
    ]


def test_mailbox_must_exist_and_be_enabled(emu: GraphEmulator, http: requests.Session) -> None:
    response = send_mime(emu, http, mime(sender="guest@fabrikam.com"), GUEST_ID)
    message = graph_error(response, 404, "MailboxNotEnabledForRESTAPI")
    assert message == "The mailbox is either inactive, soft-deleted, or is hosted on-premise."
    for key in ("nobody@contoso.com", "shop@contoso.com"):  # an alias is not a user key
        response = send_mime(emu, http, mime(), key)
        assert (
            graph_error(response, 404, "ErrorInvalidUser")
            == f"The requested user '{key}' is invalid."
        )


def test_other_content_types_are_refused(emu: GraphEmulator, http: requests.Session) -> None:
    response = http.post(
        f"{emu.url}/v1.0/users/noreply@contoso.com/sendMail",
        data=mime().as_bytes(),
        headers={**auth(emu, http), "Content-Type": "message/rfc822"},
    )
    graph_error(response, 400, "RequestBodyRead")


# sendMail: JSON ------------------------------------------------------------------------------


def test_json_message_is_recorded(emu: GraphEmulator, http: requests.Session) -> None:
    response = send_json(
        emu,
        http,
        {
            "subject": "Grüße",
            "body": {"contentType": "HTML", "content": "<p>Hi</p>"},
            "from": {"emailAddress": {"address": "No-Reply@contoso.com", "name": "Shop"}},
            "toRecipients": to("a@example.com"),
            "ccRecipients": to("c@example.com"),
            "bccRecipients": to("b@example.com"),
            "replyTo": to("support@contoso.com"),
            "internetMessageHeaders": [{"name": "x-campaign", "value": "w"}],
            "attachments": [
                {
                    "@odata.type": "#microsoft.graph.fileAttachment",
                    "name": "logo.png",
                    "contentType": "image/png",
                    "contentBytes": base64.b64encode(PNG).decode(),
                    "isInline": True,
                    "contentId": "logo",
                }
            ],
        },
        saveToSentItems=False,
    )
    assert response.status_code == 202, response.text
    [sent] = emu.sent
    assert sent.format == "json"
    assert not sent.save_to_sent_items
    assert (sent.subject, sent.html, sent.text) == ("Grüße", "<p>Hi</p>", None)
    assert (sent.from_, sent.from_header) == ("no-reply@contoso.com", "Shop <No-Reply@contoso.com>")
    assert (sent.to, sent.cc, sent.bcc) == (["a@example.com"], ["c@example.com"], ["b@example.com"])
    assert sent.reply_to == ["support@contoso.com"]
    assert sent.header("X-Campaign") == "w"
    [logo] = sent.attachments
    assert (logo.filename, logo.inline, logo.content_id) == ("logo.png", True, "logo")
    assert logo.sha256 == hashlib.sha256(PNG).hexdigest()


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ([{"name": "List-Unsubscribe", "value": "<u>"}], "InvalidInternetMessageHeader"),
        (
            [{"name": f"x-h{i}", "value": "v"} for i in range(6)],
            "InvalidInternetMessageHeaderCollection",
        ),
    ],
)
def test_json_header_rules(
    emu: GraphEmulator, http: requests.Session, headers: list[dict[str, str]], code: str
) -> None:
    message = {"subject": "s", "toRecipients": to("a@x.com"), "internetMessageHeaders": headers}
    graph_error(send_json(emu, http, message), 400, code)
    five = {
        **message,
        "internetMessageHeaders": [{"name": f"X-h{i}", "value": "v"} for i in range(5)],
    }
    assert send_json(emu, http, five).status_code == 202


def test_json_refusals(emu: GraphEmulator, http: requests.Session) -> None:
    url = f"{emu.url}/v1.0/users/noreply@contoso.com/sendMail"
    headers = {**auth(emu, http), "Content-Type": "application/json"}
    graph_error(http.post(url, data=b"{not json", headers=headers), 400, "RequestBodyRead")
    graph_error(send_json(emu, http, {"subject": "no recipients"}), 400, "ErrorInvalidRecipients")
    wrong_from = {
        "toRecipients": to("a@x.com"),
        "from": {"emailAddress": {"address": "bob@contoso.com"}},
    }
    graph_error(send_json(emu, http, wrong_from), 403, "ErrorSendAsDenied")
    bad_body = {"toRecipients": to("a@x.com"), "body": {"contentType": "markdown", "content": ""}}
    graph_error(send_json(emu, http, bad_body), 400, "RequestBodyRead")
    assert emu.sent == []


def test_json_is_as_strict_as_graphs_message_type(
    emu: GraphEmulator, http: requests.Session
) -> None:
    base = {"subject": "s", "toRecipients": to("a@x.com")}
    unknown = graph_error(send_json(emu, http, {**base, "headers": []}), 400, "RequestBodyRead")
    assert "'headers' does not exist on type 'microsoft.graph.message'" in unknown
    bad_importance = {**base, "importance": "urgent"}
    graph_error(send_json(emu, http, bad_importance), 400, "RequestBodyRead")
    attachment = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": "a.txt",
        "contentBytes": "aGk=",
        "disposition": "inline",
    }
    refused = graph_error(
        send_json(emu, http, {**base, "attachments": [attachment]}), 400, "RequestBodyRead"
    )
    assert "microsoft.graph.fileAttachment" in refused
    assert emu.sent == []
    on_behalf = {
        **base,
        "importance": "High",
        "sender": {"emailAddress": {"address": "alice@contoso.com", "name": "Alice"}},
    }
    assert send_json(emu, http, on_behalf, saveToSentItems=False).status_code == 202
    [sent] = emu.sent
    assert (sent.importance, sent.header("Sender")) == ("high", "Alice <alice@contoso.com>")
    assert emu.sent_items() == []


# HTTP behaviour and records ------------------------------------------------------------------


def test_requests_are_counted_by_kind(emu: GraphEmulator, http: requests.Session) -> None:
    headers = {**auth(emu, http), "client-request-id": "cid-1"}
    http.get(f"{emu.url}/v1.0/users/{ALICE_ID}", headers=headers)
    http.get(f"{emu.url}/v1.0/users", params={"$filter": "mail eq 'a@b.c'"}, headers=headers)
    http.post(
        f"{emu.url}/v1.0/users/{ALICE_ID}/sendMail",
        data=base64.b64encode(mime(sender="alice@contoso.com").as_bytes()),
        headers={**headers, "Content-Type": "text/plain"},
    )
    bad_segment = http.get(f"{emu.url}/v1.0/groups", headers=headers)
    assert (
        graph_error(bad_segment, 400, "BadRequest")
        == "Resource not found for the segment 'groups'."
    )
    graph_error(
        http.get(f"{emu.url}/v1.0/users/{ALICE_ID}/sendMail", headers=headers),
        405,
        "Request_BadRequest",
    )
    assert [emu.count(k) for k in ("token", "user_get", "user_list", "sendMail", "other")] == [
        1,
        1,
        1,
        1,
        2,
    ]
    assert emu.count() == 6
    with pytest.raises(ValueError, match="send_mail"):
        emu.count("send_mail")
    listing = emu.requests[2]
    assert (listing.method, listing.path, listing.status) == ("GET", "/v1.0/users", 200)
    assert listing.query == {"$filter": "mail eq 'a@b.c'"}
    assert listing.client_request_id == "cid-1"
    assert listing.headers["Authorization"] == "[redacted]"
    emu.reset()
    assert (emu.count(), emu.sent, emu.connections) == (0, [], 0)
    assert emu.user(ALICE_ID) is not None


def test_keep_alive_reuses_one_connection(emu: GraphEmulator, http: requests.Session) -> None:
    headers = auth(emu, http)
    for _ in range(3):
        assert http.get(f"{emu.url}/v1.0/users/{ALICE_ID}", headers=headers).ok
        assert send_mime(emu, http, mime()).status_code == 202
    assert emu.connections == 1
    with requests.Session() as other:
        other.get(f"{emu.url}/v1.0/users/{ALICE_ID}", headers=headers)
    assert emu.connections == 2


def test_secret_and_tokens_never_appear_in_responses(
    emu: GraphEmulator, http: requests.Session
) -> None:
    token_url = f"{emu.url}/{TENANT_ID}/oauth2/v2.0/token"
    token = get_token(emu, http)
    texts = [
        http.post(token_url, data=token_form(emu, client_secret=CLIENT_SECRET + "x")).text,
        http.post(token_url, data=token_form(emu, scope="nope")).text,
        http.post(f"{emu.url}/common/oauth2/v2.0/token", data=token_form(emu)).text,
        http.get(token_url).text,
        http.get(
            f"{emu.url}/v1.0/users/{ALICE_ID}", headers={"Authorization": f"Bearer {token}x"}
        ).text,
        http.get(
            f"{emu.url}/v1.0/users/{ALICE_ID}", headers={"Authorization": f"Bearer {token}"}
        ).text,
        http.get(f"{emu.url}/beta/users").text,
    ]
    for text in texts:
        assert CLIENT_SECRET not in text
        assert token not in text
    assert all(CLIENT_SECRET not in str(r) for r in emu.requests)
