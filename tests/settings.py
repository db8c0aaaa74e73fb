"""Django settings for the test suite: no MSGRAPH_MAIL here, each test sets its own."""

import os
import tempfile

import django

SECRET_KEY = "tests-only-not-secret"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "msgraph_mail"]
# The test database is a file, not SQLite's shared-cache memory: there, a thread that meets
# another's write lock fails at once ("database table is locked") instead of waiting, and
# the webhook tests run a live server and the tracker in threads of their own.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
        "TEST": {
            "NAME": os.path.join(tempfile.gettempdir(), f"msgraph_mail_tests_{os.getpid()}.db")
        },
    }
}
USE_TZ = True
DEFAULT_FROM_EMAIL = "noreply@contoso.com"
SERVER_EMAIL = "noreply@contoso.com"
# Django 6.0 takes addresses; 5.2 wants (name, address) pairs (deprecated in 6.0).
ADMINS = (
    ["Admin <alice@contoso.com>"] if django.VERSION >= (6, 0) else [("Admin", "alice@contoso.com")]
)
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"  # the live server (tests/test_webhook.py) serves static files
