"""Django's error reports (the e-mail to ADMINS with DEBUG=False) never show a secret."""

from __future__ import annotations

import sys

import pytest
import responses
from django.test import RequestFactory, override_settings
from django.views.debug import ExceptionReporter

from django_lightspeed_oauth import oauth
from django_lightspeed_oauth.exceptions import TransientTokenError
from django_lightspeed_oauth.providers import get_provider

CLIENT_SECRET = "client-secret-that-must-not-leak"
REFRESH_TOKEN = "refresh-token-that-must-not-leak"
TOKEN_URL = "https://auth.example.com/oauth/token"


def report_text(request=None) -> str:
    exc_type, exc_value, tb = sys.exc_info()
    return ExceptionReporter(request, exc_type, exc_value, tb).get_traceback_text()


@override_settings(DEBUG=False)
def test_a_token_answer_the_parser_chokes_on_leaves_no_secret_in_the_error_report(mocked):
    # JSON nested beyond Python's recursion limit: the parser raises RecursionError.
    mocked.add(responses.POST, TOKEN_URL, body="[" * 100_000 + "]" * 100_000, content_type="application/json")
    provider = get_provider("custom", {"token_auth": "body"})
    try:
        oauth.refresh_tokens(
            provider, url=TOKEN_URL, client_id="cid", client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN
        )
    except TransientTokenError:  # the app's own error, not a crash
        text = report_text()
    else:
        pytest.fail("the odd answer was accepted")
    assert "refresh_tokens" in text  # the frames are there...
    assert CLIENT_SECRET not in text and REFRESH_TOKEN not in text  # ...their secrets are not


@override_settings(DEBUG=False)
def test_the_admin_form_posting_a_client_secret_keeps_it_out_of_the_report(db):
    from django.contrib import admin
    from django.contrib.auth.models import AnonymousUser

    from django_lightspeed_oauth.models import ApiClient

    request = RequestFactory().post("/admin/", {"client_secret": CLIENT_SECRET, "name": "x"})
    request.user = AnonymousUser()
    model_admin = admin.site._registry[ApiClient]
    try:
        model_admin.changeform_view(request)  # refused (no permission), after the decorator ran
    except Exception:
        pass
    assert list(request.sensitive_post_parameters) == ["client_secret"]
    try:
        raise ValueError("a database refused the form's data")
    except ValueError:
        text = report_text(request)
    assert "client_secret" in text and CLIENT_SECRET not in text


def test_token_requests_carry_no_cookie_from_an_earlier_answer(mocked):
    provider = get_provider("custom", {"token_auth": "body"})
    answer = {"access_token": "A", "refresh_token": "R", "expires_in": 60}
    mocked.add(responses.POST, TOKEN_URL, json=answer, headers={"Set-Cookie": "session=company-a; Path=/"})
    mocked.add(responses.POST, TOKEN_URL, json=answer)
    for refresh_token in ("first", "second"):
        oauth.refresh_tokens(
            provider, url=TOKEN_URL, client_id="cid", client_secret="s", refresh_token=refresh_token
        )
    assert "Cookie" not in mocked.calls[1].request.headers
