"""The test project's URLs: the change-notification endpoints, as a user includes them."""

from django.urls import include, path

urlpatterns = [path("msgraph/", include("msgraph_mail.urls"))]
