"""Settings of the processes in tests/test_outbox_tasks_worker.py: a real django-tasks-db
worker (``manage.py db_worker``) and the "web" process that queues mail, sharing one
file-backed SQLite database and the emulator whose URL the test passes by environment."""

import os

import django

from msgraph_mail.emulator.directory import CLIENT_ID, CLIENT_SECRET, TENANT_ID

SECRET_KEY = "tests-only-not-secret"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "msgraph_mail",
    "django_tasks_db",
    *(["django_tasks"] if django.VERSION < (6, 0) else []),
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("OUTBOX_DB", "outbox.sqlite3"),
        # Two processes write: take the write lock up front and wait for it.
        "OPTIONS": {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
EMAIL_BACKEND = "msgraph_mail.backend.QueuedEmailBackend"
GRAPH_URL = os.environ.get("OUTBOX_GRAPH_URL", "http://127.0.0.1:1")
MSGRAPH_MAIL = {
    "TENANT_ID": TENANT_ID,
    "CLIENT_ID": CLIENT_ID,
    "CLIENT_SECRET": CLIENT_SECRET,
    "GRAPH_URL": GRAPH_URL,
    "AUTHORITY_URL": GRAPH_URL,
    # The client gives up quickly, so a long Retry-After or an outage defers the task.
    "TIMEOUT": 2,
    "MAX_RETRIES": 0,
    "MAX_RETRY_WAIT": 0.5,
}
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"msgraph_mail": {"handlers": ["console"], "level": "INFO"}},
}
