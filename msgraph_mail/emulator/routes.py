"""Graph ``/v1.0`` endpoints: user get/list and ``sendMail``, with Graph's checks and order;
the mailbox's folders, drafts and message trace are in their own modules.

Routing is separate from HTTP plumbing so that the request kind ("user_get", "sendMail", ...)
can be known before the body is read (the 4 MB limit is enforced on ``Content-Length``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from .delivery import Deliveries
from .directory import Tenant, User
from .entra import IssuedToken, TokenStore
from .errors import GraphError, access_denied, send_as_denied
from .mail import (
    NO_RECIPIENTS,
    Screened,
    SentMessage,
    decode_base64_mime,
    from_json,
    screen_mime,
)
from .query import filter_addresses, parse_filter, parse_select, unsupported

ODATA_JSON = "application/json;odata.metadata=minimal;odata.streaming=true;charset=utf-8"
MAX_REQUEST_BYTES = 4 * 1024 * 1024
_USERS_KEY = re.compile(r"users\('((?:[^']|'')*)'\)", re.IGNORECASE)
_FOLDER_KEY = re.compile(r"mailFolders\('((?:[^']|'')*)'\)", re.IGNORECASE)
_DETAILS = re.compile(
    r"(?:microsoft\.graph\.)?getDetailsByRecipient\(recipientAddress='((?:[^']|'')*)'\)",
    re.IGNORECASE,
)
_TRACES = ["admin", "exchange", "tracing", "messagetraces"]
_SEND_MAIL = ("sendmail", "microsoft.graph.sendmail")
_DIRECTORY_OPTIONS = ("$select", "$filter", "$top")
_WWW_AUTHENTICATE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
    'authorize", client_id="00000003-0000-0000-c000-000000000000"'
)


@dataclass
class Request:
    """One HTTP request as the routes see it (body already read)."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    request_id: str
    client_request_id: str | None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """``name`` is the request kind; ``key`` the user id/UPN; ``bad`` an unknown segment."""

    name: str
    key: str | None = None
    bad: str | None = None
    method: str | None = None
    item: str | None = None  # a message id (drafts, Inbox), a folder, a message trace id
    argument: str | None = None  # getDetailsByRecipient's recipientAddress


def _segments(path: str) -> list[str]:
    """The percent-decoded segments after ``/v1.0`` (a trailing slash ignored)."""
    segments = [unquote(s) for s in path.split("/")[2:]]
    if segments and segments[-1] == "" and len(segments) > 1:
        segments.pop()
    return segments


def _user_key(segments: list[str]) -> tuple[str, list[str]] | None:
    """``users/{key}/...`` or ``users('{key}')/...``: the key and what follows it."""
    match = _USERS_KEY.fullmatch(segments[0]) if segments else None
    if match:
        return match.group(1).replace("''", "'"), segments[1:]
    if len(segments) > 1 and segments[0].lower() == "users":
        return segments[1], segments[2:]
    return None


def user_key(path: str) -> str | None:
    """The user key of any ``/v1.0/users/{key}`` path, a directory read included, else None."""
    if path.split("/")[1:2] != ["v1.0"]:
        return None
    found = _user_key(_segments(path))
    return found[0] if found is not None else None


def mailbox_key(path: str) -> str | None:
    """The user key of a path *under* a mailbox (``/v1.0/users/{key}/...``), else None.

    Outlook's concurrency limit counts these; ``/users/{key}`` itself is a directory read.
    """
    if path.split("/")[1:2] != ["v1.0"]:
        return None
    found = _user_key(_segments(path))
    return found[0] if found is not None and found[1] else None


def resolve(path: str) -> Route:
    """Map a ``/v1.0/...`` path to a route (path segments are percent-decoded one by one)."""
    segments = _segments(path)
    if not segments:
        return Route("other", bad="")
    if [s.lower() for s in segments] == ["users"]:
        return Route("user_list", method="GET")
    if segments[0].lower() == "admin":
        return _trace_route(segments)
    if segments[0].lower() == "subscriptions":
        return _subscription_route(segments[1:])
    found = _user_key(segments)
    if found is None:
        return Route("other", bad=segments[0])
    key, rest = found
    if key.startswith("$") and not _USERS_KEY.fullmatch(segments[0]):
        return Route("other", bad=key)  # Graph: 400; a UPN starting with $ needs users('$x')
    if not rest:
        return Route("user_get", key=key, method="GET")
    if len(rest) == 1 and rest[0].lower() in _SEND_MAIL:
        return Route("sendMail", key=key, method="POST")
    if rest[0].lower() == "messages":
        return _message_route(key, rest[1:])
    if rest[0].lower().startswith("mailfolders"):
        return _folder_route(key, rest)
    return Route("other", bad=rest[0])


def _folder_route(key: str, rest: list[str]) -> Route:
    """``mailFolders/{folder}/messages[/delta]``, also spelled ``mailFolders('{folder}')``."""
    match = _FOLDER_KEY.fullmatch(rest[0])
    if match:
        folder, tail = match.group(1).replace("''", "'"), [s.lower() for s in rest[1:]]
    elif rest[0].lower() == "mailfolders" and len(rest) > 1:
        folder, tail = rest[1], [s.lower() for s in rest[2:]]
    else:
        return Route("other", bad=rest[0])
    if tail == ["messages"]:
        if folder.lower() == "sentitems":  # the well-known folder name, in any case
            return Route("sent_items", key=key, method="GET")
        return Route("other", bad=folder)
    if tail in (["messages", "delta"], ["messages", "microsoft.graph.delta"]):
        return Route("inbox_delta", key=key, method="GET", item=folder)  # inbox_folder.py
    return Route("other", bad=rest[0])


def _trace_route(segments: list[str]) -> Route:
    """``admin/exchange/tracing/messageTraces[/{id}/getDetailsByRecipient(...)]``."""
    for segment, expected in zip(segments, _TRACES, strict=False):
        if segment.lower() != expected:
            return Route("other", bad=segment)
    if len(segments) < len(_TRACES):
        return Route("other", bad=segments[-1])
    rest = segments[len(_TRACES) :]
    if not rest:
        return Route("message_trace", method="GET")
    match = _DETAILS.fullmatch(rest[-1]) if len(rest) == 2 else None
    if match is None:
        return Route("other", bad=rest[-1])
    recipient = match.group(1).replace("''", "'")
    return Route("message_trace_detail", method="GET", item=rest[0], argument=recipient)


def _subscription_route(rest: list[str]) -> Route:
    """``subscriptions``, ``subscriptions/{id}`` and its ``reauthorize`` (subscriptions.py)."""
    if not rest:
        return Route("subscription_create", method="POST")
    if len(rest) == 1:
        return Route("subscription_get", method="GET", item=rest[0])
    if len(rest) == 2 and rest[1].lower() in ("reauthorize", "microsoft.graph.reauthorize"):
        return Route("subscription_reauthorize", method="POST", item=rest[0])
    return Route("other", bad=rest[-1])


def _message_route(key: str, rest: list[str]) -> Route:
    """``messages``, ``messages/{id}``, its ``send``, ``$value``, ``attachments``,
    ``createUploadSession``."""
    if not rest:
        return Route("draft_create", key=key, method="POST")
    item, tail = rest[0], [s.lower() for s in rest[1:]]
    if not tail:
        return Route("draft_delete", key=key, method="DELETE", item=item)
    if tail in (["send"], ["microsoft.graph.send"]):
        return Route("draft_send", key=key, method="POST", item=item)
    if tail == ["$value"]:
        return Route("message_value", key=key, method="GET", item=item)
    if tail == ["attachments"]:
        return Route("attachment", key=key, method="POST", item=item)
    if tail[0] == "attachments" and tail[1:] in (
        ["createuploadsession"],
        ["microsoft.graph.createuploadsession"],
    ):
        return Route("upload_session", key=key, method="POST", item=item)
    return Route("other", bad=rest[-1])


def _for_method(route: Route, method: str) -> Route:
    """``GET .../messages`` lists the mailbox's messages where ``POST`` creates a draft."""
    if route.name == "draft_create" and method == "GET":
        return Route("message_list", key=route.key, method="GET")
    if route.name == "draft_delete" and method == "GET":
        return Route("message_get", key=route.key, method="GET", item=route.item)
    if route.name == "subscription_create" and method == "GET":
        return Route("subscription_list", method="GET")
    if route.name == "subscription_get" and method in ("PATCH", "DELETE"):
        name = "subscription_update" if method == "PATCH" else "subscription_delete"
        return Route(name, method=method, item=route.item)
    return route


def kind_of(method: str, path: str) -> str:
    """The request kind recorded for counting: a route only counts with its own method."""
    route = _for_method(resolve(path), method)
    return route.name if route.method == method else "other"


class GraphApi:
    """The ``/v1.0`` service: authenticates, routes and records accepted messages."""

    def __init__(
        self,
        tenant: Tenant,
        tokens: TokenStore,
        base_url: Callable[[], str],
        deliver: Callable[[SentMessage | Screened], None],
    ) -> None:
        self.tenant = tenant
        self.tokens = tokens
        self.base_url = base_url
        self.deliver = deliver
        from .drafts import DraftStore  # these modules build on this one
        from .inbox_folder import FULL_READ_ROLES, Inboxes
        from .sent_items import SentItems, delivered_message_id
        from .trace import MessageTraces

        self.sent_items = SentItems()
        self.deliveries = Deliveries(tenant)

        def delivered(message: SentMessage | Screened) -> None:
            message_id = delivered_message_id(message, self.sent_items.rewrite_message_ids)
            deliver(message)
            self.sent_items.record(message, message_id)  # Exchange moves the copy there
            self.deliveries.accept(message, message_id)  # and routes it (delivery.py)

        def may_read_full(mailbox: User, roles: Iterable[str]) -> bool:
            return bool(FULL_READ_ROLES & set(roles)) or self.drafts.may_read_write(mailbox, roles)

        def reports_arrive() -> None:
            for report in self.deliveries.due():
                self.inboxes.add(report.mailbox, report.raw, report.arrived)

        self.deliver = delivered
        self.drafts = DraftStore(tenant, base_url, delivered)
        self.sent_items.may_read_also = self.drafts.may_read_write
        self.inboxes = Inboxes(base_url, self.sent_items.may_read, may_read_full)
        self.inboxes.before_read = reports_arrive
        from .subscriptions import Subscriptions

        self.subscriptions = Subscriptions(tenant, base_url, self.sent_items.may_read)
        self.subscriptions.tick = reports_arrive
        self.inboxes.on_arrival = self.subscriptions.arrived
        #: The tenant's ``time_scale`` (the emulator sets it): message trace's window uses it.
        self.time_scale: Callable[[], float] = lambda: 1.0
        self.traces = MessageTraces(self.deliveries, base_url, lambda: self.time_scale())
        #: Called before a message is delivered, with the mailbox and the number of its
        #: recipients; raises the refusal when the mailbox is over its recipient rate limit.
        self.before_send: Callable[[User, int], None] = lambda mailbox, count: None

    def handle(self, request: Request) -> Response:
        token = self.authenticate(request)
        route = _for_method(resolve(request.path), request.method)
        if route.bad is not None:
            raise GraphError(
                400, "BadRequest", f"Resource not found for the segment '{route.bad}'."
            )
        if route.method != request.method:
            raise GraphError(
                405,
                "Request_BadRequest",
                "Specified HTTP method is not allowed for the request target.",
            )
        if route.name == "sendMail":
            assert route.key is not None
            return self.send_mail(request, route.key, token)
        if route.name in ("message_trace", "message_trace_detail"):
            return self.traces.handle(route, request, token)
        if route.name.startswith("subscription_"):
            return self.subscriptions.handle(route, request, token)
        if route.name in ("inbox_delta", "message_get", "message_value"):
            assert route.key is not None
            return self.inboxes.handle(route, request, self._mailbox(route.key), token)
        if route.name == "sent_items":
            assert route.key is not None
            mailbox = self._mailbox(route.key)
            status, body = self.sent_items.list(
                request.query, mailbox, token.roles, self.base_url()
            )
            return _json(status, body)
        if route.item is not None or route.name in ("draft_create", "message_list"):
            assert route.key is not None
            if route.name != "message_list":  # it takes $filter and $select
                _options(request, ())
            return self.drafts.handle(route, request, self._mailbox(route.key), token)
        if not self.tenant.may_read_directory(token.roles):
            raise GraphError(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )
        if route.name == "user_get":
            assert route.key is not None
            return self.get_user(request, route.key)
        return self.list_users(request)

    def authenticate(self, request: Request) -> IssuedToken:
        """Graph's 401s: no bearer token, an unknown one, an expired or revoked one."""
        token = bearer_token(request)
        if not token:
            raise unauthenticated("Access token is empty.")
        issued = self.tokens.lookup(token)
        if issued is None:
            raise unauthenticated("CompactToken parsing failed with error code: 80049217")
        if not issued.valid(time.time()):
            raise unauthenticated("Access token has expired or is not yet valid.")
        return issued

    # users -------------------------------------------------------------------------------

    def get_user(self, request: Request, key: str) -> Response:
        options = _options(request, ("$select",))
        user = self.tenant.by_id_or_upn(key) or self.tenant.adopt(key)
        if user is None:
            raise GraphError(
                404,
                "Request_ResourceNotFound",
                f"Resource '{key}' does not exist or one of its queried reference-property "
                "objects are not present.",
            )
        select = parse_select(options["$select"]) if "$select" in options else None
        body = {"@odata.context": self._context(select, entity=True), **user.to_graph(select)}
        return _json(200, body)

    def list_users(self, request: Request) -> Response:
        options = _options(request, _DIRECTORY_OPTIONS)
        select = parse_select(options["$select"]) if "$select" in options else None
        users: list[User] = self.tenant.users
        if "$filter" in options:
            predicate = parse_filter(options["$filter"])
            users = [u for u in users if predicate(u)]
            if not users:  # permissive mode: the address asked for becomes a mailbox
                users = self._adopt(filter_addresses(options["$filter"]), predicate)
        if "$top" in options:
            users = users[: _top(options["$top"])]
        body = {
            "@odata.context": self._context(select, entity=False),
            "value": [u.to_graph(select) for u in users],
        }
        return _json(200, body)

    def _adopt(self, addresses: list[str], predicate: Callable[[User], bool]) -> list[User]:
        """Permissive mode: the first address that becomes a mailbox, if it matches."""
        for address in addresses:
            user = self.tenant.adopt(address)
            if user is not None:
                return [user] if predicate(user) else []
        return []

    def _context(self, select: list[str] | None, *, entity: bool) -> str:
        selected = f"({','.join(select)})" if select is not None else ""
        return f"{self.base_url()}/v1.0/$metadata#users{selected}" + ("/$entity" if entity else "")

    # sendMail ----------------------------------------------------------------------------

    def send_mail(self, request: Request, key: str, token: IssuedToken) -> Response:
        """Mailbox, permission, body, From, recipients: each refused the way Graph does."""
        _options(request, ())
        mailbox = self._mailbox(key)
        if not self.tenant.may_send_from(mailbox, token.roles):
            raise access_denied()
        message = self._parse(request, mailbox)
        if not self.tenant.may_send_as(mailbox, message.from_):
            raise send_as_denied()
        if not message.recipients:
            raise GraphError(400, "ErrorInvalidRecipients", NO_RECIPIENTS)
        self.before_send(mailbox, len(message.recipients))
        self.deliver(message)
        return Response(202)

    def _mailbox(self, key: str) -> User:
        mailbox = self.tenant.by_id_or_upn(key) or self.tenant.adopt(key)
        if mailbox is None:
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{key}' is invalid.")
        if not mailbox.mailbox_enabled:
            raise GraphError(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        return mailbox

    def _parse(self, request: Request, mailbox: User) -> SentMessage | Screened:
        media_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
        if media_type == "text/plain":
            raw = decode_base64_mime(request.body)
            return screen_mime(raw, mailbox, request.request_id)
        if media_type == "application/json":
            try:
                payload = json.loads(request.body)
            except (ValueError, UnicodeDecodeError):
                raise GraphError(
                    400,
                    "RequestBodyRead",
                    "Invalid JSON. A token was not recognized in the JSON content.",
                ) from None
            return from_json(payload, request.body, mailbox, request.request_id)
        raise GraphError(
            400,
            "RequestBodyRead",
            f"The content type '{media_type or 'none'}' is not supported; sendMail takes "
            "'application/json' or 'text/plain' (base64 MIME).",
        )


def bearer_token(request: Request) -> str:
    """The presented bearer token, or "" when there is none."""
    scheme, _, token = (request.header("Authorization") or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def unauthenticated(message: str) -> GraphError:
    return GraphError(
        401, "InvalidAuthenticationToken", message, {"WWW-Authenticate": _WWW_AUTHENTICATE}
    )


def _json(status: int, body: object) -> Response:
    return Response(status, json.dumps(body).encode(), {"Content-Type": ODATA_JSON})


def _options(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """System query options: each at most once; valid ones the emulator lacks are refused."""
    options: dict[str, str] = {}
    for name, value in request.query:
        if not name.startswith("$"):
            continue
        if name.lower() in options:
            raise GraphError(
                400,
                "BadRequest",
                f"Query option '{name}' was specified more than once, but it must be "
                "specified at most once.",
            )
        if name.lower() not in allowed:
            raise unsupported()
        options[name.lower()] = value
    return options


def _top(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 999:
        raise GraphError(
            400,
            "Request_BadRequest",
            f"Invalid page size specified: '{value}'. Must be between 1 and 999 inclusive.",
        )
    return int(value)
