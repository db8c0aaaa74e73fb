"""Django settings of the test Celery workers: the suite's, plus the MSGRAPH_MAIL the test
passes in the environment (the emulator's URL, REDIS_URL, QUEUE "celery")."""

import json
import os

from tests.settings import *  # noqa: F403

MSGRAPH_MAIL = json.loads(os.environ.get("MSGRAPH_TEST_MSGRAPH_MAIL", "{}"))
EMAIL_BACKEND = "msgraph_mail.backend.QueuedEmailBackend"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"msgraph_mail": {"handlers": ["console"], "level": "WARNING"}},
}
