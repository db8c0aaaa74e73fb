"""System checks: misconfiguration found by ``manage.py check``, before the first mail fails.

Each message is a module-level constant with a hint that says what to do; ids are never
reused. A check runs for every configured mailer that is this backend: ``EMAIL_BACKEND``, or
each Django 6.1 ``MAILERS`` entry (the alias is named as the message's object). Nothing here
makes a network request, and no message ever shows the client secret, the private key or its
password.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import django
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from . import mailers
from .certificate import INSTALL_COMMAND
from .conf import (
    LEGACY_SETTINGS,
    MSGraphMailSettings,
    Problem,
    cloud_mixture,
    is_loopback,
    validate,
)

E001 = Error(
    "TENANT_ID is not set.",
    hint="Set MSGRAPH_MAIL['TENANT_ID'] to the Directory (tenant) ID shown on the app "
    "registration's overview page, or to the tenant's domain (contoso.onmicrosoft.com).",
    id="msgraph_mail.E001",
)
E002 = Error(
    "TENANT_ID names no tenant (common, organizations or consumers).",
    hint="Client credentials need a real tenant: use your Directory (tenant) ID or your "
    "tenant's domain.",
    id="msgraph_mail.E002",
)
E003 = Error(
    "CLIENT_ID is not set.",
    hint="Set MSGRAPH_MAIL['CLIENT_ID'] to the Application (client) ID of the app registration.",
    id="msgraph_mail.E003",
)
E004 = Error(
    "CLIENT_ID is not a GUID.",
    hint="Copy the Application (client) ID from the app registration's overview page; it "
    "looks like 00000000-0000-0000-0000-000000000000.",
    id="msgraph_mail.E004",
)
E005 = Error(
    "No credential: none of CLIENT_SECRET, CLIENT_CERTIFICATE or TOKEN_CREDENTIAL is set "
    "(or CLIENT_SECRET is empty).",
    hint="Set exactly one: MSGRAPH_MAIL['CLIENT_SECRET'] (a client secret's Value, not its "
    "Secret ID, read from the environment), MSGRAPH_MAIL['CLIENT_CERTIFICATE'] (a "
    "certificate uploaded to the app registration) or MSGRAPH_MAIL['TOKEN_CREDENTIAL'] (an "
    "azure-identity credential such as ManagedIdentityCredential).",
    id="msgraph_mail.E005",
)
E006 = Error(
    "MODE is not one of permissive, rbac or single_mailbox.",
    hint="Set MSGRAPH_MAIL['MODE'] to 'single_mailbox' (one sending mailbox), 'rbac' (a "
    "scoped set of mailboxes) or 'permissive' (any mailbox of the tenant).",
    id="msgraph_mail.E006",
)
E007 = Error(
    "MODE single_mailbox needs MAILBOX.",
    hint="Set MSGRAPH_MAIL['MAILBOX'] to the user principal name or object id of the "
    "mailbox that sends every mail.",
    id="msgraph_mail.E007",
)
E008 = Error(
    "{source} is not a setting of msgraph_mail.",
    hint="Remove it or fix its spelling. Known keys: {known}.",
    id="msgraph_mail.E008",
)
E009 = Error(
    "{key} is invalid: {reason}.",
    hint="Fix {source}; see the settings reference in the msgraph_mail documentation.",
    id="msgraph_mail.E009",
)
E010 = Error(
    "{key} uses http:// for a host that is not loopback.",
    hint="Use https://. Plain http:// is only accepted for 127.0.0.1/localhost, where the "
    "bundled Graph emulator runs.",
    id="msgraph_mail.E010",
)
# msgraph_mail.E011 ("MODE rbac needs ALLOWED_SENDERS") is retired: the list is optional
# (W007 suggests it). Its id is not reused.
E012 = Error(
    "More than one credential is set: {keys}.",
    hint="Keep exactly one of CLIENT_SECRET, CLIENT_CERTIFICATE or TOKEN_CREDENTIAL; "
    "remove the others from {sources}.",
    id="msgraph_mail.E012",
)
E013 = Error(
    "Hosts of different clouds are configured together: {mixture}.",
    hint="Tokens of one cloud are refused by another. Set CLOUD ('global', 'usgov', "
    "'usgovdod' or 'china') and remove GRAPH_URL and AUTHORITY_URL, or make all of them "
    "name the same cloud.",
    id="msgraph_mail.E013",
)
E014 = Error(
    "CLIENT_CERTIFICATE needs the cryptography package, which is not installed.",
    hint=f"Install it with: {INSTALL_COMMAND}",
    id="msgraph_mail.E014",
)
E015 = Error(
    "REDIS_URL needs redis-py, which is not installed.",
    hint='Install it with: pip install "django-msgraph-mailer[redis]"',
    id="msgraph_mail.E015",
)
E024 = Error(
    "{source} is not a Fernet key (OUTBOX_ENCRYPTION_KEYS, key number {number} of the list).",
    hint="A key is 32 random bytes, url-safe base64-encoded (44 characters). Make one with: "
    'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())" '
    "and read it from the environment or a secrets store. To replace a key, put the new one "
    "first and keep the old one until `manage.py msgraph_outbox --reencrypt` has run.",
    id="msgraph_mail.E024",
)
E025 = Error(
    "OUTBOX_ENCRYPTION_KEYS needs the cryptography package, which is not installed.",
    hint='Install it with: pip install "django-msgraph-mailer[encryption]"',
    id="msgraph_mail.E025",
)
W001 = Warning(
    "DEFAULT_FROM_EMAIL is Django's default, webmaster@localhost.",
    hint="No mailbox owns that address, so every mail sent without an explicit From would "
    "fail. Set DEFAULT_FROM_EMAIL to an address of a mailbox in your tenant.",
    id="msgraph_mail.W001",
)
W002 = Warning(
    "SERVER_EMAIL is Django's default, root@localhost.",
    hint="No mailbox owns that address, so error reports and mail_admins()/mail_managers() "
    "to the ADMINS/MANAGERS you set would fail. Set SERVER_EMAIL to an address of a mailbox "
    "in your tenant.",
    id="msgraph_mail.W002",
)
W003 = Warning(
    "{setting} ({address}) is not allowed by ALLOWED_SENDERS.",
    hint="In rbac mode every mail from it would be refused. Add it (or its @domain) to "
    "ALLOWED_SENDERS, once its mailbox is in the Exchange RBAC scope, or change {setting}.",
    id="msgraph_mail.W003",
)
W004 = Warning(
    "ALLOWED_SENDERS is set but MODE is {mode}: it is ignored.",
    hint="ALLOWED_SENDERS only applies in rbac mode. Set MODE to 'rbac', or remove it.",
    id="msgraph_mail.W004",
)
W005 = Warning(
    "Both MSGRAPH_MAIL and the legacy {legacy} are set; MSGRAPH_MAIL wins.",
    hint="Keys set in MSGRAPH_MAIL override the flat MSGRAPH_* names of "
    "django-msgraphbackend. Keep one of the two.",
    id="msgraph_mail.W005",
)
W006 = Warning(
    "{key} points at a loopback host ({url}): the emulator, not Microsoft Graph.",
    hint="No mail leaves this machine. Remove {key} from production settings (the default "
    "is Microsoft's global cloud).",
    id="msgraph_mail.W006",
)
W007 = Warning(
    "MODE rbac without ALLOWED_SENDERS: every sender costs a request to find out.",
    hint="The Exchange management scope decides who may send; a sender outside it fails "
    "with MailboxOutOfScope after a lookup and a sendMail. List the scope's addresses or "
    "'@domain' entries in MSGRAPH_MAIL['ALLOWED_SENDERS'] to refuse others before any request.",
    id="msgraph_mail.W007",
)

W008 = Warning(
    "SHARE_TOKEN is set without REDIS_URL: there is nothing to share the token through.",
    hint="Set REDIS_URL to the Redis every process uses, or remove SHARE_TOKEN.",
    id="msgraph_mail.W008",
)
E016 = Error(
    "QueuedEmailBackend with QUEUE {queue!r} cannot load its engine: {missing}.",
    hint="{install}",
    id="msgraph_mail.E016",
)
E020 = Error(
    'QueuedEmailBackend with QUEUE "celery" needs REDIS_URL: its outbox is kept in Redis.',
    hint="Set REDIS_URL to the Redis every web process and Celery worker reaches (it may be "
    "Celery's broker), or use QUEUE 'tasks'.",
    id="msgraph_mail.E020",
)
W009 = Warning(
    "QueuedEmailBackend runs on {backend}, which sends in the caller's thread: the web request "
    "waits for Graph and nothing is retried later.",
    hint="Configure a tasks backend with a worker in TASKS['default'], e.g. "
    "django_tasks_db.DatabaseBackend and manage.py db_worker (see docs/queued.md).",
    id="msgraph_mail.W009",
)
W010 = Warning(
    "QueuedEmailBackend runs on {backend}, which never runs a task: queued mail is never sent.",
    hint="Use it in tests only; configure a tasks backend with a worker in TASKS['default'].",
    id="msgraph_mail.W010",
)
W011 = Warning(
    "RESOLVE_UNKNOWN is set with SAVE_TO_SENT_ITEMS off: a message whose outcome is unknown "
    "cannot be looked up, as no copy of it is saved to Sent Items.",
    hint="Such messages stay 'unknown' (never sent twice). Turn RESOLVE_UNKNOWN off for this "
    "mailer, or keep SAVE_TO_SENT_ITEMS on and send only bulk mail with the header "
    "X-MSGraph-Save-To-Sent-Items: false.",
    id="msgraph_mail.W011",
)
E023 = Error(
    "DELIVERY_TRACKING has nowhere to keep its state: {why}.",
    hint="The tracker keeps the messages sent, the events reported, its cursors and the "
    "suppression list in the database (msgraph_mail in INSTALLED_APPS, then migrate) or, "
    "with REDIS_URL, in Redis; every process that sends and the tracker must share it.",
    id="msgraph_mail.E023",
)
W014 = Warning(
    "SUPPRESS_BOUNCED is on without DELIVERY_TRACKING: no bounce is ever read.",
    hint="The suppression list then holds only what `manage.py msgraph_suppressions --add` "
    'puts there. Set DELIVERY_TRACKING to ["bounces"] and/or ["trace"], or turn '
    "SUPPRESS_BOUNCED off.",
    id="msgraph_mail.W014",
)
W015 = Warning(
    "NOTIFICATION_URL is set but msgraph_mail.urls is not included in the URLconf.",
    hint='Add path("msgraph/", include("msgraph_mail.urls")) to your urls.py, and set '
    "NOTIFICATION_URL to the public https:// URL of that prefix.",
    id="msgraph_mail.W015",
)
W016 = Warning(
    'NOTIFICATION_URL is set but DELIVERY_TRACKING has no "bounces": nothing subscribes.',
    hint="Change notifications tell the tracker that an NDR arrived in a sending mailbox; "
    'add "bounces" to DELIVERY_TRACKING, or remove NOTIFICATION_URL.',
    id="msgraph_mail.W016",
)
W017 = Warning(
    "NOTIFICATION_URL ends in {configured}, but msgraph_mail.urls is served at {served}.",
    hint="Graph posts to NOTIFICATION_URL + 'notifications/': make it the public URL of the "
    "prefix where msgraph_mail.urls is included (a proxy that rewrites paths may explain it).",
    id="msgraph_mail.W017",
)
W018 = Warning(
    "{where} still points at smtp.office365.com, while mail goes through msgraph_mail.",
    hint="SMTP AUTH is off by default in Exchange Online from the end of December 2026. "
    "Remove the Office 365 SMTP settings ({names}), and the mailbox password with them, once "
    "msgraph_diagnose --send-test passes (see the page 'Moving from SMTP AUTH').",
    id="msgraph_mail.W018",
)

# Warnings, not errors: `migrate` runs the database checks before it migrates, and an error
# would stop the very command that fixes it.
W012 = Warning(
    "The outbox table {table} does not exist in database {database!r}.",
    hint="QueuedEmailBackend records every message there and raises OutboxNotMigrated until "
    "it exists: run `python manage.py migrate msgraph_mail`.",
    id="msgraph_mail.W012",
)
W013 = Warning(
    "Migrations of msgraph_mail are not applied to database {database!r}: {names}.",
    hint="QueuedEmailBackend's outbox needs them: run `python manage.py migrate msgraph_mail`.",
    id="msgraph_mail.W013",
)

#: Problems of the settings model, by (key, pydantic error type), and the check reporting it.
BY_PROBLEM: dict[tuple[str, str], CheckMessage] = {
    ("TENANT_ID", "missing"): E001,
    ("TENANT_ID", "string_too_short"): E001,
    ("TENANT_ID", "multi_tenant"): E002,
    ("CLIENT_ID", "missing"): E003,
    ("CLIENT_ID", "guid"): E004,
    ("CLIENT_SECRET", "missing"): E005,
    ("CLIENT_SECRET", "empty_secret"): E005,
    ("CLIENT_CERTIFICATE", "cryptography_missing"): E014,
    ("REDIS_URL", "redis_missing"): E015,
    ("OUTBOX_ENCRYPTION_KEYS", "cryptography_missing"): E025,
    ("MODE", "literal_error"): E006,
    ("MAILBOX", "mailbox_required"): E007,
    ("GRAPH_URL", "insecure_url"): E010,
    ("AUTHORITY_URL", "insecure_url"): E010,
    ("NOTIFICATION_URL", "insecure_url"): E010,
}

DJANGO_DEFAULT_FROM = "webmaster@localhost"
DJANGO_SERVER_EMAIL = "root@localhost"


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Validate the settings of every mailer that uses this backend."""
    messages: list[CheckMessage] = []
    for where, options in our_mailers():
        config, problems = validate(options)
        messages += [at(_for_problem(problem), where) for problem in problems]
        if config is not None:
            messages += [at(message, where) for message in _senders(config)]
            mixture = cloud_mixture(config)
            if mixture is not None:
                messages.append(at(_format(E013, mixture=mixture), where))
            if config.share_token and not config.redis_url:
                messages.append(at(W008, where))
            messages += [at(message, where) for message in _tracking(config)]
        messages += [at(message, where) for message in _legacy_overlap()]
    return _unique(messages)


#: Exchange Online's SMTP AUTH hosts (client submission).
OFFICE365_SMTP = frozenset({"smtp.office365.com", "smtp-mail.outlook.com"})
SMTP_SETTINGS = ("EMAIL_HOST", "EMAIL_PORT", "EMAIL_HOST_USER", "EMAIL_HOST_PASSWORD")


def check_smtp_leftovers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A hint, not an error: Office 365 SMTP settings left beside this backend."""
    if not list(our_mailers()):
        return []
    messages: list[CheckMessage] = []
    mailers = getattr(settings, "MAILERS", None)
    if mailers is None:
        host = str(getattr(settings, "EMAIL_HOST", "") or "").lower()
        if host in OFFICE365_SMTP:
            names = ", ".join(n for n in SMTP_SETTINGS if getattr(settings, n, None))
            messages.append(_format(W018, where="EMAIL_HOST", names=names))
        return messages
    for alias, config in mailers.items():
        options = config.get("OPTIONS") or {}
        if str(options.get("host") or "").lower() in OFFICE365_SMTP:
            where = f"MAILERS[{alias!r}]"
            names = f"{where}, or its host/username/password OPTIONS"
            messages.append(_format(W018, where=where, names=names))
    return messages


def check_deploy(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Under --deploy: the emulator's loopback URLs left in production settings."""
    messages: list[CheckMessage] = []
    for where, options in our_mailers():
        config, _ = validate(options)
        if config is None:
            continue
        for key, url in (("GRAPH_URL", config.graph_url), ("AUTHORITY_URL", config.authority_url)):
            if is_loopback(urlsplit(url).hostname or ""):
                messages.append(at(_format(W006, key=key, url=url), where))
    return messages


def check_queue(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """QueuedEmailBackend: its engine's package, and a tasks backend that runs tasks."""
    messages: list[CheckMessage] = []
    for where, options in _queued_mailers():
        config, _ = validate(options)
        if config is not None:
            messages += [at(message, where) for message in _queue_problems(config.queue)]
            if config.queue == "celery" and not config.redis_url:
                messages.append(at(E020, where))
            if config.resolve_unknown and not config.save_to_sent_items:
                messages.append(at(W011, where))
    return _unique(messages)


def check_outbox_database(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """``check --database``: the outbox's table and migrations, where a QueuedEmailBackend
    mailer keeps its outbox in the database (QUEUE "tasks")."""
    from django.db import connections, router
    from django.db.migrations.loader import MigrationLoader

    from .models import OutboxMessage

    database = router.db_for_write(OutboxMessage)
    if database not in (databases or ()) or not _database_outbox():
        return []
    connection = connections[database]
    table = OutboxMessage._meta.db_table
    if table not in connection.introspection.table_names():
        return [at(_format(W012, table=table, database=database), database)]
    loader = MigrationLoader(connection, ignore_no_migrations=True)
    ours = sorted(
        name
        for app, name in loader.graph.nodes
        if app == OutboxMessage._meta.app_label and (app, name) not in loader.applied_migrations
    )
    if ours:
        return [at(_format(W013, database=database, names=", ".join(ours)), database)]
    return []


def _database_outbox() -> bool:
    """Whether a QueuedEmailBackend mailer with valid settings uses QUEUE "tasks"."""
    for _, options in _queued_mailers():
        config, _ = validate(options)
        if config is not None and config.queue == "tasks":
            return True
    return False


def _queue_problems(queue: str) -> list[CheckMessage]:
    if queue == "celery":
        if importlib.util.find_spec("celery") is None:
            return [
                _format(
                    E016,
                    queue=queue,
                    missing="celery is not installed",
                    install='pip install "django-msgraph-mailer[celery]"',
                )
            ]
        return []
    package = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"
    if importlib.util.find_spec(package) is None:
        return [
            _format(
                E016,
                queue=queue,
                missing=f"{package} is not installed (Django 5.2 needs the django-tasks backport)",
                install='pip install "django-msgraph-mailer[tasks]"',
            )
        ]
    tasks = getattr(settings, "TASKS", None) or {}
    backend = str((tasks.get("default") or {}).get("BACKEND") or "ImmediateBackend (TASKS unset)")
    if backend.endswith("ImmediateBackend") or not tasks:
        return [_format(W009, backend=backend)]
    if backend.endswith("DummyBackend"):
        return [_format(W010, backend=backend)]
    return []


register(check_settings, "mail")
register(check_queue, "mail")
register(check_deploy, "mail", deploy=True)
register(check_smtp_leftovers, "mail")
register(check_outbox_database, "database")


def our_mailers() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, options) for each configured mailer that is this backend."""
    for mailer in mailers.configured():
        yield mailer.where, mailer.options


def _queued_mailers() -> Iterator[tuple[str, dict[str, Any]]]:
    for mailer in mailers.configured(queued=True):
        yield mailer.where, mailer.options


def at(message: CheckMessage, where: str) -> CheckMessage:
    """The same check message, naming the mailer it concerns as its object."""
    return type(message)(message.msg, hint=message.hint, obj=where, id=message.id)


def _for_problem(problem: Problem) -> CheckMessage:
    if problem.kind == "unknown_key":
        known = ", ".join(sorted(name.upper() for name in MSGraphMailSettings.model_fields))
        return _format(E008, source=problem.source, known=known)
    if problem.kind == "fernet_key":  # which key by its position, never its value
        position = re.search(r"\[(\d+)\]$", problem.source)
        number = str(int(position.group(1)) + 1) if position else "?"
        return _format(E024, source=problem.source, number=number)
    if problem.kind == "credential_conflict":
        return _format(E012, keys=problem.key.replace(", ", " and "), sources=problem.source)
    check = BY_PROBLEM.get((problem.key, problem.kind))
    if check is not None:
        return _format(check, key=problem.key)
    return _format(E009, key=problem.key, reason=problem.message.rstrip("."), source=problem.source)


def _senders(config: MSGraphMailSettings) -> list[CheckMessage]:
    """Default From addresses that can never be sent, and allow-lists that do nothing.

    SERVER_EMAIL counts only when ADMINS or MANAGERS is set: Django sends from it only
    through mail_admins()/mail_managers() and the error-reporting handler, which send
    nothing while both are empty.
    """
    messages = []
    default_from = _address(settings.DEFAULT_FROM_EMAIL)
    server_email = _address(settings.SERVER_EMAIL) if sends_admin_mail() else ""
    if default_from == DJANGO_DEFAULT_FROM:
        messages.append(W001)
    if server_email == DJANGO_SERVER_EMAIL:
        messages.append(W002)
    if config.mode == "rbac" and not config.allowed_senders:
        messages.append(W007)
    elif config.mode == "rbac":
        for setting, address in (
            ("DEFAULT_FROM_EMAIL", default_from),
            ("SERVER_EMAIL", server_email),
        ):
            if address in {"", DJANGO_DEFAULT_FROM, DJANGO_SERVER_EMAIL}:
                continue
            if not config.allows(address):
                messages.append(_format(W003, setting=setting, address=address))
    elif config.allowed_senders:
        messages.append(_format(W004, mode=config.mode))
    return messages


def _tracking(config: MSGraphMailSettings) -> list[CheckMessage]:
    """Delivery tracking needs a state every process shares; suppression needs tracking."""
    from django.apps import apps

    found: list[CheckMessage] = []
    if config.notification_url is not None:
        found += _webhook(config)
    if not config.delivery_tracking:
        explicit = "suppress_bounced" in config.model_fields_set
        return found + ([W014] if explicit and config.suppress_bounced else [])
    if not config.redis_url and not apps.is_installed("msgraph_mail"):
        found.append(_format(E023, why="no REDIS_URL, and msgraph_mail is not in INSTALLED_APPS"))
    return found


def _webhook(config: MSGraphMailSettings) -> list[CheckMessage]:
    """NOTIFICATION_URL: the views are routed, where it says, and bounces are tracked."""
    from urllib.parse import urlsplit

    from django.urls import NoReverseMatch, reverse

    found: list[CheckMessage] = []
    if "bounces" not in config.delivery_tracking:
        found.append(W016)
    try:
        served = reverse("msgraph_mail:notifications")
    except NoReverseMatch:
        return [*found, W015]
    configured = urlsplit(f"{config.notification_url}notifications/").path
    if not configured.endswith(served) and not served.endswith(configured):
        found.append(_format(W017, configured=configured, served=served))
    return found


def sends_admin_mail() -> bool:
    """Whether Django would ever send from SERVER_EMAIL: only to ADMINS or MANAGERS."""
    return bool(getattr(settings, "ADMINS", None) or getattr(settings, "MANAGERS", None))


def _legacy_overlap() -> list[CheckMessage]:
    if not getattr(settings, "MSGRAPH_MAIL", None):
        return []
    legacy = [name for name in LEGACY_SETTINGS if getattr(settings, name, None) is not None]
    return [_format(W005, legacy=", ".join(legacy))] if legacy else []


def _format(check: CheckMessage, **values: str) -> CheckMessage:
    return type(check)(
        check.msg.format(**values), hint=(check.hint or "").format(**values), id=check.id
    )


def _address(value: str) -> str:
    from email.utils import parseaddr

    return parseaddr(str(value))[1].lower()


def _unique(messages: list[CheckMessage]) -> list[CheckMessage]:
    seen: list[CheckMessage] = []
    for message in messages:
        if message not in seen:
            seen.append(message)
    return seen
