"""Factories and a fake token endpoint for the tests of sites that use the app.

Example (pytest, with the ``responses`` package)::

    from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_company

    def test_my_sync(db):
        company = make_company(expires_in=-1)          # already expired
        with FakeTokenEndpoint(company.client) as fake:
            token = company.get_access_token()       # refreshed through the fake
        assert token == fake.last_access_token
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from django.utils import timezone

from .._optional import require
from ..models import ApiClient, ConnectedCompany
from .families import InvalidGrant, TokenFamilies

__all__ = ["FakeTokenEndpoint", "make_client", "make_company"]

_counter = itertools.count(1)


def make_client(**fields: Any) -> ApiClient:
    """Create an :class:`ApiClient` (a K-Series trial client unless told otherwise)."""
    n = next(_counter)
    values: dict[str, Any] = dict(
        name=f"Test client {n}",
        slug=f"test-client-{n}",
        provider="k-series",
        environment="trial",
        client_id=f"devp-test-{n}",
        client_secret=f"test-secret-{n}-{secrets.token_hex(4)}",
        redirect_uri="https://site.example.com/lightspeed/callback/",
        scopes="orders-api items",
    )
    values.update(fields)
    client = ApiClient(**values)
    client.full_clean()
    client.save()
    return client


def make_company(
    client: ApiClient | None = None, *, expires_in: float = 3600, **fields: Any
) -> ConnectedCompany:
    """Create a connected company with random tokens expiring in ``expires_in`` seconds."""
    n = next(_counter)
    values: dict[str, Any] = dict(
        company_id=str(10_000 + n),
        name=f"Test company {n}",
        access_token=f"access-{secrets.token_urlsafe(16)}",
        refresh_token=f"refresh-{secrets.token_urlsafe(16)}",
        expires_at=timezone.now() + timedelta(seconds=expires_in),
    )
    values.update(fields)
    return ConnectedCompany.objects.create(client=client or make_client(), **values)


class FakeTokenEndpoint:
    """A ``responses`` callback standing in for an API client's token endpoint.

    It rotates refresh tokens (a reused one revokes its whole family and answers
    ``invalid_grant``), and can be switched to misbehave: ``fail_with("invalid_grant")``,
    ``fail_with(503)``, ``fail_with("timeout")`` or ``delay = seconds``. ``requests`` holds what
    it was sent. Tokens it has not issued are accepted once, as the start of a family, so
    factories' random tokens work.
    """

    def __init__(
        self,
        client: ApiClient,
        *,
        rotate: bool = True,
        expires_in: int = 3600,
        url: str | None = None,
        mock: Any = None,
    ) -> None:
        self.client = client
        self.expires_in = expires_in
        self.url = url or client.token_endpoint({"domain_prefix": "teststore"})
        self.failure: str | int | None = None
        self.delay = 0.0
        self.requests: list[dict[str, Any]] = []
        self.refresh_count = 0
        self.last_access_token = ""
        self.last_refresh_token = ""
        self._families = TokenFamilies(prefix="fake", rotate=rotate)
        self._mock = mock
        self._own_mock: Any = None

    # Switches -------------------------------------------------------------------------------

    @property
    def rotate(self) -> bool:
        """Whether a refresh hands out a new refresh token (Lightspeed's do)."""
        return self._families.rotate

    @rotate.setter
    def rotate(self, value: bool) -> None:
        self._families.rotate = value

    def fail_with(self, failure: str | int | None) -> None:
        """``"invalid_grant"``, ``"invalid_client"``, ``"unauthorized_client"``, ``"timeout"``,
        ``"html"``, an HTTP status (500, 503, 429...), or None to behave again."""
        self.failure = failure

    # responses plumbing --------------------------------------------------------------------

    def __enter__(self) -> FakeTokenEndpoint:
        responses = require("responses", "testing", what="FakeTokenEndpoint")
        if self._mock is None:
            self._own_mock = responses.RequestsMock(assert_all_requests_are_fired=False)
            self._own_mock.start()
            self._mock = self._own_mock
        self._mock.add_callback(responses.POST, self.url.split("?")[0], callback=self._answer)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._own_mock is not None:
            self._own_mock.stop()
            self._own_mock.reset()
            self._own_mock = None
            self._mock = None

    def _answer(self, request) -> tuple[int, dict[str, str], str]:
        import requests

        params = dict(parse_qsl(urlsplit(request.url).query))
        body = request.body or ""
        if isinstance(body, bytes):
            body = body.decode()
        content_type = request.headers.get("Content-Type", "")
        if "json" in content_type:
            params.update(json.loads(body or "{}"))
        else:
            params.update(parse_qsl(body))
        self.requests.append({"url": request.url, "headers": dict(request.headers), "params": params})
        if self.delay:
            time.sleep(self.delay)
        failure = self.failure
        if failure == "timeout":
            raise requests.ReadTimeout("fake token endpoint timed out")
        if failure == "html":
            return 200, {"Content-Type": "text/html"}, "<html><body>Maintenance</body></html>"
        if isinstance(failure, int):
            headers = {"Content-Type": "application/json"}
            if failure in (429, 503):
                headers["Retry-After"] = "120"
            return failure, headers, json.dumps({"error": "temporarily_unavailable"})
        if failure in ("invalid_grant", "invalid_client", "unauthorized_client"):
            status = 400 if failure == "invalid_grant" else 401
            return (
                status,
                {"Content-Type": "application/json"},
                json.dumps({"error": failure, "error_description": "refused by the fake endpoint"}),
            )
        if params.get("grant_type") == "refresh_token":
            try:
                family = self._families.refresh(params.get("refresh_token", ""))
            except InvalidGrant as refused:
                return (
                    400,
                    {"Content-Type": "application/json"},
                    json.dumps({"error": "invalid_grant", "error_description": refused.description}),
                )
            self.refresh_count += 1
        else:
            family = self._families.start()
        access, refresh = self._families.issue(family)
        payload: dict[str, Any] = {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": self.client.scopes,
        }
        if refresh is not None:
            payload["refresh_token"] = refresh
            self.last_refresh_token = refresh
        self.last_access_token = access
        return 200, {"Content-Type": "application/json"}, json.dumps(payload)
