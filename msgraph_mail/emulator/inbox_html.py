"""The dev inbox's HTML: the message list, the message view, the request log and the faults
panel, rendered on the server from the templates in ``templates/``.

Every value is escaped (Django's template engine, used standalone: localization and time
zones off, so no settings are needed and numbers render as Python writes them);
the HTML body goes into a sandboxed ``srcdoc`` iframe (no scripts, no forms, no same-origin
access) under a Content-Security-Policy that admits only inline styles, ``data:`` images and
this message's own attachments, plus remote images when the reader asks for them. CSS and
JavaScript are two static files, no build step. The request log shows what
:mod:`~msgraph_mail.emulator.request_log` keeps, which holds no secret.
"""

from __future__ import annotations

import re
from email.utils import parseaddr
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import unquote

from django.template import Context, Engine

from .inbox_search import ROUTES, MessageQuery
from .mail import SentMessage
from .request_log import RecordedRequest
from .store import as_eml
from .workbench import DESCRIPTIONS, FAULTS

_CID = re.compile(r"cid:([^\"'\s)>]+)", re.IGNORECASE)
#: How each route reads in the page; the JSON API gives ``format`` and ``saved_to_sent_items``.
ROUTE_LABELS = {"mime": "MIME sendMail", "json": "JSON sendMail", "draft": "draft, then send"}
_SEARCH_ROUTES = {"mime": "MIME sendMail", "json": "JSON sendMail", "draft": "Draft"}
_BUDGETS = ("concurrency", "requests", "upload", "recipients")


@cache
def _engine() -> Engine:
    """The templates, each line's indentation and line break dropped (none of them is
    content): the pages come out as compact as when they were built by hand."""
    folder = resources.files("msgraph_mail.emulator") / "templates"
    sources = {}
    for entry in folder.iterdir():
        text = entry.read_text(encoding="utf-8")
        text = re.sub(r"(>|%\}|\}\})[ \t]*\n\s*", r"\1", text)
        text = re.sub(r"\s*\n\s*(<|\{%)", r"\1", text)
        sources[entry.name] = re.sub(r"\s*\n\s*", " ", text.strip())
    locmem = ("django.template.loaders.locmem.Loader", sources)
    return Engine(loaders=[("django.template.loaders.cached.Loader", [locmem])])


def render(template: str, **context: Any) -> str:
    context = Context(context, autoescape=True, use_l10n=False, use_tz=False)
    return str(_engine().get_template(template).render(context))


def csp(frame_images: str) -> str:
    """The page policy; ``about:srcdoc`` frames inherit it, so it bounds the email too."""
    images = " ".join(["'self'", "data:", *frame_images.split()])
    return (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        f"img-src {images}; connect-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )


def size(count: int) -> str:
    if count < 1000:
        return f"{count} B"
    if count < 1_000_000:
        return f"{count / 1000:.1f} kB"
    return f"{count / 1_000_000:.1f} MB"


def route_label(message: SentMessage) -> str:
    """Which request carried the message, and whether a copy went to Sent Items."""
    saved = "saved to Sent Items" if message.save_to_sent_items else "no copy in Sent Items"
    return f"{ROUTE_LABELS.get(message.format, message.format)} ({saved})"


def _count(shown: int, matching: int, total: int, noun: str) -> str:
    """ "the newest 100 of 250 messages (of 300), newest first"."""
    newest = f"the newest {shown} of " if shown < matching else ""
    plural = noun if matching == 1 else f"{noun}s"
    of = f" (of {total})" if matching < total else ""
    return f"{newest}{matching} {plural}{of}, newest first"


# the list ------------------------------------------------------------------------------------


def search(query: MessageQuery, mailboxes: list[str], error: str | None = None) -> dict[str, Any]:
    """The search form: subject or address, mailbox, route and capture date (``GET /``)."""

    def select(name: str, title: str, anything: str, choices: dict[str, str]) -> tuple[Any, ...]:
        chosen = query.value(name).lower()
        return name, title, anything, [(v, t, v.lower() == chosen) for v, t in choices.items()]

    return {
        **{name: query.value(name) for name in ("q", "since", "until")},
        "selects": [
            select("mailbox", "Mailbox", "All mailboxes", {box: box for box in mailboxes}),
            select("route", "Route", "Any route", {r: _SEARCH_ROUTES[r] for r in ROUTES}),
        ],
        "reset": bool(query),
        "error": error,
    }


def listing(messages: list[SentMessage], total: int, matching: int, snippet: str) -> dict[str, Any]:
    """The newest ``messages`` of the ``matching`` ones (of ``total`` stored)."""
    return {
        "total": total,
        "snippet": snippet,
        "count": _count(len(messages), matching, total, "message"),
        "rows": [_row(m) for m in messages] if matching else [],
    }


def _row(message: SentMessage) -> dict[str, Any]:
    when = message.received_at.astimezone()
    name, address = parseaddr(message.from_header)
    copies = [(label, ", ".join(a)) for label, a in (("Cc", message.cc), ("Bcc", message.bcc))]
    return {
        "id": message.id,
        "received": message.received_at.isoformat(),
        "time": when.strftime("%H:%M:%S"),
        "date": when.strftime("%Y-%m-%d"),
        "mailbox": message.mailbox.user_principal_name,
        "sender": name if name and address else message.from_header,
        "sender_address": address if name and address else "",
        "to": ", ".join(message.to),
        "copies": [(label, addresses) for label, addresses in copies if addresses],
        "subject": message.subject or "(no subject)",
        "files": len(message.attachments),
        "route": "" if message.format == "mime" else message.format,
        "route_label": route_label(message),
        "size": size(len(as_eml(message))),
    }


def budgets(rows: list[dict[str, Any]], time_scale: float) -> dict[str, Any]:
    """One row per mailbox (and application), a meter per limit; the script refreshes it."""
    return {
        "scaled": time_scale != 1.0,
        "scale": f"{time_scale:g}",
        "window": f"{600 * time_scale:g}",
        "rows": [
            {
                "mailbox": row["mailbox"],
                "app": row["app"],
                "meters": [_meter(name, row[name]) for name in _BUDGETS],
                "refused": sum(row["throttled"].values()),
            }
            for row in rows
        ],
    }


def _meter(name: str, budget: dict[str, Any]) -> dict[str, str | None]:
    used, limit = budget["used"], budget["limit"]

    def show(count: float) -> str:  # the upload limit's unit: Graph's MB, 2**20 bytes
        return (
            f"{count / 2**20:.1f} MB".replace(".0 MB", " MB") if name == "upload" else f"{count:g}"
        )

    if limit is None:
        return {"limit": None, "text": show(used)}
    return {
        "name": name,
        "limit": str(limit),
        "used": str(used),
        "high": str(limit * 0.8),
        "text": f"{show(used)} of {show(limit)}",
    }


# the request log and the faults panel ------------------------------------------------------


def log(rows: list[tuple[RecordedRequest, str | None]], total: int) -> dict[str, Any]:
    """Newest first; each row links to the message it carried, if any."""
    return {"count": _count(len(rows), total, total, "request"), "rows": [_entry(*r) for r in rows]}


def _entry(record: RecordedRequest, message: str | None) -> dict[str, Any]:
    path = record.path if len(record.path) <= 70 else f"{record.path[:69]}…"
    return {
        "request_id": record.request_id,
        "kind": record.kind,
        "failed": record.status == 0 or record.status >= 400,
        "started": record.started.isoformat(),
        "time": record.started.astimezone().strftime("%H:%M:%S.%f")[:12],
        "method": record.method,
        "path": record.path,
        "short": path,
        "status": record.status or "reset",
        "error": record.error,
        "ms": f"{record.duration * 1000:.0f}",
        "mailbox": record.mailbox or "",
        "app": record.app_id or "",
        "message": message,
    }


def faults(armed: list[dict[str, Any]]) -> dict[str, Any]:
    """The faults panel's choices and what is armed now."""
    choices = [(name, DESCRIPTIONS[name]) for name in (*FAULTS, "latency")]
    return {"fault_choices": choices, "armed": [_armed_text(entry) for entry in armed]}


def _armed_text(entry: dict[str, Any]) -> str:
    seconds = entry["seconds"]
    if entry["fault"] == "latency":
        return f"latency {seconds:g} s on every answer"
    retry = seconds is not None and entry["fault"] in ("429", "503")
    wait = f", Retry-After {seconds:g} s" if retry else ""
    times = "request" if entry["count"] == 1 else f"{entry['count']} requests"
    return f"{entry['fault']} on the next {times}{wait}: {entry['description']}"


# one message ---------------------------------------------------------------------------------


def message(
    message: SentMessage,
    base: str,
    images: bool,
    log_rows: list[tuple[RecordedRequest, str | None]],
    states: list[dict[str, Any]],
    reports: list[Any],
) -> dict[str, Any]:
    """Summary, delivery, HTML body (phone and desktop widths), text part, attachments, the
    requests that carried it and every header of one message."""
    fields = [
        ("Received", message.received_at.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("Mailbox", message.mailbox.user_principal_name),
        ("From", message.from_header),
        ("To", ", ".join(message.to)),
        ("Cc", ", ".join(message.cc)),
        ("Bcc", ", ".join(message.bcc)),
        ("Reply-To", ", ".join(message.reply_to)),
        ("Size", size(len(as_eml(message)))),
        ("Importance", "" if message.importance == "normal" else message.importance),
        ("Sent as", f"{route_label(message)}, request-id {message.request_id}"),
    ]
    attachments = [
        (
            index,
            a.filename or f"attachment-{index}",
            f"{a.content_type}, {size(a.size)}"
            + (f", inline, cid:{a.content_id}" if a.content_id else ""),
        )
        for index, a in enumerate(message.attachments)
    ]
    return {
        "id": message.id,
        "subject": message.subject or "(no subject)",
        "summary": [(name, value) for name, value in fields if value],
        "delivery": [
            {**s, "code": " ".join(filter(None, (s["code"], s["diagnostic"])))} for s in states
        ],
        "reports": [(r.id, r.subject or "(no subject)") for r in reports],
        "images": images,
        "document": None if message.html is None else frame_document(message, base, images),
        "frames": [("desktop", "Desktop, 800 px", "body"), ("phone", "Phone, 375 px", "phone")],
        "log": log(log_rows, len(log_rows)),
        "text": message.text,
        "attachments": attachments,
        "header_count": len(message.headers),
        "headers": message.headers,
    }


def frame_document(message: SentMessage, base: str, images: bool) -> str:
    """The iframe's document: its own CSP (belt and braces), links open in a new tab."""
    attachments = f"{base}/messages/{message.id}/attachments/"
    policy = (
        f"default-src 'none'; style-src 'unsafe-inline'; font-src data:; "
        f"img-src data: {attachments}{' http: https:' if images else ''}"
    )
    head = render("frame_head.html", policy=policy)
    return head + inline_images(message, attachments)


def inline_images(message: SentMessage, attachments_url: str) -> str:
    """``cid:`` references point at the attachment they name, served by the inbox."""
    by_cid = {
        a.content_id.lower(): index
        for index, a in enumerate(message.attachments)
        if a.content_id is not None
    }

    def replace(match: re.Match[str]) -> str:
        index = by_cid.get(unquote(match.group(1)).lower())
        return match.group(0) if index is None else f"{attachments_url}{index}"

    return _CID.sub(replace, message.html or "")
