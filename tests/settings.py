"""Django settings for the test suite: no MSGRAPH_MAIL here, each test sets its own."""

import os
import tempfile

import django

SECRET_KEY = "tests-only-not-secret"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "msgraph_mail",
]
# The outbox admin (tests/test_admin.py): Django's admin as a project sets it up.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
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
