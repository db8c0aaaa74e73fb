"""The dev inbox's HTML: the message list and the message view, rendered on the server.

Every value from a message is escaped; the HTML body goes into a sandboxed ``srcdoc``
iframe (no scripts, no forms, no same-origin access) under a Content-Security-Policy that
admits only inline styles, ``data:`` images and this message's own attachments, plus remote
images when the reader asks for them. CSS and JavaScript are two static files, no build step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email.utils import parseaddr
from html import escape
from typing import Any
from urllib.parse import unquote

from .inbox_search import MessageQuery
from .mail import Attachment, SentMessage

_CID = re.compile(r"cid:([^\"'\s)>]+)", re.IGNORECASE)
_CLIP = (  # inline SVG: no emoji font needed, and no image request
    '<svg viewBox="0 0 16 16" width="13" height="13" aria-hidden="true"><path d="M10.5 4.5v6'
    'a2.5 2.5 0 0 1-5 0V4a1.5 1.5 0 0 1 3 0v6a.5.5 0 0 1-1 0V5" fill="none" '
    'stroke="currentColor" stroke-width="1.3" stroke-linecap="round"/></svg>'
)
_SNIPPET_HELP = "Send mail from Django with these settings; it shows up here."


def csp(frame_images: str) -> str:
    """The page policy; ``about:srcdoc`` frames inherit it, so it bounds the email too."""
    images = " ".join(["'self'", "data:", *frame_images.split()])
    return (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        f"img-src {images}; connect-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )


def e(value: object) -> str:
    return escape(str(value), quote=True)


def size(count: int) -> str:
    if count < 1000:
        return f"{count} B"
    if count < 1_000_000:
        return f"{count / 1000:.1f} kB"
    return f"{count / 1_000_000:.1f} MB"


def page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{e(title)}</title><link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/static/inbox.css">'
        '<script src="/static/inbox.js" defer></script></head>'
        f'<body><header class="bar"><a class="brand" href="/">Graph emulator inbox</a>'
        '<span class="offline-note">emulator not reachable</span>'
        '<nav><a href="/">Messages</a><a href="/requests">Requests</a>'
        '<a href="/api/messages">JSON API</a>'
        '<form class="clear" method="post" action="/clear">'
        '<button type="submit">Clear</button></form></nav></header>'
        f"<main>{body}</main></body></html>\n"
    )


# the list ------------------------------------------------------------------------------------


def list_page(
    listing: str,
    search: str,
    faults: str,
    budgets: list[dict[str, Any]] | None = None,
    time_scale: float = 1.0,
    total: int = 0,
) -> str:
    """The list page: the search form, the list (``listing``: :func:`list_fragment`), the
    faults panel and the budgets' meters; the script keeps them current."""
    body = f'{search}<div id="list">{listing}</div>{faults}'
    if budgets is not None:
        body += (
            '<section class="budgets"><h2>Budgets</h2>'
            f'<div id="budgets">{budgets_fragment(budgets, time_scale)}</div></section>'
        )
    return page(f"Inbox ({total})", body)


def search_form(query: MessageQuery, mailboxes: list[str], error: str | None = None) -> str:
    """Search by subject or address, mailbox, route and capture date (``GET /``)."""
    boxes = "".join(_option(box, box, query.value("mailbox")) for box in mailboxes)
    routes = "".join(_option(value, label, query.value("route")) for value, label in _ROUTES)
    problem = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    reset = ' <a href="/">Show all</a>' if query else ""
    return (
        '<form class="search" method="get" action="/" role="search">'
        f'<input type="search" name="q" value="{e(query.value("q"))}" '
        'placeholder="Subject or address" aria-label="Subject or address">'
        f'<select name="mailbox" aria-label="Mailbox"><option value="">All mailboxes</option>'
        f"{boxes}</select>"
        f'<select name="route" aria-label="Route"><option value="">Any route</option>'
        f"{routes}</select>"
        f'<label>from <input type="date" name="since" value="{e(query.value("since"))}"></label>'
        f'<label>to <input type="date" name="until" value="{e(query.value("until"))}"></label>'
        f'<button type="submit">Search</button>{reset}</form>{problem}'
    )


_ROUTES = (("mime", "MIME sendMail"), ("json", "JSON sendMail"), ("draft", "Draft"))


def _option(value: str, label: str, chosen: str) -> str:
    selected = " selected" if value.lower() == chosen.lower() else ""
    return f'<option value="{e(value)}"{selected}>{e(label)}</option>'


def list_fragment(
    messages: list[SentMessage],
    total: int,
    matching: int,
    snippet: str,
    size_of: Callable[[SentMessage], int],
) -> str:
    """The newest ``messages`` of the ``matching`` ones (of ``total`` stored)."""
    if not total:
        return (
            '<section class="empty"><h1>No messages yet</h1>'
            f"<p>{e(_SNIPPET_HELP)}</p><pre>{e(snippet)}</pre></section>"
        )
    if not matching:
        return f'<p class="count">No message matches the search ({total} stored).</p>'
    rows = "".join(_row(m, size_of(m)) for m in messages)
    noun = "message" if matching == 1 else "messages"
    shown = f"the newest {len(messages)} of " if len(messages) < matching else ""
    of = f" (of {total})" if matching < total else ""
    return (
        f'<p class="count">{shown}{matching} {noun}{of}, newest first</p>'
        '<table class="messages"><thead><tr><th>Received</th><th>Mailbox</th><th>From</th>'
        "<th>To</th><th>Subject</th><th>Size</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _row(message: SentMessage, count: int) -> str:
    when = message.received_at.astimezone()
    files = len(message.attachments)
    clip = f' <span class="clip" title="{files} attached">{_CLIP}{files}</span>' if files else ""
    return (
        f'<tr data-id="{e(message.id)}">'
        f'<td class="time"><time datetime="{e(message.received_at.isoformat())}">'
        f"{e(when.strftime('%H:%M:%S'))}</time><small>{e(when.strftime('%Y-%m-%d'))}</small></td>"
        f"<td>{e(message.mailbox.user_principal_name)}</td>"
        f"<td>{_sender(message.from_header)}</td>"
        f"<td>{_recipients(message)}</td>"
        f'<td class="subject"><a href="/messages/{e(message.id)}">'
        f"{e(message.subject or '(no subject)')}</a>{clip}{_route_tag(message)}</td>"
        f'<td class="size">{e(size(count))}</td></tr>'
    )


#: How each route reads in the page; the JSON API gives ``format`` and ``saved_to_sent_items``.
ROUTES = {"mime": "MIME sendMail", "json": "JSON sendMail", "draft": "draft, then send"}


def route_label(message: SentMessage) -> str:
    """Which request carried the message, and whether a copy went to Sent Items."""
    saved = "saved to Sent Items" if message.save_to_sent_items else "no copy in Sent Items"
    return f"{ROUTES.get(message.format, message.format)} ({saved})"


def _route_tag(message: SentMessage) -> str:
    """A tag on the rows not sent as plain MIME sendMail, so they stand out in the list."""
    if message.format == "mime":
        return ""
    return f' <span class="route" title="{e(route_label(message))}">{e(message.format)}</span>'


def _sender(from_header: str) -> str:
    """The display name, with the address below it in small type."""
    name, address = parseaddr(from_header)
    if not name or not address:
        return e(from_header)
    return f'{e(name)}<small class="address">{e(address)}</small>'


def _recipients(message: SentMessage) -> str:
    parts = [e(", ".join(message.to))] if message.to else []
    for label, addresses in (("Cc", message.cc), ("Bcc", message.bcc)):
        if addresses:
            parts.append(f'<span class="label">{label}</span> {e(", ".join(addresses))}')
    return "<br>".join(parts)


# budgets -------------------------------------------------------------------------------------

_BUDGETS = (
    ("concurrency", "In flight"),
    ("requests", "Requests / 10 min"),
    ("upload", "Upload / 5 min"),
    ("recipients", "Recipients / 24 h"),
)


def budgets_fragment(rows: list[dict[str, Any]], time_scale: float) -> str:
    """One row per mailbox (and application), a meter per limit; the script refreshes it."""
    head = "".join(f"<th>{e(label)}</th>" for _, label in _BUDGETS)
    body = "".join(_budget_row(row) for row in rows)
    scaled = (
        f'<p class="note">Windows scaled by {e(f"{time_scale:g}")} '
        f"(10 minutes last {e(f'{600 * time_scale:g}')} s).</p>"
        if time_scale != 1.0
        else ""
    )
    return (
        f'{scaled}<table class="budgets"><thead><tr><th>Mailbox</th><th>Application</th>'
        f"{head}<th>429s</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _mebibytes(count: float) -> str:
    """The upload limit's unit: Graph's MB, 2**20 bytes (the 150 MB of the 5-minute limit)."""
    return f"{count / 2**20:.1f} MB".replace(".0 MB", " MB")


def _budget_row(row: dict[str, Any]) -> str:
    cells = "".join(_meter(name, row[name]) for name, _ in _BUDGETS)
    refused = sum(row["throttled"].values())
    return (
        f"<tr><td>{e(row['mailbox'])}</td><td><small>{e(row['app'])}</small></td>{cells}"
        f'<td class="refused">{refused}</td></tr>'
    )


def _meter(name: str, budget: dict[str, Any]) -> str:
    used, limit = budget["used"], budget["limit"]
    show = _mebibytes if name == "upload" else (lambda n: f"{n:g}")
    if limit is None:
        return f"<td><small>{e(show(used))} (no limit)</small></td>"
    text = f"{show(used)} of {show(limit)}"
    return (
        f'<td><meter data-budget="{e(name)}" min="0" max="{e(limit)}" value="{e(used)}" '
        f'high="{e(limit * 0.8)}" title="{e(text)}">{e(text)}</meter>'
        f"<small>{e(text)}</small></td>"
    )


# one message ---------------------------------------------------------------------------------


def message_page(
    message: SentMessage,
    base: str,
    images: bool,
    count: int,
    requests: str = "",
    delivery: str = "",
) -> str:
    """Summary, HTML body (phone and desktop widths), text part, attachments, the requests
    that carried it (``requests``: the log's fragment) and every header of one message."""
    sections = [
        f'<p class="back"><a href="/">&larr; All messages</a></p>'
        f"<h1>{e(message.subject or '(no subject)')}</h1>",
        _summary(message, count),
        delivery,
        _html_section(message, base, images),
        f'<section><h2>Requests</h2><div class="carried">{requests}</div>'
        f'<p class="note"><a href="/requests?message={e(message.id)}">In the request log</a>'
        "</p></section>"
        if requests
        else "",
        _text_section(message),
        _attachments_section(message),
        _headers_section(message),
    ]
    return page(message.subject or "(no subject)", "".join(s for s in sections if s))


def delivery_section(states: list[dict[str, Any]], reports: list[Any]) -> str:
    """After the 202: each recipient's status as the message trace shows it, and the NDRs
    the message brought into its sender's Inbox (links to their raw MIME, as text)."""
    if not states:
        return ""
    rows = "".join(
        f'<tr class="{e(s["outcome"])}"><td>{e(s["recipient"])}</td><td>{e(s["status"])}</td>'
        f"<td>{e(' '.join(filter(None, (s['code'], s['diagnostic']))))}</td></tr>"
        for s in states
    )
    links = "".join(
        f'<li><a href="/reports/{e(r.id)}.txt">{e(r.subject or "(no subject)")}</a></li>'
        for r in reports
    )
    return (
        "<section><h2>Delivery</h2>"
        '<table class="delivery"><tr><th>Recipient</th><th>Trace status</th><th>Code</th></tr>'
        f"{rows}</table>"
        + (
            f'<h3>Reports in the sender\'s Inbox</h3><ul class="reports">{links}</ul>'
            if links
            else ""
        )
        + "</section>"
    )


def _summary(message: SentMessage, count: int) -> str:
    fields = [
        ("Received", message.received_at.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("Mailbox", message.mailbox.user_principal_name),
        ("From", message.from_header),
        ("To", ", ".join(message.to)),
        ("Cc", ", ".join(message.cc)),
        ("Bcc", ", ".join(message.bcc)),
        ("Reply-To", ", ".join(message.reply_to)),
        ("Size", size(count)),
        ("Importance", "" if message.importance == "normal" else message.importance),
        ("Sent as", f"{route_label(message)}, request-id {message.request_id}"),
    ]
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in fields if v)
    links = (
        f'<p class="actions"><a class="button" href="/messages/{e(message.id)}.eml" download>'
        f'Download .eml</a> <a href="/api/messages/{e(message.id)}">JSON</a></p>'
    )
    return f'<table class="summary">{rows}</table>{links}'


def _html_section(message: SentMessage, base: str, images: bool) -> str:
    if message.html is None:
        return ""
    if images:
        toggle = f'<a href="/messages/{e(message.id)}">Block remote images</a>'
    else:
        toggle = (
            f'Remote images are blocked. <a href="/messages/{e(message.id)}?images=1">'
            "Show remote images</a>"
        )
    document = e(frame_document(message, base, images))
    sandbox = 'sandbox="allow-popups allow-popups-to-escape-sandbox" referrerpolicy="no-referrer"'
    return (
        f'<section><h2>HTML</h2><p class="note">{toggle} Shown at a desktop and a phone '
        "width, side by side.</p>"
        '<div class="preview"><figure class="desktop"><figcaption>Desktop, 800 px</figcaption>'
        f'<iframe class="html-body" title="HTML body, desktop width" {sandbox} '
        f'srcdoc="{document}"></iframe></figure>'
        '<figure class="phone"><figcaption>Phone, 375 px</figcaption>'
        f'<iframe class="html-phone" title="HTML body, phone width" {sandbox} '
        f'srcdoc="{document}"></iframe></figure></div></section>'
    )


def frame_document(message: SentMessage, base: str, images: bool) -> str:
    """The iframe's document: its own CSP (belt and braces), links open in a new tab."""
    attachments = f"{base}/messages/{message.id}/attachments/"
    policy = (
        f"default-src 'none'; style-src 'unsafe-inline'; font-src data:; "
        f"img-src data: {attachments}{' http: https:' if images else ''}"
    )
    head = (
        f'<meta http-equiv="Content-Security-Policy" content="{e(policy)}">'
        '<meta name="referrer" content="no-referrer"><base target="_blank">'
    )
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


def _text_section(message: SentMessage) -> str:
    if message.text is None:
        return ""
    return f'<section><h2>Text</h2><pre class="text-body">{e(message.text)}</pre></section>'


def _attachments_section(message: SentMessage) -> str:
    if not message.attachments:
        return ""
    items = "".join(_attachment(message, index, a) for index, a in enumerate(message.attachments))
    return f'<section><h2>Attachments</h2><ul class="attachments">{items}</ul></section>'


def _attachment(message: SentMessage, index: int, attachment: Attachment) -> str:
    name = attachment.filename or f"attachment-{index}"
    inline = f", inline, cid:{attachment.content_id}" if attachment.content_id else ""
    return (
        f'<li><a href="/messages/{e(message.id)}/attachments/{index}" download>{e(name)}</a> '
        f'<span class="meta">{e(attachment.content_type)}, {e(size(attachment.size))}'
        f"{e(inline)}</span></li>"
    )


def _headers_section(message: SentMessage) -> str:
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in message.headers)
    return (
        f"<section><details><summary>All headers ({len(message.headers)})</summary>"
        f'<table class="headers">{rows}</table></details></section>'
    )


def not_found_page(what: str) -> str:
    return page(
        "Not found", f'<p class="back"><a href="/">&larr; All messages</a></p><h1>{e(what)}</h1>'
    )
