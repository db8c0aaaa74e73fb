"""The change-notification endpoints: ``path("msgraph/", include("msgraph_mail.urls"))``.

Graph posts to ``notifications/`` (a message arrived in a sending mailbox's Inbox) and to
``lifecycle/`` (the subscription needs renewing, was removed, or notifications were missed).
``NOTIFICATION_URL`` is the public URL where this is included, e.g.
``https://www.example.com/msgraph/``.
"""

from django.urls import path

from . import views

app_name = "msgraph_mail"

urlpatterns = [
    path("notifications/", views.notifications, name="notifications"),
    path("lifecycle/", views.lifecycle, name="lifecycle"),
]
