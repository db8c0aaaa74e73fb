"""The dev inbox's workbench HTML: the request log and the faults panel.

Every value is escaped; the log shows what :mod:`~msgraph_mail.emulator.request_log` keeps,
which holds no secret. The faults panel is a plain form the page's script posts to
``/api/faults`` as JSON (the same API a test suite scripts).
"""

from __future__ import annotations

from typing import Any

from .inbox_html import e, page
from .request_log import RecordedRequest
from .workbench import DESCRIPTIONS, FAULTS


def requests_page(log: str, faults: str, message: str | None, total: int) -> str:
    """``/requests``: the faults panel, then the log (``log``: :func:`log_fragment`)."""
    heading = "Requests"
    if message is not None:
        heading = "Requests that carried one message"
    back = '<p class="back"><a href="/requests">&larr; Every request</a></p>' if message else ""
    return page(
        f"Requests ({total})",
        f'{back}<h1>{e(heading)}</h1>{faults}<div id="log">{log}</div>',
    )


def log_fragment(rows: list[tuple[RecordedRequest, str | None]], total: int) -> str:
    """Newest first; each row links to the message it carried, if any."""
    if not rows:
        return '<p class="count">No request yet: send mail from your app.</p>'
    shown = f"the newest {len(rows)} of " if len(rows) < total else ""
    body = "".join(_row(record, message) for record, message in rows)
    noun = "request" if total == 1 else "requests"
    return (
        f'<p class="count">{shown}{total} {noun}, newest first</p>'
        '<table class="requests"><thead><tr><th>Time</th><th>Request</th><th>Status</th>'
        "<th>ms</th><th>Mailbox</th><th>Application</th><th>request-id</th><th>Message</th>"
        f"</tr></thead><tbody>{body}</tbody></table>"
    )


def _row(record: RecordedRequest, message: str | None) -> str:
    when = record.started.astimezone()
    status = "reset" if record.status == 0 else str(record.status)
    failed = record.status == 0 or record.status >= 400
    error = f'<small class="error-code">{e(record.error)}</small>' if record.error else ""
    link = f'<a href="/messages/{e(message)}">message</a>' if message else ""
    css = ' class="failed"' if failed else ""
    return (
        f'<tr data-request-id="{e(record.request_id)}" data-kind="{e(record.kind)}"{css}>'
        f'<td class="time"><time datetime="{e(record.started.isoformat())}">'
        f"{e(when.strftime('%H:%M:%S.%f')[:12])}</time></td>"
        f'<td class="path"><b>{e(record.method)}</b> <span title="{e(record.path)}">'
        f"{e(_short(record.path))}</span><small>{e(record.kind)}</small></td>"
        f'<td class="status">{e(status)}{error}</td>'
        f'<td class="ms">{record.duration * 1000:.0f}</td>'
        f"<td>{e(record.mailbox or '')}</td>"
        f"<td><small>{e(record.app_id or '')}</small></td>"
        f'<td><small class="rid">{e(record.request_id)}</small></td>'
        f"<td>{link}</td></tr>"
    )


def _short(path: str, limit: int = 70) -> str:
    return path if len(path) <= limit else f"{path[: limit - 1]}…"


def faults_panel(armed: list[dict[str, Any]]) -> str:
    """The form that arms a fault on the next sendMail requests, and what is armed now."""
    options = "".join(
        f'<option value="{e(name)}">{e(name)}: {e(DESCRIPTIONS[name])}</option>'
        for name in (*FAULTS, "latency")
    )
    return (
        '<section class="faults"><h2>Faults</h2>'
        '<form id="arm" class="arm"><select name="fault" aria-label="Fault">'
        f"{options}</select>"
        '<label>next <input type="number" name="count" value="1" min="1" max="1000"> '
        "sendMail requests</label>"
        '<label>seconds <input type="number" name="seconds" min="0" max="600" step="0.1" '
        'placeholder="Retry-After / latency"></label>'
        '<button type="submit">Arm</button></form>'
        f'<div id="armed">{armed_fragment(armed)}</div></section>'
    )


def armed_fragment(armed: list[dict[str, Any]]) -> str:
    if not armed:
        return '<p class="note">Nothing armed: Graph answers normally.</p>'
    items = "".join(f"<li>{e(_armed_text(entry))}</li>" for entry in armed)
    return (
        f'<ul class="armed">{items}</ul>'
        '<button type="button" id="disarm" class="danger">Switch off</button>'
    )


def _armed_text(entry: dict[str, Any]) -> str:
    seconds = entry["seconds"]
    if entry["fault"] == "latency":
        return f"latency {seconds:g} s on every answer"
    wait = (
        f", Retry-After {seconds:g} s"
        if seconds is not None
        and entry["fault"]
        in (
            "429",
            "503",
        )
        else ""
    )
    times = "request" if entry["count"] == 1 else f"{entry['count']} requests"
    return f"{entry['fault']} on the next {times}{wait}: {entry['description']}"
