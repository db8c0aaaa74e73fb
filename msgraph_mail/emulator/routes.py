"""Graph's ``/v1.0`` endpoints in one routing table, and the service that answers them: user
get/list and ``sendMail`` here, with Graph's checks and order; the mailbox's folders, drafts,
subscriptions and message trace in their own modules.

Routing is separate from HTTP plumbing so that the request kind ("user_get", "sendMail", ...)
can be known before the body is read (the 4 MB limit is enforced on ``Content-Length``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from .delivery import Deliveries
from .directory import Tenant, User
from .drafts import UPLOAD_PREFIX, Draft, DraftStore, upload_kind
from .entra import IssuedToken, TokenStore
from .errors import (
    GraphError,
    access_denied,
    bad_segment,
    body_read_error,
    method_not_allowed,
    send_as_denied,
    unauthenticated,
)
from .http import Request, Response, json_response
from .inbox_folder import Inboxes
from .mail import (
    NO_RECIPIENTS,
    Screened,
    SentMessage,
    decode_base64_mime,
    from_json,
    screen_mime,
)
from .query import filter_addresses, options, parse_filter, parse_select, top
from .sent_items import SentItems, delivered_message_id
from .subscriptions import Subscriptions
from .trace import MessageTraces

MAX_REQUEST_BYTES = 4 * 1024 * 1024
TOKEN_PATH = re.compile(r"/([^/]+)/oauth2/v2\.0/token/?")
#: Every Graph route: (request kind, method, path after ``/v1.0``), one regular expression
#: per segment, matched in any case against the percent-decoded segment. ``{user}``: a user
#: id or UPN (also ``users('{user}')``), ``{item}``: a message, folder (also
#: ``mailFolders('{item}')``), subscription or trace id; ``{ns}``: the optional
#: ``microsoft.graph.`` of an action.
ROUTES = (
    ("user_get", "GET", "users/{user}"),
    ("user_list", "GET", "users"),
    ("sendMail", "POST", "users/{user}/{ns}sendMail"),
    ("draft_create", "POST", "users/{user}/messages"),
    ("attachment", "POST", "users/{user}/messages/{item}/attachments"),
    ("upload_session", "POST", "users/{user}/messages/{item}/attachments/{ns}createUploadSession"),
    ("draft_send", "POST", "users/{user}/messages/{item}/{ns}send"),
    ("draft_delete", "DELETE", "users/{user}/messages/{item}"),
    ("message_list", "GET", "users/{user}/messages"),
    ("sent_items", "GET", "users/{user}/mailFolders/sentItems/messages"),
    ("inbox_delta", "GET", "users/{user}/mailFolders/{item}/messages/{ns}delta"),
    ("message_get", "GET", "users/{user}/messages/{item}"),
    ("message_value", "GET", r"users/{user}/messages/{item}/\$value"),
    ("message_trace", "GET", "admin/exchange/tracing/messageTraces"),
    (
        "message_trace_detail",
        "GET",
        "admin/exchange/tracing/messageTraces/{item}/"
        "{ns}getDetailsByRecipient\\(recipientAddress='{argument}'\\)",
    ),
    ("subscription_create", "POST", "subscriptions"),
    ("subscription_list", "GET", "subscriptions"),
    ("subscription_get", "GET", "subscriptions/{item}"),
    ("subscription_update", "PATCH", "subscriptions/{item}"),
    ("subscription_delete", "DELETE", "subscriptions/{item}"),
    ("subscription_reauthorize", "POST", "subscriptions/{item}/{ns}reauthorize"),
)
_PLACEHOLDERS = {
    "{ns}": r"(?:microsoft\.graph\.)?",
    "{user}": "(?P<user>.*)",
    "{item}": "(?P<item>.*)",
    "{argument}": "(?P<argument>(?:[^']|'')*)",
}


def _pattern(segment: str) -> str:
    for placeholder, pattern in _PLACEHOLDERS.items():
        segment = segment.replace(placeholder, pattern)
    return segment


_PATTERNS = [
    (kind, method, [re.compile(_pattern(part), re.IGNORECASE) for part in path.split("/")])
    for kind, method, path in ROUTES
]
_KEYED = re.compile(r"(users|mailFolders)\('((?:[^']|'')*)'\)", re.IGNORECASE)
#: Request kinds, as ``emu.count()`` names them: the token's, the routes', the upload URL's.
KINDS = (
    "token",
    *(kind for kind, _, _ in ROUTES),
    "upload_chunk",
    "upload_cancel",
    "upload_status",
    "other",
)


@dataclass(frozen=True)
class Route:
    """Where a path leads: the request kind (None: no route has the path), the values its
    path holds, and the first segment no route knows (for Graph's 400)."""

    kind: str | None
    values: dict[str, str]
    bad: str = ""


@dataclass(frozen=True)
class Call:
    """A request the table routed, with its token and the values of its path."""

    request: Request
    token: IssuedToken
    key: str
    item: str
    argument: str


def _segments(path: str) -> tuple[list[str], bool]:
    """The percent-decoded segments after ``/v1.0`` (a trailing slash ignored), the keyed
    forms ``users('k')`` and ``mailFolders('f')`` split in two; and whether the user key was
    written keyed (only then may it start with ``$``)."""
    segments = [unquote(s) for s in path.split("/")[2:]]
    if segments and segments[-1] == "" and len(segments) > 1:
        segments.pop()
    keyed = False
    for at, name in ((0, "users"), (2, "mailfolders")):
        match = _KEYED.fullmatch(segments[at]) if len(segments) > at else None
        if match and match.group(1).lower() == name:
            segments[at : at + 1] = [match.group(1), match.group(2).replace("''", "'")]
            keyed = keyed or at == 0
    return segments, keyed


def resolve(method: str, path: str) -> Route:
    """The route of a ``/v1.0`` request; ``kind`` "other" when only another method has it."""
    segments, keyed = _segments(path)
    users = not keyed and len(segments) > 1 and segments[0].lower() == "users"
    if users and segments[1].startswith("$"):  # Graph: 400; a UPN with $ needs users('$x')
        return Route(None, {}, segments[1])
    known = 0
    kinds: list[str] = []
    for kind, route_method, patterns in _PATTERNS:
        matches = [p.fullmatch(s) for p, s in zip(patterns, segments, strict=False)]
        matched = next((i for i, m in enumerate(matches) if m is None), len(matches))
        known = max(known, matched)
        if matched == len(patterns) == len(segments):
            if route_method == method:
                values = {k: v for m in matches if m for k, v in m.groupdict().items()}
                return Route(kind, values)
            kinds.append(kind)
    if kinds:
        return Route("other", {})
    return Route(None, {}, segments[min(known, len(segments) - 1)] if segments else "")


def kind_of(method: str, path: str) -> str:
    """The request kind recorded for counting (``KINDS``)."""
    if TOKEN_PATH.fullmatch(path):
        return "token" if method == "POST" else "other"
    if path.startswith(UPLOAD_PREFIX):
        return upload_kind(method)
    if path.split("/")[1:2] == ["v1.0"]:
        return resolve(method, path).kind or "other"
    return "other"


def user_key(path: str, *, mailbox: bool = False) -> str | None:
    """The user key of a ``/v1.0/users/{key}`` path, else None; with ``mailbox``, only of a
    path *under* a mailbox (Outlook's limits count these; ``/users/{key}`` is a directory
    read)."""
    if path.split("/")[1:2] != ["v1.0"]:
        return None
    segments, _ = _segments(path)
    if len(segments) < 2 or segments[0].lower() != "users":
        return None
    return segments[1] if len(segments) > 2 or not mailbox else None


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
        self.sent_items = SentItems(tenant.may_read)
        self.deliveries = Deliveries(tenant)

        def delivered(message: SentMessage | Screened) -> None:
            message_id = delivered_message_id(message, self.sent_items.rewrite_message_ids)
            deliver(message)
            self.sent_items.record(message, message_id)  # Exchange moves the copy there
            self.deliveries.accept(message, message_id)  # and routes it (delivery.py)

        def reports_arrive() -> None:
            for report in self.deliveries.due():
                self.inboxes.add(report.mailbox, report.raw, report.arrived)

        self.deliver = delivered
        self.drafts = DraftStore(tenant, base_url, delivered)
        self.inboxes = Inboxes(base_url, tenant.may_read, tenant.may_read_full)
        self.inboxes.before_read = reports_arrive
        self.subscriptions = Subscriptions(tenant)
        self.subscriptions.tick = reports_arrive
        self.inboxes.on_arrival = self.subscriptions.arrived
        #: The tenant's ``time_scale`` (the emulator sets it): message trace's window uses it.
        self.time_scale: Callable[[], float] = lambda: 1.0
        self.traces = MessageTraces(self.deliveries, base_url, lambda: self.time_scale())
        #: Called before a message is delivered, with the mailbox and the number of its
        #: recipients; raises the refusal when the mailbox is over its recipient rate limit.
        self.before_send: Callable[[User, int], None] = lambda mailbox, count: None
        self.handlers = self._handlers()

    def _handlers(self) -> dict[str, Callable[[Call], Response]]:
        """What answers each route of ``ROUTES``, each check in Graph's order."""
        drafts, inboxes = self.drafts, self.inboxes
        traces, subscriptions = self.traces, self.subscriptions
        return {
            "user_get": lambda c: self.get_user(c.request, c.token, c.key),
            "user_list": lambda c: self.list_users(c.request, c.token),
            "sendMail": lambda c: self.send_mail(c.request, self._mailbox(c, True), c.token),
            "draft_create": lambda c: drafts.create(c.request, self._writable(c)),
            "attachment": lambda c: drafts.add_attachment(c.request, self._draft(c)),
            "upload_session": lambda c: drafts.create_upload_session(
                c.request, self._draft(c), c.token.app_id
            ),
            "draft_send": lambda c: drafts.send(c.request, self._mailbox(c, True), c.item, c.token),
            "draft_delete": lambda c: drafts.delete(self._draft(c)),
            "message_list": lambda c: drafts.list_messages(c.request, self._writable(c, False)),
            "sent_items": lambda c: self.sent_items.list(
                c.request.query, self._mailbox(c), c.token.roles, self.base_url()
            ),
            "inbox_delta": lambda c: inboxes.delta(c.request, self._mailbox(c), c.token, c.item),
            "message_get": lambda c: inboxes.get(c.request, self._mailbox(c), c.token, c.item),
            "message_value": lambda c: inboxes.value(c.request, self._mailbox(c), c.token, c.item),
            "message_trace": lambda c: traces.list(c.request, c.token),
            "message_trace_detail": lambda c: traces.details(
                c.request, c.token, c.item, c.argument.replace("''", "'")
            ),
            "subscription_create": lambda c: subscriptions.create(c.request, c.token),
            "subscription_list": lambda c: subscriptions.listing(c.token),
            "subscription_get": lambda c: subscriptions.get(c.item, c.token),
            "subscription_update": lambda c: subscriptions.update(c.request, c.item, c.token),
            "subscription_delete": lambda c: subscriptions.delete(c.item, c.token),
            "subscription_reauthorize": lambda c: subscriptions.reauthorize(c.item, c.token),
        }

    def handle(self, request: Request) -> Response:
        token = self.authenticate(request)
        route = resolve(request.method, request.path)
        if route.kind is None:
            raise bad_segment(route.bad)
        if route.kind == "other":
            raise method_not_allowed()
        values = [route.values.get(name, "") for name in ("user", "item", "argument")]
        return self.handlers[route.kind](Call(request, token, *values))

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

    def _directory(self, token: IssuedToken) -> None:
        if not self.tenant.may_read_directory(token.roles):
            raise GraphError(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )

    def get_user(self, request: Request, token: IssuedToken, key: str) -> Response:
        self._directory(token)
        found = options(request.query, ("$select",))
        user = self.tenant.by_id_or_upn(key) or self.tenant.adopt(key)
        if user is None:
            raise GraphError(
                404,
                "Request_ResourceNotFound",
                f"Resource '{key}' does not exist or one of its queried reference-property "
                "objects are not present.",
            )
        select = parse_select(found["$select"]) if "$select" in found else None
        body = {"@odata.context": self._context(select, entity=True), **user.to_graph(select)}
        return json_response(200, body)

    def list_users(self, request: Request, token: IssuedToken) -> Response:
        self._directory(token)
        found = options(request.query, ("$select", "$filter", "$top"))
        select = parse_select(found["$select"]) if "$select" in found else None
        users: list[User] = self.tenant.users
        if "$filter" in found:
            predicate = parse_filter(found["$filter"])
            users = [u for u in users if predicate(u)]
            if not users:  # permissive mode: the address asked for becomes a mailbox
                users = self._adopt(filter_addresses(found["$filter"]), predicate)
        if "$top" in found:
            value = found["$top"]
            error = GraphError(
                400,
                "Request_BadRequest",
                f"Invalid page size specified: '{value}'. Must be between 1 and 999 inclusive.",
            )
            users = users[: top(value, 999, error)]
        body = {
            "@odata.context": self._context(select, entity=False),
            "value": [u.to_graph(select) for u in users],
        }
        return json_response(200, body)

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

    # mailboxes ---------------------------------------------------------------------------

    def _mailbox(self, call: Call, no_options: bool = False) -> User:
        """The mailbox of ``/users/{key}/...`` (after refusing any query option: actions)."""
        if no_options:
            options(call.request.query, ())
        mailbox = self.tenant.by_id_or_upn(call.key) or self.tenant.adopt(call.key)
        if mailbox is None:
            raise GraphError(
                404, "ErrorInvalidUser", f"The requested user '{call.key}' is invalid."
            )
        if not mailbox.mailbox_enabled:
            raise GraphError(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        return mailbox

    def _writable(self, call: Call, no_options: bool = True) -> User:
        """The draft routes' mailbox: Mail.ReadWrite (Entra or RBAC) on it, or 403."""
        mailbox = self._mailbox(call, no_options)
        if not self.tenant.may_read_write(mailbox, call.token.roles):
            raise access_denied()
        return mailbox

    def _draft(self, call: Call) -> Draft:
        return self.drafts.find(self._writable(call), call.item)

    def send_mail(self, request: Request, mailbox: User, token: IssuedToken) -> Response:
        """Permission, body, From, recipients: each refused the way Graph does."""
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

    def _parse(self, request: Request, mailbox: User) -> SentMessage | Screened:
        media_type = request.media_type()
        if media_type == "text/plain":
            raw = decode_base64_mime(request.body)
            return screen_mime(raw, mailbox, request.request_id)
        if media_type == "application/json":
            payload = request.json("Invalid JSON. A token was not recognized in the JSON content.")
            return from_json(payload, request.body, mailbox, request.request_id)
        raise body_read_error(
            f"The content type '{media_type or 'none'}' is not supported; sendMail takes "
            "'application/json' or 'text/plain' (base64 MIME)."
        )


def bearer_token(request: Request) -> str:
    """The presented bearer token, or "" when there is none."""
    scheme, _, token = (request.header("Authorization") or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
