"""``QUEUE`` picks the engine: ``"tasks"`` (Django's tasks framework) or ``"celery"``.

An engine is a module with ``enqueue(envelope, delay=0)``; the Celery one is imported only
when it is chosen, so neither engine's package is needed by a project that uses the other.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..conf import MSGraphMailSettings
from ..exceptions import ConfigurationError
from .store import ClaimStore, DatabaseStore

__all__ = ["ENGINES", "engine_for", "store_for"]

#: QUEUE -> (engine module, what to install when it cannot be imported)
ENGINES = {
    "tasks": (
        "msgraph_mail.outbox.tasks",
        'pip install "django-msgraph-mailer[tasks]" (on Django 5.2: the django-tasks backport)',
    ),
    "celery": ("msgraph_mail.outbox.celery", 'pip install "django-msgraph-mailer[celery]"'),
}


def engine_for(settings: MSGraphMailSettings) -> ModuleType:
    """The engine module of ``settings.queue``, imported on first use."""
    module, install = ENGINES[settings.queue]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"msgraph_mail: QUEUE {settings.queue!r} cannot be used ({exc}): {install}"
        ) from exc


def store_for(settings: MSGraphMailSettings) -> ClaimStore:
    """The outbox the engine's workers share: the database for tasks, Redis for Celery."""
    if settings.queue == "celery":
        from .redis_store import RedisStore

        return RedisStore.for_settings(settings)
    return DatabaseStore(
        keep_content=settings.outbox_keep_content, keys=settings.outbox_encryption_keys
    )
