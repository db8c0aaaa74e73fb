"""Which configured mailers are ours: ``EMAIL_BACKEND``, or Django 6.1's ``MAILERS`` entries.

The system checks look at every one of them; a management command needs one. Without
``--using`` a command takes the ``default`` mailer when it is ours, as Django's own
``sendtestemail`` does, the only one of ours when ``default`` is another backend, and
otherwise stops and names the aliases to choose from. On Django 6.1 ``EMAIL_BACKEND`` is not
read at all once ``MAILERS`` is set, so neither is it here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.module_loading import import_string

from .conf import MSGraphMailSettings, load_settings
from .exceptions import ConfigurationError

__all__ = ["Mailer", "configured", "for_command", "pick", "settings_for_command"]

#: Django's default backend when a MAILERS entry names none.
DEFAULT_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


@dataclass(frozen=True)
class Mailer:
    """One configured mailer of ours: its alias (None for ``EMAIL_BACKEND``) and OPTIONS."""

    alias: str | None
    backend: type
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """How the system checks and errors name it: ``MAILERS['billing']`` or EMAIL_BACKEND."""
        return "EMAIL_BACKEND" if self.alias is None else f"MAILERS[{self.alias!r}]"

    @property
    def queued(self) -> bool:
        from .backend import QueuedEmailBackend

        return issubclass(self.backend, QueuedEmailBackend)


def configured(*, queued: bool = False) -> list[Mailer]:
    """Every mailer that uses our backend (``queued``: QueuedEmailBackend only)."""
    return [mailer for mailer in _all() if mailer.queued or not queued]


def pick(alias: str | None = None, *, queued: bool = False) -> Mailer:
    """The mailer a command works on: ``alias``, or the one meant when none is given.

    Raises :class:`ConfigurationError` with what to do when there is none, or several to
    choose from.
    """
    kind = "QueuedEmailBackend" if queued else "msgraph_mail's backend"
    mailers = getattr(settings, "MAILERS", None)
    if alias is not None:
        if mailers is None:
            raise ConfigurationError(
                f"--using {alias} needs Django 6.1's MAILERS setting; without it, leave "
                "--using out (EMAIL_BACKEND is used)."
            )
        if alias not in mailers:
            raise ConfigurationError(f"No mailer {alias!r} in MAILERS ({', '.join(mailers)}).")
        for mailer in configured(queued=queued):
            if mailer.alias == alias:
                return mailer
        raise ConfigurationError(f"MAILERS[{alias!r}] does not use {kind}.")
    ours = configured(queued=queued)
    if mailers is None:  # EMAIL_BACKEND, or not switched yet: MSGRAPH_MAIL is what it reads
        return ours[0] if ours else Mailer(None, _backend(queued))
    for mailer in ours:
        if mailer.alias == "default":
            return mailer
    if len(ours) == 1:
        return ours[0]
    if not ours:
        raise ConfigurationError(
            f"No mailer in MAILERS uses {kind} ({', '.join(mailers) or 'MAILERS is empty'})."
        )
    aliases = ", ".join(str(mailer.alias) for mailer in ours)
    raise ConfigurationError(
        f"Several mailers use {kind} and 'default' is not one of them: choose one with "
        f"--using ({aliases})."
    )


def _backend(queued: bool) -> type:
    from .backend import EmailBackend, QueuedEmailBackend

    return QueuedEmailBackend if queued else EmailBackend


def _all() -> list[Mailer]:
    mailers = getattr(settings, "MAILERS", None)
    if mailers is None:
        backend = _ours(getattr(settings, "EMAIL_BACKEND", ""))
        return [Mailer(None, backend)] if backend is not None else []
    found = []
    for alias, config in mailers.items():
        backend = _ours(config.get("BACKEND", DEFAULT_BACKEND))
        if backend is not None:
            found.append(Mailer(str(alias), backend, dict(config.get("OPTIONS") or {})))
    return found


def _ours(path: str) -> type | None:
    from .backend import EmailBackend

    try:
        backend = import_string(path)
    except ImportError:
        return None
    if isinstance(backend, type) and issubclass(backend, EmailBackend):
        return backend
    return None


def for_command(command: BaseCommand, alias: str | None, *, queued: bool = False) -> Mailer:
    """:func:`pick` for a management command: errors as CommandError, and a note on stderr
    when it chose one of several mailers without ``--using``."""
    try:
        mailer = pick(alias, queued=queued)
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    others = [m.alias for m in configured(queued=queued) if m.alias != mailer.alias]
    if alias is None and others and mailer.alias is not None:
        command.stderr.write(
            f"Using {mailer.where}; also configured: {', '.join(map(str, others))} "
            "(choose with --using)."
        )
    return mailer


def settings_for_command(command: BaseCommand, alias: str | None) -> MSGraphMailSettings:
    """The settings of :func:`for_command`'s mailer; settings that do not validate stop the
    command with a CommandError that says what is wrong."""
    mailer = for_command(command, alias)
    try:
        return load_settings(mailer.options)
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from exc
