"""The outbox in Django's admin: registered by the app, nothing for the project to write.

Two entries, one look: :class:`OutboxMessageAdmin` is a ModelAdmin over the database store
(``QUEUE = "tasks"``); :class:`RedisOutboxAdmin` shows the Redis store of ``QUEUE = "celery"``
through the same store interface ``msgraph_outbox`` uses, with the same columns, filters,
search, detail page and actions. Viewing needs the model's view permission, resending its
change permission, deleting its delete permission; every action goes to the admin's history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.admin.utils import quote, unquote
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import URLPattern, path, reverse
from django.views.decorators.clickjacking import xframe_options_sameorigin

from . import mailers
from .conf import MSGraphMailSettings
from .exceptions import ConfigurationError
from .models import ROUTES, STATUSES, OutboxMessage, RedisOutboxMessage
from .outbox import sealing
from .outbox.deliver import settings_for
from .outbox.details import details, preview_document
from .outbox.engines import store_for
from .outbox.resend import UNKNOWN_WARNING, ResendRefused, resend
from .outbox.store import ClaimStore, StoredMessage

#: What the preview frame may load: nothing but its inline styles and data: images.
PREVIEW_CSP = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
    "form-action 'none'; base-uri 'none'"
)
PER_PAGE = 50


def _short(text: str, length: int = 60) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _who(user: Any) -> str:
    return f"admin:{user.get_username()}"


# the detail page, the preview and the resend confirmation: shared by both admins ----------


@dataclasses.dataclass(frozen=True)
class _Found:
    """A message the detail page shows, and what differs between the two stores there:
    where it is resent, where the admin logs it, and which links the page offers."""

    stored: StoredMessage
    stores: Callable[[StoredMessage], tuple[MSGraphMailSettings, ClaimStore]]
    logged_as: str  # its LogEntry.object_id
    history_url: str | None
    delete_url: str | None


def _detail(
    model_admin: admin.ModelAdmin, request: HttpRequest, message: _Found, object_id: str
) -> HttpResponse:
    stored = message.stored
    found = details(stored.envelope)
    status = "deferred" if stored.deferred else stored.status
    history = LogEntry.objects.filter(
        content_type=_content_type(model_admin.model), object_id=message.logged_as
    ).order_by("-action_time")[:20]
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": stored.envelope.subject or stored.message_id,
        "subtitle": stored.message_id,
        "message": stored,
        "status": status,
        "details": found,
        "preview_url": "../preview/" if found.html else None,
        "can_resend": model_admin.has_change_permission(request)
        and status in ("failed", "unknown"),
        "delete_url": message.delete_url,
        "history_url": message.history_url,
        "admin_history": list(history),
        "events": _events(stored),
        "object_id": object_id,
    }
    return render(request, "admin/msgraph_mail/outbox/detail.html", context)


def _content_type(model: type) -> ContentType:
    """The content type the admin's history of ``model`` is kept under: the Redis outbox's is
    its proxy model's, not the database outbox's it is a proxy of."""
    return ContentType.objects.get_for_model(model, for_concrete_model=False)


def _preview(stored: StoredMessage) -> HttpResponse:
    """The HTML body alone, for the sandboxed iframe of the detail page."""
    body = preview_document(details(stored.envelope))
    response = HttpResponse(body, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = PREVIEW_CSP
    response["X-Content-Type-Options"] = "nosniff"
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "no-store"
    return response


def _events(stored: StoredMessage) -> list[dict[str, Any]]:
    """The delivery events of the message (DELIVERY_TRACKING), oldest first."""
    tracking_id = stored.envelope.tracking_id
    if not tracking_id:
        return []
    from .tracking.store import store_for as tracking_store

    try:
        return tracking_store(settings_for(stored.envelope.alias)).events(tracking_id)
    except (ConfigurationError, ImportError):
        return []


def _resend_all(
    request: HttpRequest,
    stores: Callable[[StoredMessage], tuple[MSGraphMailSettings, ClaimStore]],
    found: Iterable[StoredMessage],
    *,
    force: bool,
    log: Callable[[StoredMessage, str], None],
) -> None:
    """Resend each message (failed; with ``force``, unknown too), log and report it."""
    done, refused = 0, []
    for stored in found:
        settings, store = stores(stored)
        try:
            was = resend(settings, store, stored.message_id, force=force, by=_who(request.user))
        except (ResendRefused, ConfigurationError) as exc:
            refused.append(str(exc))
            continue
        log(stored, f"Resent (it was {was}).")
        done += 1
    if done:
        messages.success(request, f"{done} message(s) queued again.")
    for reason in refused:
        messages.warning(request, reason)


def _confirm(
    model_admin: admin.ModelAdmin, request: HttpRequest, found: Sequence[StoredMessage]
) -> HttpResponse:
    """The page an unknown message's resend must pass: why it may be delivered twice."""
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": "Resend unknown messages?",
        "found": found,
        "warning": UNKNOWN_WARNING,
        "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
    }
    return render(request, "admin/msgraph_mail/outbox/confirm_resend.html", context)


def _resend_one(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    stored: StoredMessage,
    stores: Callable[[StoredMessage], tuple[MSGraphMailSettings, ClaimStore]],
    log: Callable[[StoredMessage, str], None],
) -> HttpResponse:
    """The detail page's Resend button: an unknown message through the confirmation page."""
    force = request.POST.get("resend") == "unknown"
    if force and request.POST.get("confirmed") != "yes":
        return _confirm(model_admin, request, [stored])
    _resend_all(request, stores, [stored], force=force, log=log)
    return HttpResponseRedirect(request.get_full_path())


def _settings_and_store(stored: StoredMessage) -> tuple[MSGraphMailSettings, ClaimStore]:
    settings = settings_for(stored.envelope.alias)
    return settings, store_for(settings)


class _OutboxAdmin(admin.ModelAdmin):
    """What both outbox admins share: nothing is added, and the detail page with its Resend
    button. Each finds its messages in its own store (:meth:`_found`)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # messages are queued by sending mail, never typed in

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """The detail page (nothing here is edited: a message is what was queued)."""
        found = self._found(request, object_id)
        if isinstance(found, HttpResponse):
            return found  # no such message (any more): back to the list
        if request.method == "POST":
            if not self.has_change_permission(request):
                raise PermissionDenied
            return _resend_one(self, request, found.stored, found.stores, self._logger(request))
        return _detail(self, request, found, object_id)

    def _found(self, request: HttpRequest, object_id: str) -> _Found | HttpResponse:
        """The message to show (raises PermissionDenied), or where to go when there is none."""
        raise NotImplementedError

    def _logger(self, request: HttpRequest) -> Callable[[StoredMessage, str], None]:
        """Each resend, in the admin's history."""
        raise NotImplementedError


# the database store ----------------------------------------------------------------------


@admin.register(OutboxMessage)
class OutboxMessageAdmin(_OutboxAdmin):
    """The database outbox: Django's own change list over columns of their own (indexed,
    no envelope read, no per-row query), and the shared detail page."""

    list_display = (
        "status_label",
        "subject_label",
        "from_address",
        "mailbox",
        "recipients_label",
        "attempts",
        "queued_at",
        "next_try",
        "error_label",
    )
    list_display_links = ("subject_label",)
    list_filter = ("status", "route", "mailbox")
    search_fields = ("message_id", "subject", "recipients")
    ordering = ("-created_at",)
    list_per_page = PER_PAGE
    show_full_result_count = False
    actions = ["resend_failed", "resend_unknown", "delete_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutboxMessage]:
        return super().get_queryset(request).defer("envelope", "history")

    @admin.display(description="status", ordering="status")  # type: ignore[untyped-decorator]
    def status_label(self, row: OutboxMessage) -> str:
        deferred = row.status == "queued" and row.next_try_at is not None
        return "deferred" if deferred else row.status

    @admin.display(description="subject", ordering="subject")  # type: ignore[untyped-decorator]
    def subject_label(self, row: OutboxMessage) -> str:
        return _short(row.subject) or "(no subject)"

    @admin.display(description="recipients", ordering="recipient_count")  # type: ignore[untyped-decorator]
    def recipients_label(self, row: OutboxMessage) -> str:
        more = row.recipient_count - 1
        return str(row.first_recipient) + (f" and {more} more" if more > 0 else "")

    @admin.display(description="queued at", ordering="created_at")  # type: ignore[untyped-decorator]
    def queued_at(self, row: OutboxMessage) -> Any:
        return row.created_at

    @admin.display(description="next try", ordering="next_try_at")  # type: ignore[untyped-decorator]
    def next_try(self, row: OutboxMessage) -> Any:
        return row.next_try_at

    @admin.display(description="last error")  # type: ignore[untyped-decorator]
    def error_label(self, row: OutboxMessage) -> str:
        return _short(row.last_error, 80)

    @admin.action(description="Resend the selected failed messages", permissions=["change"])  # type: ignore[untyped-decorator]
    def resend_failed(self, request: HttpRequest, rows: QuerySet[OutboxMessage]) -> None:
        found = self._stored(rows.filter(status="failed"))
        skipped = rows.exclude(status="failed").count()
        if skipped:
            messages.warning(request, f"{skipped} message(s) skipped: only failed ones.")
        _resend_all(request, _settings_and_store, found, force=False, log=self._logger(request))

    @admin.action(
        description="Resend the selected unknown messages (may deliver twice)…",
        permissions=["change"],
    )  # type: ignore[untyped-decorator]
    def resend_unknown(
        self, request: HttpRequest, rows: QuerySet[OutboxMessage]
    ) -> HttpResponse | None:
        found = self._stored(rows.filter(status="unknown"))
        if request.POST.get("confirmed") != "yes":
            return _confirm(self, request, found)
        _resend_all(request, _settings_and_store, found, force=True, log=self._logger(request))
        return None

    def _stored(self, rows: QuerySet[OutboxMessage]) -> list[StoredMessage]:
        found = (self._get(m) for m in rows.values_list("message_id", flat=True))
        return [stored for stored in found if stored is not None]

    @staticmethod
    def _get(message_id: str) -> StoredMessage | None:
        """The message, its content opened with its mailer's OUTBOX_ENCRYPTION_KEYS."""
        from .outbox.store import DatabaseStore

        found = DatabaseStore().get(message_id)
        if found is None or found.envelope.sealed is None:
            return found
        try:
            keys = settings_for(found.envelope.alias).outbox_encryption_keys
        except ConfigurationError:
            return found
        return dataclasses.replace(found, envelope=sealing.opened(found.envelope, keys))

    def _logger(self, request: HttpRequest) -> Callable[[StoredMessage, str], None]:
        """Each resend, in the admin's history of its row."""

        def log(stored: StoredMessage, text: str) -> None:
            row = OutboxMessage.objects.filter(message_id=stored.message_id).first()
            if row is not None:
                self.log_change(request, row, text)

        return log

    def get_urls(self) -> list[URLPattern]:
        preview = path(
            "<path:object_id>/preview/",
            self.admin_site.admin_view(xframe_options_sameorigin(self.preview_view)),
            name="msgraph_mail_outboxmessage_preview",
        )
        return [preview, *super().get_urls()]

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        row = self.get_object(request, unquote(object_id))
        if row is None or not self.has_view_or_change_permission(request, row):
            raise PermissionDenied
        stored = self._get(row.message_id)
        if stored is None:
            raise PermissionDenied
        return _preview(stored)

    def _found(self, request: HttpRequest, object_id: str) -> _Found | HttpResponse:
        row = self.get_object(request, unquote(object_id))
        if row is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_or_change_permission(request, row):
            raise PermissionDenied
        stored = self._get(row.message_id)
        if stored is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        return _Found(
            stored,
            _settings_and_store,
            logged_as=str(row.pk),
            history_url="../history/",
            delete_url="../delete/" if self.has_delete_permission(request, row) else None,
        )


# the Redis store ---------------------------------------------------------------------------


def _redis_mailers() -> list[tuple[str | None, MSGraphMailSettings]]:
    """The QueuedEmailBackend mailers whose outbox is in Redis (``QUEUE = "celery"``)."""
    found = []
    try:
        for mailer in mailers.configured(queued=True):
            settings = settings_for(mailer.alias)
            if settings.queue == "celery":
                found.append((mailer.alias, settings))
    except ConfigurationError:
        return []
    return found


@admin.register(RedisOutboxMessage)
class RedisOutboxAdmin(_OutboxAdmin):
    """The Redis outbox (``QUEUE = "celery"``), read through the store: the same columns,
    filters, search, detail page and actions as the database one. Listed in the admin only
    when a QueuedEmailBackend mailer uses Celery."""

    def get_model_perms(self, request: HttpRequest) -> dict[str, bool]:
        if not _redis_mailers():
            return {"add": False, "change": False, "delete": False, "view": False}
        perms: dict[str, bool] = super().get_model_perms(request)
        return perms

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        name = "msgraph_mail_redisoutboxmessage"
        return [
            path("", view(self.changelist_view), name=f"{name}_changelist"),
            path(
                "<path:object_id>/preview/",
                view(xframe_options_sameorigin(self.preview_view)),
                name=f"{name}_preview",
            ),
            path("<path:object_id>/delete/", view(self.delete_view), name=f"{name}_delete"),
            path("<path:object_id>/change/", view(self.change_view), name=f"{name}_change"),
        ]

    def _store(self, request: HttpRequest) -> tuple[str | None, MSGraphMailSettings, Any]:
        from .outbox.redis_store import RedisStore

        found = _redis_mailers()
        if not found:
            raise PermissionDenied
        chosen = request.GET.get("using")
        alias, settings = next(((a, s) for a, s in found if a == chosen), found[0])
        return alias, settings, RedisStore.for_settings(settings)

    def _log(self, request: HttpRequest, stored: StoredMessage, text: str, flag: int) -> None:
        LogEntry.objects.create(
            user_id=request.user.pk,
            content_type=_content_type(RedisOutboxMessage),
            object_id=stored.message_id,
            object_repr=_short(f"{stored.message_id} ({stored.status})", 200),
            action_flag=flag,
            change_message=text,
        )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        alias, settings, store = self._store(request)
        if request.method == "POST":
            answer = self._action(request, settings, store)
            if answer is not None:
                return answer
            return HttpResponseRedirect(request.get_full_path())
        return self._list(request, alias, store)

    def _list(self, request: HttpRequest, alias: str | None, store: Any) -> HttpResponse:
        query = request.GET.get("q", "").strip()
        wanted = {name: request.GET.get(name, "") for name in ("status", "route", "mailbox")}
        rows = store.listing(query=query, **wanted)
        page = Paginator(rows, PER_PAGE).get_page(request.GET.get("p"))
        found = store.summaries(page.object_list)
        for row in found:
            row["url"] = reverse(
                "admin:msgraph_mail_redisoutboxmessage_change", args=[quote(row["message_id"])]
            ) + (f"?using={quote(alias)}" if alias else "")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Select outbox message to change",
            "subtitle": f"Redis outbox of {alias or 'EMAIL_BACKEND'}",
            "rows": found,
            "page": page,
            "count": len(rows),
            "query": query,
            "filters": self._filters(request, store, wanted),
            "actions": self._actions(request),
            "mailers": [a for a, _ in _redis_mailers()],
            "using": alias,
        }
        return render(request, "admin/msgraph_mail/outbox/redis_change_list.html", context)

    def _filters(
        self, request: HttpRequest, store: Any, wanted: dict[str, str]
    ) -> list[tuple[str, list[tuple[str, str, bool]]]]:
        """(title, [(label, link, selected)]) for status, route and mailbox, as the admin's."""
        choices = {
            "status": [(s, s) for s in STATUSES],
            "route": list(ROUTES),
            "mailbox": [(m, m) for m in store.mailboxes()],
        }
        filters = []
        for name, options in choices.items():
            links = [("All", self._link(request, name, ""), not wanted[name])]
            for value, label in options:
                links.append((label, self._link(request, name, value), wanted[name] == value))
            filters.append((f"By {name}", links))
        return filters

    @staticmethod
    def _link(request: HttpRequest, name: str, value: str) -> str:
        params = {k: v for k, v in request.GET.items() if k not in (name, "p")}
        if value:
            params[name] = value
        return "?" + urlencode(params)

    def _actions(self, request: HttpRequest) -> list[tuple[str, str]]:
        found = []
        if self.has_change_permission(request):
            found += [
                ("resend_failed", "Resend the selected failed messages"),
                ("resend_unknown", "Resend the selected unknown messages (may deliver twice)…"),
            ]
        if self.has_delete_permission(request):
            found.append(("delete_selected", "Delete selected outbox messages"))
        return found

    def _action(
        self, request: HttpRequest, settings: MSGraphMailSettings, store: Any
    ) -> HttpResponse | None:
        action = request.POST.get("action", "")
        if action not in dict(self._actions(request)):
            raise PermissionDenied
        ids = request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME)
        found = [s for s in (store.get(i) for i in ids) if s is not None]
        if not found:
            messages.warning(request, "Select messages to act on.")
            return None
        if action == "delete_selected":
            for stored in found:
                if store.delete(stored.message_id):
                    self._log(request, stored, "Deleted.", DELETION)
            messages.success(request, f"{len(found)} message(s) deleted.")
            return None
        force = action == "resend_unknown"
        wanted = "unknown" if force else "failed"
        chosen = [s for s in found if s.status == wanted]
        if len(chosen) < len(found):
            messages.warning(
                request, f"{len(found) - len(chosen)} message(s) skipped: only {wanted} ones."
            )
        if force and request.POST.get("confirmed") != "yes":
            return _confirm(self, request, chosen)
        _resend_all(
            request, lambda _: (settings, store), chosen, force=force, log=self._logger(request)
        )
        return None

    def _logger(self, request: HttpRequest) -> Callable[[StoredMessage, str], None]:
        """Each resend, in the admin's history (under the message's id)."""

        def log(stored: StoredMessage, text: str) -> None:
            self._log(request, stored, text, CHANGE)

        return log

    def _found(self, request: HttpRequest, object_id: str) -> _Found | HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        _, settings, store = self._store(request)
        message_id = unquote(object_id)
        stored = store.get(message_id)
        if stored is None:
            messages.warning(request, f"The Redis outbox has no message {message_id}.")
            return HttpResponseRedirect(reverse("admin:msgraph_mail_redisoutboxmessage_changelist"))
        return _Found(
            stored,
            lambda _: (settings, store),
            logged_as=message_id,
            history_url=None,
            delete_url="../delete/" if self.has_delete_permission(request) else None,
        )

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        stored = self._store(request)[2].get(unquote(object_id))
        if stored is None:
            raise PermissionDenied
        return _preview(stored)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_delete_permission(request):
            raise PermissionDenied
        store = self._store(request)[2]
        stored = store.get(unquote(object_id))
        changelist = reverse("admin:msgraph_mail_redisoutboxmessage_changelist")
        if stored is None:
            return HttpResponseRedirect(changelist)
        if request.method == "POST":
            if store.delete(stored.message_id):
                self._log(request, stored, "Deleted.", DELETION)
            messages.success(request, f"{stored.message_id} deleted.")
            return HttpResponseRedirect(changelist)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Are you sure?",
            "message": stored,
            "detail_url": f"../change/?{request.GET.urlencode()}",
        }
        return render(request, "admin/msgraph_mail/outbox/redis_delete.html", context)
