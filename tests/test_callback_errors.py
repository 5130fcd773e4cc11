"""Every bad input to the connect view and the callback: a clear page, a record, nothing else."""

from __future__ import annotations

import logging
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import responses
from django.test import Client, override_settings
from django.utils import timezone

from django_lightspeed_oauth.models import AuthorizationRequest, ConnectedCompany, TokenEvent
from django_lightspeed_oauth.testing import make_client
from django_lightspeed_oauth.views import CallbackView
from tests.settings import LIGHTSPEED_OAUTH

from .lightspeed_documented import k_series_businesses


def lightspeed_settings(**values):
    """override_settings for some LIGHTSPEED_OAUTH keys, keeping the test encryption keys."""
    return override_settings(LIGHTSPEED_OAUTH={**LIGHTSPEED_OAUTH, **values})


pytestmark = pytest.mark.django_db

CALLBACK = "/lightspeed/callback/"
RESULT = "/lightspeed/callback/done/"
TOKEN_URL = "https://api.trial.lsk.lightspeed.app/oauth/token"
IDENTITY_URL = "https://api.trial.lsk.lightspeed.app/f/data/businesses"
BUSINESS = k_series_businesses((4242, "Harbour Bistro", []))
TOKENS = {
    "access_token": "AT-never-shown-1",
    "refresh_token": "RT-never-shown-1",
    "expires_in": 3600,
    "token_type": "bearer",
}


def start(browser, client) -> str:
    """Start a flow in ``browser`` and return its state."""
    response = browser.post(f"/lightspeed/connect/{client.slug}/")
    assert response.status_code == 302
    return dict(parse_qsl(urlsplit(response["Location"]).query))["state"]


def assert_error_page(response, status: int, reason: str, sentence: str) -> None:
    """The app's own error page (never Django's), with the reason and a sentence for people.

    Once the state is spent, the callback shows the page at a clean address (the result page).
    """
    if response.status_code == 302 and response.url == RESULT:
        response = response.client.get(RESULT)
    assert response.status_code == status
    assert "lightspeed_oauth/error.html" in [t.name for t in response.templates]
    body = response.content.decode()
    assert f'data-reason="{reason}"' in body
    assert sentence in body
    assert "Traceback" not in body


def assert_nothing_connected() -> None:
    assert not ConnectedCompany.objects.exists()
    assert not TokenEvent.objects.exists()


# State ------------------------------------------------------------------------------------------


def test_unknown_state_is_rejected_and_the_real_request_is_untouched(staff_client, api_client, mocked):
    start(staff_client, api_client)
    response = staff_client.get(CALLBACK, {"code": "c0de", "state": "A" * 32})
    assert_error_page(response, 400, "unknown_state", "This link is not one the site started.")
    pending = AuthorizationRequest.objects.get()
    assert (pending.outcome, pending.used_at, pending.error) == ("pending", None, "")
    assert not mocked.calls
    assert_nothing_connected()


def test_missing_state_is_rejected(staff_client, api_client, mocked):
    start(staff_client, api_client)
    response = staff_client.get(CALLBACK, {"code": "c0de"})
    assert_error_page(response, 400, "missing_state", "it has no state")
    assert AuthorizationRequest.objects.get().outcome == "pending"
    assert not mocked.calls
    assert_nothing_connected()


@pytest.mark.parametrize(
    "junk",
    [
        "\x00" * 16,
        "abcdefgh\x00ijklmnop",
        "x" * 10_240,
        "ünïcødé-stätè-válüé",
        "state with spaces",
        "'; DROP TABLE lightspeed_oauth_apiclient; --",
        "short",
    ],
    ids=["nul-bytes", "embedded-nul", "10kB", "unicode", "spaces", "sql", "too-short"],
)
def test_a_state_that_is_not_one_we_could_have_issued_is_rejected(staff_client, api_client, mocked, junk):
    start(staff_client, api_client)
    response = staff_client.get(CALLBACK, {"code": "c0de", "state": junk})
    assert_error_page(response, 400, "invalid_state", "This link is not one the site started.")
    assert AuthorizationRequest.objects.get().used_at is None
    assert not mocked.calls
    assert_nothing_connected()


@pytest.mark.parametrize("order", ["junk-first", "real-first", "twice"])
def test_a_repeated_state_parameter_is_rejected(staff_client, api_client, mocked, order):
    state = start(staff_client, api_client)
    states = {"junk-first": ["B" * 32, state], "real-first": [state, "B" * 32], "twice": [state, state]}[
        order
    ]
    response = staff_client.get(CALLBACK, {"code": "c0de", "state": states})
    assert_error_page(response, 400, "invalid_state", "This link is not one the site started.")
    assert AuthorizationRequest.objects.get().used_at is None
    assert not mocked.calls
    assert_nothing_connected()


def test_state_replayed_after_a_successful_connect_is_rejected(staff_client, api_client, mocked):
    state = start(staff_client, api_client)
    mocked.add(responses.POST, TOKEN_URL, json=TOKENS)
    mocked.add(responses.GET, IDENTITY_URL, json=BUSINESS)
    assert staff_client.get(CALLBACK, {"code": "c0de", "state": state}, follow=True).status_code == 200
    calls = len(mocked.calls)

    response = staff_client.get(CALLBACK, {"code": "c0de", "state": state})

    assert_error_page(response, 400, "replayed_state", "already completed")
    assert len(mocked.calls) == calls  # the code was not sent a second time
    auth_request = AuthorizationRequest.objects.get()
    assert auth_request.outcome == "connected" and auth_request.error == ""
    assert ConnectedCompany.objects.count() == 1
    assert TokenEvent.objects.count() == 1


def test_of_two_racing_callbacks_only_one_sends_the_code(staff_client, api_client, mocked, monkeypatch):
    state = start(staff_client, api_client)
    original = CallbackView.find_request

    def find_then_lose_the_race(self, request):
        found = original(self, request)
        # The other callback consumes the state between our read and our conditional update.
        AuthorizationRequest.objects.filter(pk=found.pk).update(used_at=timezone.now())
        return found

    monkeypatch.setattr(CallbackView, "find_request", find_then_lose_the_race)
    response = staff_client.get(CALLBACK, {"code": "c0de", "state": state})

    assert_error_page(response, 400, "replayed_state", "already completed")
    assert not mocked.calls
    assert AuthorizationRequest.objects.get().outcome == "pending"  # the winner records its own
    assert_nothing_connected()


def test_expired_state_is_rejected_without_calling_lightspeed(staff_client, api_client, mocked):
    state = start(staff_client, api_client)
    AuthorizationRequest.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = staff_client.get(CALLBACK, {"code": "c0de", "state": state})
    assert_error_page(response, 400, "expired_state", "took too long and expired")
    assert AuthorizationRequest.objects.get().used_at is None
    assert not mocked.calls
    assert_nothing_connected()


@lightspeed_settings(STATE_MAX_AGE=60)
def test_state_lifetime_follows_the_state_max_age_setting(staff_client, api_client):
    start(staff_client, api_client)
    auth_request = AuthorizationRequest.objects.get()
    assert auth_request.expires_at - auth_request.created_at == timedelta(seconds=60)


def test_a_callback_in_another_browser_is_refused_and_leaves_the_flow_usable(
    staff_client, api_client, mocked
):
    state = start(staff_client, api_client)

    response = Client().get(CALLBACK, {"code": "c0de", "state": state})

    assert_error_page(response, 400, "browser_mismatch", "started in another browser")
    assert AuthorizationRequest.objects.get().used_at is None
    assert not mocked.calls
    assert_nothing_connected()
    # The staff member who started it can still finish.
    mocked.add(responses.POST, TOKEN_URL, json=TOKENS)
    mocked.add(responses.GET, IDENTITY_URL, json=BUSINESS)
    assert staff_client.get(CALLBACK, {"code": "c0de", "state": state}, follow=True).status_code == 200
    assert ConnectedCompany.objects.count() == 1


# Errors from Lightspeed's consent page -------------------------------------------------------


def test_merchant_declining_is_recorded_as_denied(staff_client, api_client, mocked):
    state = start(staff_client, api_client)
    response = staff_client.get(
        CALLBACK, {"error": "access_denied", "state": state, "error_description": "The user denied access"}
    )
    assert_error_page(response, 400, "access_denied", "declined, so nothing was connected")
    auth_request = AuthorizationRequest.objects.get()
    assert auth_request.outcome == "denied"
    assert auth_request.error == "access_denied: The user denied access"
    assert auth_request.used_at is not None
    assert not mocked.calls
    assert_nothing_connected()
    # The state is spent: a code arriving for it afterwards is refused.
    again = staff_client.get(CALLBACK, {"code": "c0de", "state": state})
    assert_error_page(again, 400, "replayed_state", "already completed or cancelled")


@pytest.mark.parametrize(
    "error", ["server_error", "invalid_scope", "temporarily_unavailable", "unauthorized_client"]
)
def test_other_provider_errors_are_recorded_as_failed(staff_client, api_client, mocked, error):
    state = start(staff_client, api_client)
    response = staff_client.get(CALLBACK, {"error": error, "state": state})
    assert_error_page(response, 400, "provider_error", f"Lightspeed answered with an error ({error}).")
    auth_request = AuthorizationRequest.objects.get()
    assert (auth_request.outcome, auth_request.error) == ("failed", error)
    assert not mocked.calls
    assert_nothing_connected()


def test_a_junk_error_and_description_are_stored_cleaned(staff_client, api_client, mocked):
    state = start(staff_client, api_client)
    response = staff_client.get(
        CALLBACK,
        {"error": "bad\x00<script>", "state": state, "error_description": "nul\x00here\r\n" + "d" * 5000},
    )
    assert_error_page(response, 400, "provider_error", "(invalid_error)")
    assert "<script>" not in response.content.decode()
    auth_request = AuthorizationRequest.objects.get()
    assert auth_request.outcome == "failed"
    assert auth_request.error.startswith("invalid_error: nulhere")
    assert "\x00" not in auth_request.error and len(auth_request.error) < 400
    assert_nothing_connected()


@lightspeed_settings(FAILURE_URL="/sorry/")
def test_failure_url_receives_the_reason_once_the_state_is_spent(staff_client, api_client):
    state = start(staff_client, api_client)
    response = staff_client.get(CALLBACK, {"error": "access_denied", "state": state})
    assert response.status_code == 302
    assert response["Location"] == "/sorry/?reason=access_denied"
    assert AuthorizationRequest.objects.get().outcome == "denied"


# The code ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"code": ""},
        {"code": "has space"},
        {"code": "nul\x00byte"},
        {"code": "x" * 3000},
        {"code": ["one", "two"]},
    ],
    ids=["absent", "empty", "space", "nul", "too-long", "repeated"],
)
def test_a_missing_or_junk_code_is_rejected_and_the_flow_stays_usable(
    staff_client, api_client, mocked, params
):
    state = start(staff_client, api_client)
    response = staff_client.get(CALLBACK, {"state": state, **params})
    assert_error_page(response, 400, "missing_code", "no valid authorization code")
    auth_request = AuthorizationRequest.objects.get()
    assert (auth_request.outcome, auth_request.used_at) == ("pending", None)
    assert not mocked.calls
    assert_nothing_connected()


# The token endpoint -----------------------------------------------------------------------------


TOKEN_FAILURES = [
    ("invalid_grant", dict(status=400, json={"error": "invalid_grant"}), "refused the grant (invalid_grant)"),
    (
        "invalid_client",
        dict(status=401, json={"error": "invalid_client"}),
        "refused the API client's credentials",
    ),
    ("500", dict(status=500, json={"error": "server_error"}), "answered 500"),
    (
        "503-retry-after-junk",
        dict(status=503, body="busy", content_type="text/plain", headers={"Retry-After": "soon"}),
        "answered 503 text/plain",
    ),
    (
        "html-200",
        dict(status=200, body="<html><body>Maintenance</body></html>", content_type="text/html"),
        "not readable JSON (text/html)",
    ),
    (
        "invalid-json",
        dict(status=200, body="{not json", content_type="application/json"),
        "not readable JSON",
    ),
    (
        "no-access-token",
        dict(status=200, json={"token_type": "bearer", "expires_in": 60}),
        "has no usable 'access_token'",
    ),
    ("not-an-object", dict(status=200, json=["access_token"]), "not an object"),
    ("read-timeout", dict(body=requests.ReadTimeout("read timed out")), "did not answer in time"),
    ("connection-refused", dict(body=requests.ConnectionError("refused")), "could not be reached"),
]


@pytest.mark.parametrize(
    "answer,recorded", [c[1:] for c in TOKEN_FAILURES], ids=[c[0] for c in TOKEN_FAILURES]
)
def test_a_failing_token_endpoint_gives_a_clear_page_and_saves_nothing(
    staff_client, api_client, mocked, answer, recorded
):
    state = start(staff_client, api_client)
    mocked.add(responses.POST, TOKEN_URL, **answer)

    response = staff_client.get(CALLBACK, {"code": "c0de", "state": state})

    assert_error_page(response, 502, "exchange_failed", "Nothing was saved; please try again")
    assert len(mocked.calls) == 1  # sent once, never retried after it may have arrived
    auth_request = AuthorizationRequest.objects.get()
    assert auth_request.outcome == "failed"
    assert recorded in auth_request.error
    assert auth_request.used_at is not None  # the code is spent: a retry must start again
    assert_nothing_connected()


IDENTITY_FAILURES = [
    ("500", dict(status=500, json={"error": "boom"}), "identity endpoint answered 500"),
    ("401", dict(status=401, json={}), "identity endpoint answered 401"),
    ("html", dict(status=200, body="<html></html>", content_type="text/html"), "not JSON"),
    ("timeout", dict(body=requests.ReadTimeout("slow")), "could not be reached"),
    ("no-business", dict(status=200, json=k_series_businesses()), "lists no business"),
    (
        "id-is-an-object",
        dict(status=200, json={"_embedded": {"businessList": [{"businessId": {"a": 1}}]}}),
        "not a company id",
    ),
    ("not-the-documented-shape", dict(status=200, json=[{"businessId": 5}]), "not the documented"),
]


@pytest.mark.parametrize(
    "answer,recorded", [c[1:] for c in IDENTITY_FAILURES], ids=[c[0] for c in IDENTITY_FAILURES]
)
def test_a_failing_identity_endpoint_gives_a_clear_page_and_saves_nothing(
    staff_client, api_client, mocked, answer, recorded
):
    state = start(staff_client, api_client)
    mocked.add(responses.POST, TOKEN_URL, json=TOKENS)
    mocked.add(responses.GET, IDENTITY_URL, **answer)

    response = staff_client.get(CALLBACK, {"code": "c0de", "state": state})

    assert_error_page(response, 502, "exchange_failed", "Lightspeed did not confirm the connection")
    auth_request = AuthorizationRequest.objects.get()
    assert auth_request.outcome == "failed"
    assert recorded in auth_request.error
    assert_nothing_connected()


def test_a_provider_removed_since_the_flow_started_gives_a_clear_page(
    staff_client, api_client, mocked, caplog
):
    state = start(staff_client, api_client)
    type(api_client).objects.filter(pk=api_client.pk).update(provider="gone-provider")

    response = staff_client.get(CALLBACK, {"code": "c0de", "state": state})

    assert_error_page(response, 500, "misconfigured", "misconfigured; staff have been told why")
    assert "gone-provider" in caplog.text  # staff get the detail in the log
    assert not mocked.calls
    assert_nothing_connected()


# Secrets ----------------------------------------------------------------------------------------

SECRET = "client-secret-7f3a9c"
CODE = "code-9d8e7f6a5b"
ACCESS = "access-token-1c2d3e"
REFRESH = "refresh-token-4f5a6b"
RETAIL_TOKEN_URL = "https://cloud.lightspeedapp.com/auth/oauth/token"
RETAIL_IDENTITY_URL = "https://api.lightspeedapp.com/API/V3/Account.json"


def secrets_in(text: str, verifier: str) -> list[str]:
    return [s for s in (SECRET, CODE, ACCESS, REFRESH, verifier) if s in text]


def all_logged(caplog) -> str:
    return "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)


def test_no_secret_reaches_a_log_or_the_page_on_success(staff_client, mocked, caplog):
    caplog.set_level(logging.DEBUG, logger="django_lightspeed_oauth")
    client = make_client(provider="retail-r", environment="production", client_secret=SECRET)
    state = start(staff_client, client)
    verifier = AuthorizationRequest.objects.get().code_verifier
    assert len(verifier) >= 43
    mocked.add(
        responses.POST,
        RETAIL_TOKEN_URL,
        json={"access_token": ACCESS, "refresh_token": REFRESH, "expires_in": 3600},
    )
    mocked.add(responses.GET, RETAIL_IDENTITY_URL, json={"Account": {"accountID": "1", "name": "Shop"}})

    response = staff_client.get(CALLBACK, {"code": CODE, "state": state}, follow=True)

    assert response.status_code == 200
    assert caplog.records  # the flow does log; just never a secret
    assert secrets_in(all_logged(caplog), verifier) == []
    assert secrets_in(response.content.decode(), verifier) == []


def test_a_token_endpoint_echoing_secrets_does_not_leak_them(staff_client, mocked, caplog):
    caplog.set_level(logging.DEBUG, logger="django_lightspeed_oauth")
    client = make_client(provider="retail-r", environment="production", client_secret=SECRET)
    state = start(staff_client, client)
    verifier = AuthorizationRequest.objects.get().code_verifier
    mocked.add(
        responses.POST,
        RETAIL_TOKEN_URL,
        status=400,
        json={
            "error": "invalid_request",
            "error_description": f"bad code {CODE} for secret {SECRET} and verifier {verifier}",
        },
    )

    response = staff_client.get(CALLBACK, {"code": CODE, "state": state}, follow=True)

    assert_error_page(response, 502, "exchange_failed", "Nothing was saved")
    auth_request = AuthorizationRequest.objects.get()
    assert "invalid_request" in auth_request.error and "[redacted]" in auth_request.error
    assert secrets_in(auth_request.error, verifier) == []
    assert secrets_in(all_logged(caplog), verifier) == []
    assert secrets_in(response.content.decode(), verifier) == []


def test_a_k_series_code_sent_in_the_query_string_is_not_logged(staff_client, mocked, caplog):
    # K-Series V1 sends the code in the token URL's query: the logged URL must stop at the path.
    caplog.set_level(logging.DEBUG, logger="django_lightspeed_oauth")
    client = make_client(provider="k-series", environment="trial", client_secret=SECRET)
    state = start(staff_client, client)
    mocked.add(responses.POST, TOKEN_URL, status=503, json={"error": "temporarily_unavailable"})

    response = staff_client.get(CALLBACK, {"code": CODE, "state": state}, follow=True)

    assert response.status_code == 502
    assert CODE in mocked.calls[0].request.url  # the code did travel in the query
    assert TOKEN_URL in caplog.text
    assert secrets_in(all_logged(caplog), "unused-verifier") == []


# The connect view -------------------------------------------------------------------------------


def test_connect_sends_an_anonymous_visitor_to_the_login_page(client, api_client):
    response = client.get("/lightspeed/connect/kseries/?reference=r1")
    assert response.status_code == 302
    assert response["Location"] == ("/admin/login/?next=/lightspeed/connect/kseries/%3Freference%3Dr1")
    response = client.post("/lightspeed/connect/kseries/", {"reference": "r1"})
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert not AuthorizationRequest.objects.exists()


@pytest.mark.parametrize("method", ["get", "post"])
def test_connect_refuses_a_user_without_the_permission(client, api_client, django_user_model, method):
    user = django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(user)
    response = getattr(client, method)("/lightspeed/connect/kseries/")
    assert_error_page(response, 403, "forbidden", "not allowed to connect")
    assert not AuthorizationRequest.objects.exists()


@pytest.mark.parametrize("method", ["get", "post"])
def test_connect_refuses_a_user_with_the_permission_who_is_not_staff(
    client, api_client, django_user_model, method
):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("merchant", password="pw", is_staff=False)
    user.user_permissions.add(Permission.objects.get(codename="add_connectedcompany"))
    client.force_login(user)
    response = getattr(client, method)("/lightspeed/connect/kseries/")
    assert_error_page(response, 403, "forbidden", "not allowed to connect")
    assert not AuthorizationRequest.objects.exists()


@lightspeed_settings(CONNECT_PERMISSION="auth.view_user")
def test_connect_permission_follows_the_setting(staff_client, api_client):
    assert staff_client.get("/lightspeed/connect/kseries/").status_code == 403
    assert staff_client.post("/lightspeed/connect/kseries/").status_code == 403


@pytest.mark.parametrize("method", ["get", "post"])
def test_connect_answers_404_for_an_unknown_client(staff_client, api_client, method):
    assert getattr(staff_client, method)("/lightspeed/connect/no-such-client/").status_code == 404
    assert not AuthorizationRequest.objects.exists()


@pytest.mark.parametrize("method", ["get", "post"])
def test_connect_answers_404_for_an_inactive_client(staff_client, api_client, method):
    api_client.is_active = False
    api_client.save()
    assert getattr(staff_client, method)("/lightspeed/connect/kseries/").status_code == 404
    assert not AuthorizationRequest.objects.exists()


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example.com/",
        "//evil.example.com/path",
        "http://testserver.evil.com/",
        "javascript:alert(1)",
        "/" + "a" * 2100,
    ],
    ids=["other-host", "scheme-relative", "lookalike", "javascript", "too-long"],
)
def test_connect_refuses_a_next_page_off_this_site(staff_client, api_client, next_url, method):
    response = getattr(staff_client, method)("/lightspeed/connect/kseries/", {"next": next_url})
    assert_error_page(response, 400, "bad_next", "must be on this site")
    assert not AuthorizationRequest.objects.exists()


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize(
    "reference", ["r" * 256, "line\nbreak", "nul\x00"], ids=["too-long", "newline", "nul"]
)
def test_connect_refuses_a_bad_reference(staff_client, api_client, reference, method):
    response = getattr(staff_client, method)("/lightspeed/connect/kseries/", {"reference": reference})
    assert_error_page(response, 400, "bad_reference", "at most 255 printable characters")
    assert not AuthorizationRequest.objects.exists()


@pytest.mark.parametrize("method", ["get", "post"])
def test_connect_with_a_misconfigured_client_gives_a_clear_page(staff_client, method):
    client = make_client(provider="k-series", environment="trial")
    type(client).objects.filter(pk=client.pk).update(provider="custom")  # custom needs URLs
    response = getattr(staff_client, method)(f"/lightspeed/connect/{client.slug}/")
    assert_error_page(response, 500, "misconfigured", "misconfigured")
    assert not AuthorizationRequest.objects.exists()


def test_a_failing_company_connected_receiver_does_not_break_a_stored_connection(
    staff_client, api_client, mocked
):
    from django_lightspeed_oauth import signals

    def broken(**kwargs):
        raise RuntimeError("receiver bug")

    signals.company_connected.connect(broken, weak=False, dispatch_uid="test-broken-connected")
    try:
        state = start(staff_client, api_client)
        mocked.add(responses.POST, TOKEN_URL, json=TOKENS)
        mocked.add(
            responses.GET,
            "https://api.trial.lsk.lightspeed.app/f/data/businesses",
            json=k_series_businesses((5, "B", [])),
        )
        response = staff_client.get(CALLBACK, {"code": "c0de", "state": state}, follow=True)
    finally:
        signals.company_connected.disconnect(dispatch_uid="test-broken-connected")
    assert response.status_code == 200
    assert ConnectedCompany.objects.filter(company_id="5").exists()


def test_a_database_error_while_storing_gives_a_clear_page_and_records_why(
    staff_client, api_client, mocked, monkeypatch
):
    from django.db import OperationalError

    def fail(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(CallbackView, "store", fail)
    state = start(staff_client, api_client)
    mocked.add(responses.POST, TOKEN_URL, json=TOKENS)
    mocked.add(
        responses.GET,
        "https://api.trial.lsk.lightspeed.app/f/data/businesses",
        json=k_series_businesses((5, "B", [])),
    )
    response = staff_client.get(CALLBACK, {"code": "c0de", "state": state})
    assert_error_page(response, 503, "store_failed", "could not save it")
    auth_request = AuthorizationRequest.objects.get()
    assert (auth_request.outcome, auth_request.used_at is not None) == ("failed", True)
