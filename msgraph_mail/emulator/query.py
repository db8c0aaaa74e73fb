"""The slice of OData that mailbox resolution needs: ``$filter`` on addresses and ``$select``;
and the ``$select`` of messages and the ``$filter`` of message trace (its own small grammar).

The grammar is deliberately small and strict: a clause the emulator does not understand is
refused with Graph's ``Request_UnsupportedQuery`` instead of being guessed at, so a client
cannot come to depend on a query the emulator accepts but Graph would not answer the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from .directory import SELECTABLE_PROPERTIES, User
from .errors import GraphError, bad_request, unsupported_query

_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<punct>[():,])"
    r"|(?P<datetime>\d{4}-\d\d-\d\dT[0-9:.]+(?:Z|[+-]\d\d:\d\d))"
    r"|(?P<word>[A-Za-z_$][A-Za-z0-9_./$]*))"
)
_FIELDS = {"mail": "mail", "userprincipalname": "userPrincipalName"}


def options(
    query: list[tuple[str, str]], allowed: tuple[str, ...], *, listing: bool = False
) -> dict[str, str]:
    """System query options by lower-case name: each at most once; one the route does not
    take is refused as Graph refuses it (``Request_UnsupportedQuery``). A message list
    (``listing``) refuses any parameter it does not take, ``$`` or not, with a BadRequest."""
    found: dict[str, str] = {}
    for name, value in query:
        if not name.startswith("$") and not listing:
            continue
        if name.lower() in found:
            raise bad_request(
                f"Query option '{name}' was specified more than once, but it must be "
                "specified at most once."
            )
        if name.lower() not in allowed:
            if listing:
                raise bad_request(f"Query option '{name}' is not supported.")
            raise unsupported_query()
        found[name.lower()] = value
    return found


def top(value: str, maximum: int | None, error: GraphError) -> int:
    """A ``$top``: a whole number from 1 to ``maximum`` (None: no maximum), else ``error``."""
    if not value.isdigit() or int(value) < 1 or (maximum is not None and int(value) > maximum):
        raise error
    return int(value)


@dataclass(frozen=True)
class Clause:
    """``field eq 'value'``; ``field`` is mail, userPrincipalName or proxyAddresses."""

    field: str
    value: str

    def matches(self, user: User) -> bool:
        own = {"mail": [user.mail], "userPrincipalName": [user.user_principal_name]}
        return any(
            a.lower() == self.value.lower() for a in own.get(self.field, user.proxy_addresses)
        )


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while text[pos:].strip():
        match = _TOKEN.match(text, pos)
        if match is None or match.lastgroup is None:
            raise unsupported_query()
        tokens.append((match.lastgroup, match.group(match.lastgroup)))
        pos = match.end()
    return tokens


class _Parser:
    """Recursive descent over: expr := primary ('or' primary)*; primary := '(' expr ')' | clause."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0

    def parse(self) -> list[Clause]:
        clauses = self.expr()
        if self.pos != len(self.tokens):
            raise unsupported_query()
        return clauses

    def expr(self) -> list[Clause]:
        clauses = self.primary()
        while self.peek("word", "or"):
            self.pos += 1
            clauses += self.primary()
        return clauses

    def primary(self) -> list[Clause]:
        if self.peek("punct", "("):
            self.pos += 1
            clauses = self.expr()
            self.expect("punct", ")")
            return clauses
        field = self.expect("word").lower()
        if field in _FIELDS:
            self.expect("word", "eq")
            return [Clause(_FIELDS[field], self.string())]
        if field == "proxyaddresses/any":
            self.expect("punct", "(")
            variable = self.expect("word")
            self.expect("punct", ":")
            if self.expect("word") != variable:
                raise unsupported_query()
            self.expect("word", "eq")
            value = self.string()
            self.expect("punct", ")")
            return [Clause("proxyAddresses", value)]
        raise unsupported_query()

    def string(self) -> str:
        return self.expect("string")[1:-1].replace("''", "'")

    def peek(self, kind: str, text: str | None = None) -> bool:
        if self.pos >= len(self.tokens):
            return False
        got_kind, got = self.tokens[self.pos]
        return got_kind == kind and (text is None or got.lower() == text)  # words: any case

    def expect(self, kind: str, text: str | None = None) -> str:
        if not self.peek(kind, text):
            raise unsupported_query()
        self.pos += 1
        return self.tokens[self.pos - 1][1]


def parse_filter(text: str) -> Callable[[User], bool]:
    """A predicate for ``$filter``; raises ``Request_UnsupportedQuery`` outside the grammar."""
    clauses = _Parser(text).parse()
    return lambda user: any(clause.matches(user) for clause in clauses)


def filter_addresses(text: str) -> list[str]:
    """The addresses a ``$filter`` asks for, in order (``smtp:`` prefixes removed)."""
    addresses: list[str] = []
    for clause in _Parser(text).parse():
        value = clause.value
        if clause.field == "proxyAddresses" and value[:5].lower() == "smtp:":
            value = value[5:]
        if value.lower() not in (a.lower() for a in addresses):
            addresses.append(value)
    return addresses


def parse_select(text: str) -> list[str]:
    """Canonical property names from ``$select`` (case-insensitive, like Graph)."""
    canonical = {name.lower(): name for name in SELECTABLE_PROPERTIES}
    names = [raw.strip() for raw in text.split(",")]
    for name in names:
        if name.lower() not in canonical:
            raise GraphError(
                400,
                "Request_BadRequest",
                f"Could not find a property named '{name}' on type 'microsoft.graph.user'.",
            )
    return list(dict.fromkeys(canonical[name.lower()] for name in names))


#: ``$filter=internetMessageId eq '<id>'``: the one filter of a mailbox's message lists.
MESSAGE_ID_FILTER = re.compile(r"^\s*internetMessageId\s+eq\s+'((?:[^']|'')*)'\s*$", re.I)


def message_list_query(
    query: list[tuple[str, str]], properties: dict[str, str]
) -> tuple[str | None, list[str] | None]:
    """A message list's ``$filter`` and ``$select``, as Graph checks them: the Message-ID
    wanted (None: every message) and the properties selected (None: the default ones)."""
    found = options(query, ("$filter", "$select"), listing=True)
    wanted: str | None = None
    if "$filter" in found:
        match = MESSAGE_ID_FILTER.match(found["$filter"])
        if match is None:
            raise GraphError(
                400, "ErrorInvalidUrlQueryFilter", "The emulator filters on internetMessageId."
            )
        wanted = match.group(1).replace("''", "'")
    return wanted, select_fields(found["$select"], properties) if "$select" in found else None


def select_fields(text: str, properties: dict[str, str]) -> list[str]:
    """A message ``$select``: ``id`` first, then the properties named (``properties`` maps
    each selectable one, lower-cased, to its name); an unknown one is Graph's 400."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names or any(n not in properties for n in names):
        raise GraphError(
            400, "RequestBroker--ParseUri", "Could not find a property named in $select."
        )
    return ["id", *(properties[n] for n in names if n != "id")]


# message trace ---------------------------------------------------------------------------

#: exchangeMessageTrace properties ``$filter`` compares with ``eq`` (Learn: the resource page).
TRACE_EQ_FIELDS = {
    name.lower(): name
    for name in ("id", "messageId", "senderAddress", "recipientAddress", "status", "fromIP", "toIP")
}
_SUBJECT_FUNCTIONS = ("contains", "startswith", "endswith")


@dataclass
class TraceFilter:
    """A message trace ``$filter``: clauses joined with ``and`` (``or`` is not documented)."""

    equals: dict[str, str] = field(default_factory=dict)  # property -> value
    subject: list[tuple[str, str]] = field(default_factory=list)  # (function, text)
    since: datetime | None = None  # receivedDateTime ge
    until: datetime | None = None  # receivedDateTime le


class _TraceParser(_Parser):
    """clauses := clause ('and' clause)*; clause := property eq 'text' |
    receivedDateTime (ge|le) <DateTimeOffset> | contains|startsWith|endsWith(subject, 'text')."""

    def trace_filter(self) -> TraceFilter:
        found = TraceFilter()
        self.clause(found)
        while self.peek("word", "and"):
            self.pos += 1
            self.clause(found)
        if self.pos != len(self.tokens):
            raise unsupported_query()
        return found

    def clause(self, found: TraceFilter) -> None:
        name = self.expect("word").lower()
        if name in _SUBJECT_FUNCTIONS:
            self.expect("punct", "(")
            if self.expect("word").lower() != "subject":
                raise unsupported_query()
            self.expect("punct", ",")
            found.subject.append((name, self.string()))
            self.expect("punct", ")")
        elif name == "receiveddatetime":
            bound = {"ge": "since", "le": "until"}.get(self.expect("word").lower())
            if bound is None or getattr(found, bound) is not None:
                raise unsupported_query()
            setattr(found, bound, _moment(self.expect("datetime")))
        elif name in TRACE_EQ_FIELDS and TRACE_EQ_FIELDS[name] not in found.equals:
            self.expect("word", "eq")
            found.equals[TRACE_EQ_FIELDS[name]] = self.string()
        else:
            raise unsupported_query()


def _moment(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise unsupported_query() from None


def parse_trace_filter(text: str) -> TraceFilter:
    """The message trace ``$filter``; anything else is ``Request_UnsupportedQuery``."""
    return _TraceParser(text).trace_filter()
