"""The dev inbox: a web page and a JSON API over the messages the emulator captured.

Django developers look at development mail in MailHog or Mailpit, which speak SMTP; with a
Graph backend the emulator is that inbox. Served by the emulator's own server, next to Graph,
on 127.0.0.1 only:

- ``/``: the list, newest first, with a search (``q``, ``mailbox``, ``route``, ``since``,
  ``until``: :mod:`~msgraph_mail.emulator.inbox_search`), the faults panel and the budgets;
  kept current through server-sent events (``/api/events``, :mod:`.events`), no polling;
- ``/messages/<id>``: one message (``?images=1`` also loads remote images), its HTML at
  phone and desktop widths, the requests that carried it, ``.eml`` and ``/attachments/<n>``
  downloads; ``POST /clear`` forgets every message;
- ``/requests``: the request log (:mod:`.request_log`), newest first, and the faults panel;
- ``/api/messages`` (the same filters; ``DELETE`` clears), ``/api/messages/<id>``,
  ``/api/requests``, ``/api/budgets`` and ``/api/faults`` (``POST`` arms, ``DELETE`` switches
  off: :mod:`.workbench`): JSON for tests and tools.

These requests are not Graph traffic: they are neither recorded nor counted, and faults never
hit them. A ``Host`` other than 127.0.0.1/localhost (DNS rebinding) and a cross-site ``Origin``
on a state change (CSRF) are refused, so a web page in the same browser cannot read or clear
the mail.
"""

from __future__ import annotations

import json
import pprint
import re
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote

import django

from . import inbox_html as html
from . import workbench
from .http import Request, Response
from .inbox_search import MessageQuery
from .mail import Attachment, SentMessage
from .request_log import RecordedRequest
from .store import as_eml
from .workbench import Emulator

_PREFIXES = (
    "/api/messages",
    "/api/budgets",
    "/api/requests",
    "/api/faults",
    "/api/events",
    "/messages/",
    "/reports/",
    "/static/",
)
#: The server-sent events stream; the server answers it itself (it never ends).
EVENTS_PATH = "/api/events"
#: Rows the list and the log show at most: the page stays fast with thousands stored.
LIST_LIMIT = 100
LOG_LIMIT = 300
_STATIC = {"inbox.css": "text/css; charset=utf-8", "inbox.js": "text/javascript; charset=utf-8"}
_HTML = "text/html; charset=utf-8"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_ID = r"([A-Za-z0-9_-]+)"
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")
Handler = Callable[[Request, "re.Match[str]"], Response]


def settings_snippet(emulator: Emulator) -> str:
    """What to paste into a development settings file to send mail to ``emulator``, in the
    form of the installed Django: ``MAILERS`` OPTIONS on 6.1, ``EMAIL_BACKEND`` and
    ``MSGRAPH_MAIL`` before (6.1 refuses ``EMAIL_BACKEND`` beside ``MAILERS``).

    Strict: the emulator's own tenant and application. Permissive (the CLI's default): the
    developer's own settings, with only GRAPH_URL and AUTHORITY_URL pointed here.
    """
    if django.VERSION >= (6, 1):  # Django configures mail with MAILERS from 6.1 on
        if emulator.strict:
            settings = emulator.settings().items()
            lines = [f"        {json.dumps(k.lower())}: {json.dumps(v)}," for k, v in settings]
        else:
            lines = [
                '        **MAILERS["default"].get("OPTIONS", {}),  # your tenant_id, client_id, '
                "credential, mode, mailbox",
                f'        "graph_url": "{emulator.url}",',
                f'        "authority_url": "{emulator.url}",',
            ]
        return "\n".join(
            [
                "MAILERS = {",
                '    "default": {',
                '        "BACKEND": "msgraph_mail.backend.EmailBackend",',
                '        "OPTIONS": {',
                *("    " + line for line in lines),
                "        },",
                "    },",
                "}",
            ]
        )
    backend = 'EMAIL_BACKEND = "msgraph_mail.backend.EmailBackend"'
    if emulator.strict:
        graph = pprint.pformat(emulator.settings(), sort_dicts=False)
        return f"{backend}\nMSGRAPH_MAIL = {graph}"
    return (
        f"{backend}\n"
        "MSGRAPH_MAIL = {\n"
        "    **MSGRAPH_MAIL,  # your TENANT_ID, CLIENT_ID, secret or certificate, MODE, MAILBOX\n"
        f'    "GRAPH_URL": "{emulator.url}",\n'
        f'    "AUTHORITY_URL": "{emulator.url}",\n'
        "}"
    )


def serves(path: str) -> bool:
    """Whether ``path`` belongs to the inbox rather than to Graph or Entra."""
    return path in ("/", "/clear", "/requests") or path.startswith(_PREFIXES)


class Inbox:
    """Answers the inbox's requests from ``emulator.sent`` (and ``clear_messages()``)."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"/"), self._list_page),
            ("POST", re.compile(r"/clear"), self._clear_page),
            ("GET", re.compile(r"/static/([a-z.]+)"), self._static),
            ("GET", re.compile(r"/api/messages/?"), self._api_list),
            ("GET", re.compile(r"/api/budgets/?"), self._api_budgets),
            ("GET", re.compile(r"/requests"), self._requests_page),
            ("GET", re.compile(r"/api/requests/?"), self._api_requests),
            ("GET", re.compile(r"/api/faults/?"), self._api_faults),
            ("POST", re.compile(r"/api/faults/?"), self._api_arm),
            ("DELETE", re.compile(r"/api/faults/?"), self._api_disarm),
            ("DELETE", re.compile(r"/api/messages/?"), self._api_clear),
            ("GET", re.compile(rf"/api/messages/{_ID}"), self._api_message),
            ("GET", re.compile(rf"/messages/{_ID}"), self._message_page),
            ("GET", re.compile(rf"/messages/{_ID}\.eml"), self._eml),
            ("GET", re.compile(rf"/messages/{_ID}/attachments/(\d+)"), self._attachment),
            ("GET", re.compile(rf"/reports/{_ID}\.txt"), self._report),
        ]

    def handle(self, request: Request) -> Response:
        if (refusal := self.refuse(request)) is not None:
            return refusal
        allowed = []
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(request.path)
            if match and method == request.method:
                return handler(request, match)
            if match:
                allowed.append(method)
        if allowed:
            return _text(405, "Method not allowed", {"Allow": ", ".join(allowed)})
        return _not_found("No such page")

    def messages(self) -> list[SentMessage]:
        """Newest first, as the page and the API list them."""
        return sorted(self.emulator.sent, key=lambda m: m.received_at, reverse=True)

    def find(self, message_id: str) -> SentMessage | None:
        return next((m for m in self.emulator.sent if m.id == message_id), None)

    # safety -----------------------------------------------------------------------------

    def _hosts(self) -> tuple[str, ...]:
        port = self.emulator.url.rpartition(":")[2]
        return (f"127.0.0.1:{port}", f"localhost:{port}")

    def refuse(self, request: Request) -> Response | None:
        """The answer to a request the inbox must not serve (rebinding, cross-site), or None."""
        if (request.header("Host") or "").lower() not in self._hosts():
            return _text(403, "The inbox answers on 127.0.0.1 and localhost only.")
        origin = request.header("Origin")
        origins = [f"http://{host}" for host in self._hosts()]
        if request.method != "GET" and origin is not None and origin not in origins:
            return _text(403, "Cross-site requests may not change the inbox.")
        return None

    def _base(self, request: Request) -> str:
        return f"http://{(request.header('Host') or '').lower()}"

    # pages ------------------------------------------------------------------------------

    def _list_page(self, request: Request, match: re.Match[str]) -> Response:
        error = None
        try:
            query = MessageQuery.parse(request.query)
        except ValueError as exc:
            query, error = MessageQuery(), str(exc)
        context: dict[str, Any] = {
            "budgets": html.budgets(self.emulator.budgets(), self.emulator.time_scale),
            **html.faults(workbench.armed(self.emulator)),
        }
        if ("fragment", "budgets") in request.query:
            return _page(html.render("budgets.html", **context))
        if ("fragment", "faults") in request.query:
            return _page(html.render("armed.html", **context))
        messages = self.messages()
        matching = query.filter(messages)
        snippet = settings_snippet(self.emulator)
        shown = matching[:LIST_LIMIT]
        context["listing"] = html.listing(shown, len(messages), len(matching), snippet)
        if ("fragment", "list") in request.query:
            return _page(html.render("list.html", **context), {"X-Inbox-Total": str(len(messages))})
        mailboxes = sorted({m.mailbox.user_principal_name for m in messages})
        context["search"] = html.search(query, mailboxes, error)
        return _page(html.render("list_page.html", total=len(messages), **context))

    def _requests_page(self, request: Request, match: re.Match[str]) -> Response:
        message = dict(request.query).get("message")
        rows = self.request_log(message)
        log = html.log(rows[:LOG_LIMIT], len(rows))
        if ("fragment", "log") in request.query:
            return _page(html.render("log.html", log=log))
        faults = html.faults(workbench.armed(self.emulator))
        context = {"log": log, "message": message, "total": len(rows), **faults}
        return _page(html.render("requests.html", **context))

    def request_log(
        self, message_id: str | None = None
    ) -> list[tuple[RecordedRequest, str | None]]:
        """Every request, newest first, with the id of the message it carried (if any);
        with ``message_id``, only the requests that carried that message."""
        sent = self.emulator.sent
        by_request = {message.request_id: message.id for message in sent}
        by_draft = {message.draft_id: message.id for message in sent if message.draft_id}
        rows = [
            (record, by_request.get(record.request_id) or by_draft.get(record.draft or ""))
            for record in reversed(self.emulator.requests)
        ]
        return [row for row in rows if message_id in (None, row[1])]

    def _clear_page(self, request: Request, match: re.Match[str]) -> Response:
        self.emulator.clear_messages()
        return Response(303, b"", {"Location": "/", "Cache-Control": "no-store"})

    def _message_page(self, request: Request, match: re.Match[str]) -> Response:
        message = self.find(match.group(1))
        if message is None:
            return _not_found("This message is gone (cleared, or the emulator restarted)")
        images = ("images", "1") in request.query
        context = html.message(
            message,
            self._base(request),
            images,
            self.request_log(message.id),
            self.emulator.delivery_of(message.request_id),
            self.emulator.reports_of(message.request_id),
        )
        frame_images = "http: https:" if images else ""
        csp = {"Content-Security-Policy": html.csp(frame_images)}
        return _page(html.render("message.html", **context), csp)

    def _report(self, request: Request, match: re.Match[str]) -> Response:
        """An NDR's raw MIME, as plain text (never rendered: it is mail from outside)."""
        found = next((m for m in self.emulator.inbox_messages() if m.id == match.group(1)), None)
        if found is None:
            return _not_found("No such report")
        return Response(200, found.raw, {"Content-Type": "text/plain; charset=utf-8", **_NO_SNIFF})

    def _static(self, request: Request, match: re.Match[str]) -> Response:
        name = match.group(1)
        if name not in _STATIC:
            return _not_found("No such file")
        return Response(200, _asset(name), {"Content-Type": _STATIC[name], **_NO_SNIFF})

    # downloads ----------------------------------------------------------------------------

    def _eml(self, request: Request, match: re.Match[str]) -> Response:
        message = self.find(match.group(1))
        if message is None:
            return _not_found("No such message")
        return _download(as_eml(message), "message/rfc822", f"{message.id}.eml")

    def _attachment(self, request: Request, match: re.Match[str]) -> Response:
        message = self.find(match.group(1))
        index = int(match.group(2))
        if message is None or index >= len(message.attachments):
            return _not_found("No such attachment")
        attachment = message.attachments[index]
        name = attachment.filename or f"attachment-{index}"
        return _download(attachment.content, attachment.content_type, name)

    # JSON API -----------------------------------------------------------------------------

    def _api_list(self, request: Request, match: re.Match[str]) -> Response:
        try:
            query = MessageQuery.parse(request.query)
            limit = _limit(dict(request.query).get("limit"))
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        base = self._base(request)
        matching = query.filter(self.messages())
        messages = [summary(m, base) for m in matching[:limit]]
        return _json(200, {"count": len(matching), "messages": messages})

    def _api_requests(self, request: Request, match: re.Match[str]) -> Response:
        rows = self.request_log(dict(request.query).get("message"))
        try:
            limit = _limit(dict(request.query).get("limit"))
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        body = [record.as_json(message) for record, message in rows[:limit]]
        return _json(200, {"count": len(rows), "requests": body})

    def _api_faults(self, request: Request, match: re.Match[str]) -> Response:
        return _json(200, {"armed": workbench.armed(self.emulator)})

    def _api_arm(self, request: Request, match: re.Match[str]) -> Response:
        """``POST /api/faults`` ``{"fault": "429", "count": 3, "seconds": 10}``."""
        try:
            arming = workbench.checked(json.loads(request.body or b"null"))
        except ValueError as exc:  # JSONDecodeError is a ValueError
            return _json(400, {"error": str(exc)})
        arming.apply(self.emulator)
        self.emulator.events.publish("faults", {})
        return _json(201, {"armed": workbench.armed(self.emulator)})

    def _api_disarm(self, request: Request, match: re.Match[str]) -> Response:
        workbench.disarm(self.emulator)
        return _json(200, {"armed": workbench.armed(self.emulator)})

    def _api_message(self, request: Request, match: re.Match[str]) -> Response:
        message = self.find(match.group(1))
        if message is None:
            return _json(404, {"error": "not found", "id": match.group(1)})
        body = detail(message, self._base(request))
        body["delivery"] = self.emulator.delivery_of(message.request_id)
        body["reports"] = [
            {"id": r.id, "subject": r.subject, "url": f"{self._base(request)}/reports/{r.id}.txt"}
            for r in self.emulator.reports_of(message.request_id)
        ]
        return _json(200, body)

    def _api_budgets(self, request: Request, match: re.Match[str]) -> Response:
        body = {
            "time_scale": self.emulator.time_scale,
            "limits": self.emulator.limits,
            "throttled": self.emulator.throttled(),
            "mailboxes": self.emulator.budgets(),
        }
        return _json(200, body)

    def _api_clear(self, request: Request, match: re.Match[str]) -> Response:
        self.emulator.clear_messages()
        return Response(204, b"", {"Cache-Control": "no-store"})


def summary(message: SentMessage, base: str) -> dict[str, Any]:
    """One message in ``/api/messages``: who, when, what, how big, and where to get it."""
    url = f"{base}/messages/{message.id}"
    return {
        "id": message.id,
        "received": message.received_at.isoformat(),
        "mailbox": message.mailbox.user_principal_name,
        "from": message.from_,
        "from_header": message.from_header,
        "to": message.to,
        "cc": message.cc,
        "bcc": message.bcc,
        "reply_to": message.reply_to,
        "subject": message.subject,
        "size": _size(message),
        "format": message.format,
        "saved_to_sent_items": message.save_to_sent_items,
        "importance": message.importance,
        "request_id": message.request_id,
        "attachments": [_attachment_json(a, i, url) for i, a in enumerate(message.attachments)],
        "url": url,
        "eml_url": f"{url}.eml",
        "api_url": f"{base}/api/messages/{message.id}",
    }


def detail(message: SentMessage, base: str) -> dict[str, Any]:
    """``/api/messages/<id>``: the summary plus the bodies and every header."""
    return {
        **summary(message, base),
        "text": message.text,
        "html": message.html,
        "headers": [[name, value] for name, value in message.headers],
    }


def _attachment_json(attachment: Attachment, index: int, url: str) -> dict[str, Any]:
    return {
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "size": attachment.size,
        "sha256": attachment.sha256,
        "content_id": attachment.content_id,
        "inline": attachment.inline,
        "url": f"{url}/attachments/{index}",
    }


def _limit(text: str | None) -> int | None:
    """The API's ``limit``: how many entries at most (None: all)."""
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise ValueError(f"limit must be a whole number, not {text[:20]!r}")
    return int(text)


def _size(message: SentMessage) -> int:
    return len(as_eml(message))


@cache
def _asset(name: str) -> bytes:
    return (resources.files("msgraph_mail.emulator") / "static" / name).read_bytes()


_NO_SNIFF = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def _page(body: str, extra: dict[str, str] | None = None, status: int = 200) -> Response:
    headers = {
        "Content-Type": _HTML,
        "Content-Security-Policy": html.csp(""),
        "Referrer-Policy": "same-origin",  # no-referrer would send "Origin: null" on POST
        **_NO_SNIFF,
        **(extra or {}),
    }
    return Response(status, body.encode(), headers)


def _not_found(what: str) -> Response:
    return _page(html.render("not_found.html", what=what), status=404)


def _text(status: int, text: str, extra: dict[str, str] | None = None) -> Response:
    headers = {"Content-Type": "text/plain; charset=utf-8", **_NO_SNIFF, **(extra or {})}
    return Response(status, text.encode(), headers)


def _json(status: int, body: object) -> Response:
    headers = {"Content-Type": "application/json; charset=utf-8", **_NO_SNIFF}
    return Response(status, json.dumps(body, indent=2).encode(), headers)


def _download(content: bytes, content_type: str, filename: str) -> Response:
    """Always a download, never rendered here: an attached HTML file must not run as us."""
    fallback = _SAFE_NAME.sub("_", filename) or "download"
    disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"
    if not _MEDIA_TYPE.fullmatch(content_type):  # JSON sendMail takes any string
        content_type = "application/octet-stream"
    headers = {
        "Content-Type": content_type,
        "Content-Disposition": disposition,
        "Content-Security-Policy": "sandbox; default-src 'none'",
        **_NO_SNIFF,
    }
    return Response(200, content, headers)
