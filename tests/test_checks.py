"""System checks: each id is triggered by the mistake it exists for, and a sane setup has none."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.test import override_settings
from django.utils import timezone

from django_lightspeed_oauth import checks
from django_lightspeed_oauth.models import ApiClient
from django_lightspeed_oauth.testing import make_client
from tests.settings import LIGHTSPEED_OAUTH, MIDDLEWARE

# A URLconf without the app's URLs, for E006 (ROOT_URLCONF points at this module).
urlpatterns: list = []


def lightspeed_settings(**values):
    return override_settings(LIGHTSPEED_OAUTH={**LIGHTSPEED_OAUTH, **values})


def ids(messages) -> list[str]:
    return [m.id for m in messages]


def all_checks(databases=None) -> list:
    return (
        checks.check_encryption_keys()
        + checks.check_settings()
        + checks.check_callback_url()
        + checks.check_api_clients(databases=databases)
    )


@pytest.mark.django_db
def test_a_sane_setup_has_no_messages():
    make_client(
        environment="production",
        redirect_uri="https://shop.example.com/cb/",
        provider_options={"state_length": 40},
    )
    assert all_checks(databases=["default"]) == []
    ours = [m for m in run_checks(databases=["default"]) if m.id.startswith("lightspeed_oauth.")]
    assert ours == []


@override_settings(DEBUG=False, LIGHTSPEED_OAUTH={})
def test_e001_no_encryption_keys_outside_debug():
    (error,) = checks.check_encryption_keys()
    assert error.id == "lightspeed_oauth.E001"
    assert "ENCRYPTION_KEYS" in error.msg and "Fernet.generate_key()" in error.hint


@override_settings(DEBUG=True, LIGHTSPEED_OAUTH={})
def test_e001_allows_a_derived_key_while_debugging():
    assert checks.check_encryption_keys() == []


@lightspeed_settings(ENCRYPTION_KEYS=[LIGHTSPEED_OAUTH["ENCRYPTION_KEYS"][0], "too-short"])
def test_e002_an_invalid_fernet_key():
    (error,) = checks.check_encryption_keys()
    assert error.id == "lightspeed_oauth.E002"
    assert '["ENCRYPTION_KEYS"][1]' in error.msg
    assert "too-short" not in error.msg + error.hint  # a key is a secret too


@lightspeed_settings(PROVIDERS=["no.such.module.Provider"])
def test_e003_a_provider_path_that_cannot_be_imported():
    messages = checks.check_settings()
    assert ids(messages) == ["lightspeed_oauth.E003"]
    assert "no.such.module.Provider" in messages[0].msg


@lightspeed_settings(PROVIDERS=["django_lightspeed_oauth.providers.TokenSet"])
def test_e003_a_provider_path_that_is_not_a_provider():
    messages = checks.check_settings()
    assert ids(messages) == ["lightspeed_oauth.E003"]
    assert "not a Provider subclass" in messages[0].msg


@pytest.mark.parametrize(
    "values,named",
    [
        ({"LOCK_TIMEOUT": 30, "LOCK_RENEW_INTERVAL": 20}, "LOCK_RENEW_INTERVAL"),  # one late renewal ends it
        ({"LOCK_RENEW_INTERVAL": -1}, "LOCK_RENEW_INTERVAL"),
        ({"LOCK_TIMEOUT": 600, "REFRESH_MAX_DURATION": 600}, "REFRESH_MAX_DURATION"),
        ({"REFRESH_READ_TIMEOUT": 900}, "REFRESH_READ_TIMEOUT"),
        ({"REFRESH_READ_TIMEOUT": 0}, "REFRESH_READ_TIMEOUT"),
    ],
)
def test_e004_lease_rules_that_could_end_a_live_refreshers_lease(values, named):
    with lightspeed_settings(**values):
        messages = checks.check_settings()
    assert ids(messages) == ["lightspeed_oauth.E004"]
    assert named in messages[0].msg and "used twice" in messages[0].hint


@lightspeed_settings(LOCK_TIMEOUT=10, LOCK_RENEW_INTERVAL=5, REFRESH_MAX_DURATION=11, REFRESH_READ_TIMEOUT=11)
def test_e004_passes_at_the_limits():
    assert checks.check_settings() == []


@override_settings(MIDDLEWARE=[m for m in MIDDLEWARE if "Session" not in m])
def test_e005_sessions_are_required():
    messages = checks.check_settings()
    assert ids(messages) == ["lightspeed_oauth.E005"]
    assert "SessionMiddleware" in messages[0].hint


@override_settings(ROOT_URLCONF=__name__)
def test_e006_the_callback_url_is_not_wired():
    messages = checks.check_callback_url()
    assert ids(messages) == ["lightspeed_oauth.E006"]
    assert 'include("django_lightspeed_oauth.urls")' in messages[0].hint


@pytest.mark.django_db
def test_e007_an_api_client_with_an_unknown_provider():
    client = make_client()
    ApiClient.objects.filter(pk=client.pk).update(provider="k-series-v9")
    messages = checks.check_api_clients(databases=["default"])
    assert ids(messages) == ["lightspeed_oauth.E007"]
    assert "'k-series-v9'" in messages[0].msg and messages[0].obj.pk == client.pk


@pytest.mark.django_db
def test_e008_an_api_client_with_invalid_provider_options():
    client = make_client()
    ApiClient.objects.filter(pk=client.pk).update(provider_options={"pkce": "sometimes"})
    messages = checks.check_api_clients(databases=["default"])
    # Changed behind the admin's back, so the secret (bound to the options) is refused too.
    assert ids(messages) == ["lightspeed_oauth.E008", "lightspeed_oauth.W006"]
    assert client.slug in messages[0].msg and "pkce" in messages[0].msg


@pytest.mark.django_db
def test_inactive_api_clients_are_not_checked():
    client = make_client(is_active=False)
    ApiClient.objects.filter(pk=client.pk).update(provider="gone")
    assert checks.check_api_clients(databases=["default"]) == []


@pytest.mark.django_db
def test_database_checks_only_run_when_asked_for_a_database():
    client = make_client()
    ApiClient.objects.filter(pk=client.pk).update(provider="gone")
    assert checks.check_api_clients(databases=None) == []


@lightspeed_settings(FOO=1, ENCRYPTON_KEYS=[])
def test_w001_unknown_setting_keys():
    messages = checks.check_settings()
    assert ids(messages) == ["lightspeed_oauth.W001"]
    assert "ENCRYPTON_KEYS, FOO" in messages[0].msg


@pytest.mark.django_db
def test_w002_a_production_client_without_https():
    make_client(environment="production", redirect_uri="http://shop.example.com/cb/")
    make_client(environment="trial", redirect_uri="http://localhost:8000/cb/")  # fine off prod
    messages = checks.check_api_clients(databases=["default"])
    assert ids(messages) == ["lightspeed_oauth.W002"]
    assert "https" in messages[0].hint


@pytest.mark.django_db
def test_checks_are_registered_with_django():
    make_client(environment="production", redirect_uri="http://shop.example.com/cb/")
    with lightspeed_settings(LOCK_TIMEOUT=600):  # not shorter than REFRESH_MAX_DURATION
        found = {m.id for m in run_checks(databases=["default"])}
    assert {"lightspeed_oauth.E004", "lightspeed_oauth.W002"} <= found


@pytest.mark.django_db
@pytest.mark.parametrize("provider", ["k-series", "k-series-v2", "retail-x"])
def test_e009_a_client_whose_provider_requires_scopes_has_none(provider):
    client = make_client(provider=provider, scopes="offline_access orders-api")
    ApiClient.objects.filter(pk=client.pk).update(scopes="")
    messages = checks.check_api_clients(databases=["default"])
    assert "lightspeed_oauth.E009" in ids(messages)
    (error,) = [m for m in messages if m.id == "lightspeed_oauth.E009"]
    assert "requires scopes" in error.msg and "Add" in error.msg


@pytest.mark.django_db
def test_w003_k_series_v2_without_offline_access():
    make_client(provider="k-series-v2", scopes="orders-api items")
    make_client(provider="k-series-v2", scopes="offline_access orders-api")
    messages = checks.check_api_clients(databases=["default"])
    assert ids(messages) == ["lightspeed_oauth.W003"]
    assert "offline_access" in messages[0].hint


@pytest.mark.django_db
def test_w004_a_client_whose_credentials_lightspeed_refused_is_a_warning():
    from django.core.checks import ERROR

    client = make_client()
    ApiClient.objects.filter(pk=client.pk).update(
        credentials_refused_at=timezone.now(), credentials_error="invalid_client"
    )
    messages = checks.check_api_clients(databases=["default"])
    assert ids(messages) == ["lightspeed_oauth.W004"]
    assert "invalid_client" in messages[0].msg
    # Below ERROR: migrate and the other commands still run, so the fix can be deployed.
    assert messages[0].level < ERROR


@pytest.mark.django_db
def test_w006_a_client_secret_that_cannot_be_used_is_a_warning():
    from django.core.checks import ERROR

    moved, healthy = make_client(), make_client()
    ApiClient.objects.filter(pk=moved.pk).update(token_url="https://elsewhere.example/token")
    messages = checks.check_api_clients(databases=["default"])
    assert ids(messages) == ["lightspeed_oauth.W006"]
    assert messages[0].obj.pk == moved.pk and "does not belong" in messages[0].msg
    assert moved.client_secret not in messages[0].msg and healthy.slug not in messages[0].msg
    assert messages[0].level < ERROR  # migrate still runs


@pytest.mark.django_db
@pytest.mark.parametrize("provider", ["k-series", "retail-x"])
def test_a_client_without_required_scopes_fails_validation_with_what_to_add(provider):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as caught:
        make_client(provider=provider, scopes="")
    (message,) = caught.value.message_dict["scopes"]
    assert "requires scopes" in message and "e.g." in message


# Typed settings ---------------------------------------------------------------------------------


def test_settings_are_typed_once_for_every_caller(settings):
    from django_lightspeed_oauth.conf import app_settings

    settings.LIGHTSPEED_OAUTH = {
        "LOCK_TIMEOUT": "90",
        "HTTP_TIMEOUT": 7,
        "ENCRYPTION_KEYS": "one-key",
        "STATE_MAX_AGE": 300.0,
    }
    assert app_settings.LOCK_TIMEOUT == 90.0 and isinstance(app_settings.LOCK_TIMEOUT, float)
    assert app_settings.HTTP_TIMEOUT == (7.0, 7.0)
    assert app_settings.ENCRYPTION_KEYS == ("one-key",)
    assert app_settings.STATE_MAX_AGE == 300 and isinstance(app_settings.STATE_MAX_AGE, int)
    assert app_settings.REFRESH_WITHIN == 1800.0  # a default
    settings.LIGHTSPEED_OAUTH = {"HTTP_TIMEOUT": [3, "30"]}
    assert app_settings.HTTP_TIMEOUT == (3.0, 30.0)


def test_a_setting_that_is_not_a_number_is_a_clear_error_and_a_failed_check(settings):
    from django_lightspeed_oauth.conf import app_settings
    from django_lightspeed_oauth.exceptions import ConfigurationError

    settings.LIGHTSPEED_OAUTH = {"LOCK_TIMEOUT": "a minute", "HTTP_TIMEOUT": (1, 2, 3)}
    with pytest.raises(ConfigurationError, match=r"\['LOCK_TIMEOUT'\] must be a number of seconds"):
        app_settings.LOCK_TIMEOUT  # noqa: B018
    with pytest.raises(ConfigurationError, match=r"a \(connect, read\) pair"):
        app_settings.HTTP_TIMEOUT  # noqa: B018
    errors = [m for m in checks.check_settings() if m.id == "lightspeed_oauth.E004"]
    assert len(errors) == 1 and "LOCK_TIMEOUT" in errors[0].msg


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"INVITATION_MAX_AGE": 0}, "INVITATION_MAX_AGE"),
        ({"INVITATION_RATE_LIMIT": "lots"}, "INVITATION_RATE_LIMIT"),
        ({"INVITATION_IP_RATE_LIMIT": -1}, "INVITATION_IP_RATE_LIMIT"),
        ({"INVITATION_RATE_WINDOW": 0}, "INVITATION_RATE_WINDOW"),
        ({"INVITATION_RETENTION": -3}, "INVITATION_RETENTION"),
        ({"AUTHORIZATION_REQUEST_RETENTION": "a month"}, "AUTHORIZATION_REQUEST_RETENTION"),
        ({"TOKEN_EVENT_RETENTION": [365]}, "TOKEN_EVENT_RETENTION"),
        ({"PURGE_INTERVAL": 0}, "PURGE_INTERVAL"),
    ],
)
def test_e011_invitation_and_purge_settings_that_cannot_work(values, fragment):
    with lightspeed_settings(**values):
        messages = checks.check_settings()
    assert ids(messages) == ["lightspeed_oauth.E011"]
    assert fragment in messages[0].msg


@pytest.mark.parametrize("size", [0, "lots", 2.5])
def test_e012_a_celery_batch_size_that_is_not_a_positive_whole_number(size):
    with lightspeed_settings(CELERY_BATCH_SIZE=size):
        messages = checks.check_settings()
    assert ids(messages) == ["lightspeed_oauth.E012"]
    assert "CELERY_BATCH_SIZE" in messages[0].msg


def test_e011_accepts_none_where_it_means_off():
    off = {"INVITATION_IP_RATE_LIMIT": 0, "TOKEN_EVENT_RETENTION": None, "PURGE_INTERVAL": None}
    with lightspeed_settings(INVITATION_RATE_LIMIT=None, **off):
        assert checks.check_settings() == []


@override_settings(CACHES={"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}})
def test_w005_rate_limits_with_a_cache_that_counts_nothing():
    assert ids(checks.check_settings()) == ["lightspeed_oauth.W005"]
    with lightspeed_settings(INVITATION_RATE_LIMIT=None, INVITATION_IP_RATE_LIMIT=None):
        assert checks.check_settings() == []


# The sandbox app's checks: it stays off production sites unless a site says otherwise


def sandbox_messages() -> list:
    from django_lightspeed_oauth.sandbox.checks import check_sandbox_outside_debug

    registered = [m for m in run_checks() if m.id.startswith("lightspeed_sandbox.")]
    assert ids(registered) == ids(check_sandbox_outside_debug())
    return registered


@override_settings(DEBUG=False)
def test_sandbox_e001_installed_without_debug_is_an_error():
    with lightspeed_settings(SANDBOX_ENABLED=None):
        (error,) = sandbox_messages()
    assert error.id == "lightspeed_sandbox.E001"
    assert error.level >= 40  # an Error: manage.py check and migrate stop on it
    assert "DEBUG is off" in error.msg
    assert 'LIGHTSPEED_OAUTH["SANDBOX_ENABLED"]' in error.hint and "INSTALLED_APPS" in error.hint


@override_settings(DEBUG=False)
def test_sandbox_w001_enabled_explicitly_without_debug_is_a_warning():
    with lightspeed_settings(SANDBOX_ENABLED=True):
        (warning,) = sandbox_messages()
    assert warning.id == "lightspeed_sandbox.W001"
    assert warning.level == 30


@override_settings(DEBUG=False)
def test_sandbox_switched_off_without_debug_has_no_message():
    with lightspeed_settings(SANDBOX_ENABLED=False):
        assert sandbox_messages() == []


@override_settings(DEBUG=True)
@pytest.mark.parametrize("value", [None, True, False])
def test_sandbox_with_debug_has_no_message(value):
    with lightspeed_settings(SANDBOX_ENABLED=value):
        assert sandbox_messages() == []


@pytest.mark.parametrize("value", ["yes", 1, "False"])
def test_sandbox_e002_sandbox_enabled_must_be_a_boolean_or_none(value):
    with lightspeed_settings(SANDBOX_ENABLED=value):
        (error,) = sandbox_messages()
    assert error.id == "lightspeed_sandbox.E002"
    assert repr(value) in error.msg
