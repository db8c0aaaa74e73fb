"""Django app configuration for msgraph_mail."""

from django.apps import AppConfig


class MSGraphMailConfig(AppConfig):
    name = "msgraph_mail"
    verbose_name = "Microsoft Graph mail"
