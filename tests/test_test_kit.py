"""The test kit in one piece, and the optional parts that fail clearly without their extra."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import django_lightspeed_oauth.testing as kit
from django_lightspeed_oauth import crypto
from django_lightspeed_oauth._optional import MissingExtra
from django_lightspeed_oauth.testing.families import InvalidGrant, TokenFamilies

ROOT = Path(__file__).resolve().parent.parent


def test_one_family_model_and_one_fingerprint_serve_both_token_endpoints():
    from django_lightspeed_oauth.testing import fakes, tokenserver

    assert kit.fingerprint is crypto.fingerprint
    assert tokenserver.fingerprint is crypto.fingerprint
    assert tokenserver.TokenFamilies is fakes.TokenFamilies is TokenFamilies
    assert not hasattr(tokenserver, "_Family") and not hasattr(fakes, "_Family")


def test_a_refresh_token_is_good_for_one_refresh_and_reuse_revokes_the_family():
    families = TokenFamilies(prefix="t")
    family = families.refresh("seeded")  # unknown: accepted once, as the start of a family
    _, first = families.issue(family)
    assert first and first.startswith("t-refresh-")
    assert families.refresh(first) is family
    _, second = families.issue(family)
    with pytest.raises(InvalidGrant) as refused:
        families.refresh(first)
    assert refused.value.reused and family.revoked
    with pytest.raises(InvalidGrant):
        families.refresh(second)  # the whole family is gone
    assert families.by_fingerprint(crypto.fingerprint(second)) is family
    assert family.refreshes == 2 and len(families.families()) == 1


def test_unknown_tokens_are_refused_when_told_and_rotation_can_be_switched_off():
    strict = TokenFamilies(prefix="t", accept_unknown=False)
    with pytest.raises(InvalidGrant) as refused:
        strict.refresh("never-issued")
    assert not refused.value.reused
    steady = TokenFamilies(prefix="t", rotate=False)
    family = steady.start()
    _, refresh = steady.issue(family)
    assert refresh is not None
    for _ in range(3):
        assert steady.issue(steady.refresh(refresh))[1] is None


def test_the_kit_imports_without_django_settings():
    """The token server runs as a process of its own: the kit must not need a configured site."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = (
        "import django_lightspeed_oauth.testing as kit; "
        "server = kit.TokenServer().start(); print(server.url, kit.fingerprint('x')); server.stop()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("http://127.0.0.1:") and "sha256:" in done.stdout


def test_unknown_names_of_the_kit_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        kit.nothing  # noqa: B018
    assert {"FakeTokenEndpoint", "TokenServer", "make_client"} <= set(dir(kit))


def test_the_celery_task_without_celery_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "django_lightspeed_oauth.tasks", raising=False)
    monkeypatch.setitem(sys.modules, "celery", None)  # what an environment without Celery gives
    with pytest.raises(MissingExtra, match=r'pip install "django-lightspeed-oauth\[celery\]"'):
        importlib.import_module("django_lightspeed_oauth.tasks")
    assert isinstance(MissingExtra("x"), ImportError)


@pytest.mark.django_db
def test_the_fake_endpoint_without_responses_names_the_extra(monkeypatch):
    client = kit.make_client()  # the factories need no extra
    monkeypatch.setitem(sys.modules, "responses", None)
    with pytest.raises(MissingExtra, match=r'pip install "django-lightspeed-oauth\[testing\]"'):
        with kit.FakeTokenEndpoint(client):
            pass


def test_a_broken_dependency_is_not_reported_as_a_missing_extra(monkeypatch):
    from django_lightspeed_oauth._optional import require

    error = ImportError("cannot import name 'x' from 'kombu'", name="kombu")

    def broken(name: str, package: str | None = None):
        raise error

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ImportError) as raised:
        require("celery", "celery", what="The task")
    assert raised.value is error
