"""Django settings for the test suite: no MSGRAPH_MAIL here, each test sets its own."""

import django

SECRET_KEY = "tests-only-not-secret"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "msgraph_mail"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
DEFAULT_FROM_EMAIL = "noreply@contoso.com"
SERVER_EMAIL = "noreply@contoso.com"
# Django 6.0 takes addresses; 5.2 wants (name, address) pairs (deprecated in 6.0).
ADMINS = (
    ["Admin <alice@contoso.com>"] if django.VERSION >= (6, 0) else [("Admin", "alice@contoso.com")]
)
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"  # the live server (tests/test_webhook.py) serves static files
