"""Django app configuration for msgraph_mail: registers the system checks."""

from django.apps import AppConfig


class MSGraphMailConfig(AppConfig):
    name = "msgraph_mail"
    verbose_name = "Microsoft Graph mail"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)
