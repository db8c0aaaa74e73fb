"""The test project's URLs: the change-notification endpoints and the admin, as a user
includes them."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [path("msgraph/", include("msgraph_mail.urls")), path("admin/", admin.site.urls)]
