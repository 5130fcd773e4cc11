"""URLs of the authorization flow; include them under any prefix (namespace ``lightspeed_oauth``)."""

from django.urls import path

from .views import CallbackView, ChooseBusinessView, ConnectView, InviteView, ResultView

app_name = "lightspeed_oauth"

urlpatterns = [
    path("connect/<slug:slug>/", ConnectView.as_view(), name="connect"),
    path("invite/<str:token>/", InviteView.as_view(), name="invite"),
    path("callback/", CallbackView.as_view(), name="callback"),
    path("callback/choose/", ChooseBusinessView.as_view(), name="choose"),
    path("callback/done/", ResultView.as_view(), name="result"),
]
