"""Settings of the processes in tests/test_tracking_process.py: a "web" process that sends
with DELIVERY_TRACKING on, and ``manage.py msgraph_track`` processes, sharing one file-backed
SQLite database (the tracked messages, the events, the tracker's cursors and lease) and the
emulator whose URL the test passes by environment. The receiver of ``delivery_event``
(tests/tracking_receiver.py) writes each event into the same database, in the tracker's
transaction."""

import os

from msgraph_mail.emulator.directory import CLIENT_ID, CLIENT_SECRET, TENANT_ID

SECRET_KEY = "tests-only-not-secret"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "msgraph_mail",
    "tests.tracking_receiver.ReceiverConfig",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TRACKING_DB", "tracking.sqlite3"),
        "OPTIONS": {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DEFAULT_FROM_EMAIL = "noreply@contoso.com"
EMAIL_BACKEND = "msgraph_mail.backend.EmailBackend"
GRAPH_URL = os.environ.get("TRACKING_GRAPH_URL", "http://127.0.0.1:1")
MSGRAPH_MAIL = {
    "TENANT_ID": TENANT_ID,
    "CLIENT_ID": CLIENT_ID,
    "CLIENT_SECRET": CLIENT_SECRET,
    "GRAPH_URL": GRAPH_URL,
    "AUTHORITY_URL": GRAPH_URL,
    "MODE": "single_mailbox",
    "MAILBOX": "noreply@contoso.com",
    "DELIVERY_TRACKING": os.environ.get("TRACKING_SOURCES", "trace,bounces").split(","),
    "TIMEOUT": 5,
}
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"msgraph_mail": {"handlers": ["console"], "level": "INFO"}},
}
