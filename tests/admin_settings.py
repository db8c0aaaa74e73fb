"""Settings of the outbox admin's browser test (tests/test_admin_browser.py): the settings
of the tasks worker test (tests/outbox_settings.py) plus Django's admin, served by
``runserver`` while a real ``db_worker`` sends, both on one SQLite file."""

from tests.outbox_settings import *  # noqa: F403
from tests.outbox_settings import INSTALLED_APPS
from tests.settings import MIDDLEWARE, TEMPLATES  # noqa: F401 (the admin's, as in the suite)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    *INSTALLED_APPS,
]
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"
