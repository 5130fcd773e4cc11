"""Lightspeed OAuth flavours: one class each, endpoints as attributes, and a registry keyed by name.

A provider works on plain values (URLs, ids, secrets, dicts) and never speaks HTTP itself: it says
what to send (:meth:`Provider.token_request`) and how to read the answer
(:meth:`Provider.parse_token_response`, :meth:`Provider.read_identity`); :mod:`.oauth` sends.
"""

from __future__ import annotations

import base64
import json
import re
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.utils.module_loading import import_string

from .conf import app_settings
from .exceptions import ConfigurationError, IdentityError, ProviderError, TransientTokenError

__all__ = [
    "ENVIRONMENTS",
    "BusinessLocation",
    "Identity",
    "Provider",
    "TokenRequest",
    "TokenSet",
    "get_provider",
    "provider_choices",
    "provider_classes",
]

ENVIRONMENTS = ("production", "trial", "sandbox")

# A value that goes into a URL's host or path ({domain_prefix}): a DNS label, nothing else, so a
# forged callback cannot point the token request at another host.
URL_PLACEHOLDER_VALUE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class TokenRequest:
    """One POST to a token endpoint, described as plain values."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] | None = None
    json: dict[str, str] | None = None

    def __repr__(self) -> str:  # the bodies hold secrets
        return f"<TokenRequest POST {self.url}>"


@dataclass(frozen=True)
class TokenSet:
    """What a token endpoint granted. ``extra`` keeps the non-secret fields of the answer."""

    access_token: str
    refresh_token: str | None
    expires_at: datetime | None
    token_type: str = "bearer"
    scope: str = ""
    refresh_expires_at: datetime | None = None
    id_token: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The answer's access token was missing or not a token; a new refresh token was kept.
    unusable_access_token: bool = False

    def __repr__(self) -> str:
        return f"<TokenSet expires_at={self.expires_at!s} rotated={self.refresh_token is not None}>"

    def to_json(self) -> str:
        """The whole set as JSON, secrets included: only ever stored encrypted."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("expires_at", "refresh_expires_at"):
            values[name] = values[name].isoformat() if values[name] else None
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> TokenSet:
        values = json.loads(text)
        for name in ("expires_at", "refresh_expires_at"):
            values[name] = datetime.fromisoformat(values[name]) if values[name] else None
        return cls(**values)


@dataclass(frozen=True)
class Identity:
    """Who connected: the company's id at Lightspeed, a display name and details worth keeping.

    ``previous_ids`` are ids the same company was stored under by earlier versions (Retail X-Series
    companies were keyed by their domain prefix): a connection adopts such a row instead of adding one.
    ``warning`` says what staff should know about how the identity was found (shown in the admin).
    """

    company_id: str
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    previous_ids: tuple[str, ...] = ()
    warning: str = ""


@dataclass(frozen=True)
class BusinessLocation:
    """A K-Series business location, as "Get Businesses" describes it (most API calls take its id)."""

    id: int | str
    name: str = ""
    country: str = ""
    timezone: str = ""

    @classmethod
    def from_lightspeed(cls, data: Mapping[str, Any]) -> BusinessLocation:
        return cls(
            id=data.get("blID", ""),
            name=str(data.get("blName") or ""),
            country=str(data.get("country") or ""),
            timezone=str(data.get("timezone") or ""),
        )


def check_url_template(template: str) -> None:
    """Raise ConfigurationError unless every brace in ``template`` is a ``{name}`` placeholder."""
    try:
        fields = [
            field
            for _, field, spec, conv in string.Formatter().parse(template)
            if field is not None and (not re.fullmatch(r"\w+", field) or spec or conv)
        ]
    except ValueError:
        fields = ["?"]
    if fields:
        raise ConfigurationError(f"The URL {template!r} has a brace that is not a {{name}} placeholder.")


def _choice(*allowed: str):
    def validate(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(repr(a) for a in allowed)}")
        return value

    return validate


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    # Keys, grant types and URLs are printable: a NUL cannot even be stored on PostgreSQL, and a
    # lone surrogate cannot be encoded to be sent.
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueError("must not contain control characters or unpaired surrogates")
    return value


def _url_template(value: Any) -> str:
    value = _text(value)
    if not value.startswith(("https://", "http://", "{")):
        raise ValueError("must be an absolute http(s) URL (placeholders such as {api} allowed)")
    try:
        check_url_template(value)
    except ConfigurationError:
        raise ValueError("has a brace that is not a {name} placeholder") from None
    return value


def _state_length(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 8 <= value <= 128:
        raise ValueError("must be a whole number from 8 to 128")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _separator(value: Any) -> str:
    if value not in (" ", ",", "+", ";"):
        raise ValueError("must be one of ' ', ',', '+', ';'")
    return value


#: The knobs an API client may set in ``provider_options``, each with its validator.
OPTIONS = {
    "token_auth": _choice("basic", "body"),
    "token_params": _choice("form", "json", "query"),
    "pkce": _choice("required", "optional", "off"),
    "state_length": _state_length,
    "scope_separator": _separator,
    "scope_on_refresh": _boolean,
    "access_token_key": _text,
    "refresh_token_key": _text,
    "expires_in_key": _text,
    "grant_type": _text,
    "refresh_grant_type": _text,
    "identity_url": _url_template,
    "identity_id_key": _text,
    "identity_name_key": _text,
    "api_base_url": _url_template,
}


def _dig(payload: Any, dotted: str) -> Any:
    """``payload["a"]["b"]`` for ``"a.b"``; a list on the way stands for its first item."""
    value = payload
    for part in dotted.split("."):
        if isinstance(value, list):
            value = value[0] if value else None
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    if isinstance(value, list):
        value = value[0] if value else None
    return value


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _business_list(payload: Any) -> list[Any]:
    embedded = payload.get("_embedded") if isinstance(payload, Mapping) else None
    businesses = embedded.get("businessList") if isinstance(embedded, Mapping) else None
    return businesses if isinstance(businesses, list) else []


def _seconds(value: Any) -> int | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):  # OverflowError: "1e400" is infinity
        return None


#: A token is printable ASCII without spaces (opaque strings and JWTs alike), of a sane length.
_TOKEN = re.compile(r"^[\x21-\x7e]{1,8192}$")


def _usable_token(value: Any) -> bool:
    return isinstance(value, str) and _TOKEN.match(value) is not None


class Provider:
    """One Lightspeed OAuth flavour. Subclasses set the class attributes; options override them."""

    key: ClassVar[str] = ""
    name: ClassVar[str] = ""
    #: environment -> {"authorize", "token", "api"} URL templates
    urls: ClassVar[dict[str, dict[str, str]]] = {}
    #: paths under SANDBOX_URL + key + "/" for the sandbox environment
    sandbox_paths: ClassVar[dict[str, str]] = {}
    #: what the user must know about this flavour (shown in the admin and README)
    notes: ClassVar[str] = ""

    token_auth: str = "basic"  # "basic": HTTP Basic header; "body": client_id/secret as parameters
    token_params: str = "form"  # how grant parameters travel: "form" body, "json" body, URL "query"
    pkce: str = "off"  # "required", "optional" (we send it), "off"
    state_length: int = 32
    scope_separator: str = " "
    scope_on_refresh: bool = False
    access_token_key: str = "access_token"
    refresh_token_key: str = "refresh_token"
    expires_in_key: str = "expires_in"
    grant_type: str = "authorization_code"
    refresh_grant_type: str = "refresh_token"
    identity_url: str = ""  # template; "{api}" is the API base URL
    identity_id_key: str = ""
    identity_name_key: str = ""
    api_base_url: str = ""
    #: callback query parameters that this flavour needs later (placeholders in URLs)
    callback_params: ClassVar[tuple[str, ...]] = ()
    #: whether the API client must set authorize_url and token_url itself
    requires_urls: ClassVar[bool] = False
    #: whether a refresh spends the refresh token (a lost answer then leaves the outcome uncertain)
    rotates_refresh_tokens: ClassVar[bool] = True
    #: whether Lightspeed refuses an authorization request without scopes, and what to ask for
    requires_scopes: ClassVar[bool] = False
    scope_hint: ClassVar[str] = ""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = self.validate_options(options or {})
        for name, value in self.options.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key!r}>"

    @classmethod
    def validate_options(cls, options: Any) -> dict[str, Any]:
        """Check ``provider_options``; raise :class:`ProviderError` naming every bad key."""
        if not isinstance(options, Mapping):
            raise ProviderError("Provider options must be a JSON object.")
        problems = []
        clean: dict[str, Any] = {}
        for name, value in options.items():
            validator = OPTIONS.get(name)
            if validator is None:
                problems.append(f"unknown option {name!r} (known: {', '.join(sorted(OPTIONS))})")
                continue
            try:
                clean[name] = validator(value)
            except ValueError as err:
                problems.append(f"{name}: {err}")
        if problems:
            raise ProviderError("Invalid provider options: " + "; ".join(problems) + ".")
        return clean

    # URLs -----------------------------------------------------------------------------------

    def endpoint(
        self,
        which: str,
        environment: str,
        override: str = "",
        context: Mapping[str, str] | None = None,
    ) -> str:
        """The ``authorize``, ``token`` or ``api`` URL for an environment, placeholders filled."""
        template = override
        if not template and which == "api" and self.api_base_url:
            template = self.api_base_url
        if not template:
            if environment == "sandbox" and which in self.sandbox_paths:
                base = app_settings.SANDBOX_URL.rstrip("/")
                template = f"{base}/{self.key}/{self.sandbox_paths[which]}".rstrip("/")
            else:
                try:
                    template = self.urls[environment][which]
                except KeyError:
                    raise ConfigurationError(
                        f"The {self.name} provider has no {which} URL for the {environment!r} "
                        f"environment: set the API client's {which}_url."
                    ) from None
        return self.fill(template, context or {})

    def fill(self, template: str, context: Mapping[str, str]) -> str:
        check_url_template(template)
        values = {}
        for name in re.findall(r"{(\w+)}", template):
            value = context.get(name, "")
            if not URL_PLACEHOLDER_VALUE.match(str(value)):
                raise ConfigurationError(
                    f"The URL {template!r} needs a valid {{{name}}}, and the flow did not provide one."
                )
            values[name] = value
        return template.format_map(values)

    def api_url(self, environment: str, context: Mapping[str, str]) -> str:
        return self.endpoint("api", environment, context=context)

    # Authorization ----------------------------------------------------------------------------

    @property
    def uses_pkce(self) -> bool:
        return self.pkce in ("required", "optional")

    def join_scopes(self, scopes: str) -> str:
        return self.scope_separator.join(scopes.split())

    def authorization_params(
        self,
        *,
        client_id: str,
        redirect_uri: str,
        scopes: str,
        state: str,
        code_challenge: str | None,
    ) -> dict[str, str]:
        params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri}
        if scopes.strip():
            params["scope"] = self.join_scopes(scopes)
        params["state"] = state
        if code_challenge:
            params["code_challenge"] = code_challenge
            params["code_challenge_method"] = "S256"
        return params

    # Token endpoint ---------------------------------------------------------------------------

    def token_request(
        self,
        url: str,
        *,
        client_id: str,
        client_secret: str,
        grant: dict[str, str],
    ) -> TokenRequest:
        """Describe the POST for a grant (authorization code or refresh) in this flavour's way."""
        headers = {"Accept": "application/json"}
        params = dict(grant)
        if self.token_auth == "basic":
            pair = f"{client_id}:{client_secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        else:
            params["client_id"] = client_id
            params["client_secret"] = client_secret
        if self.token_params == "query":
            return TokenRequest(url=url, headers=headers, params=params)
        if self.token_params == "json":
            return TokenRequest(url=url, headers=headers, json=params)
        return TokenRequest(url=url, headers=headers, data=params)

    def code_grant(self, *, code: str, redirect_uri: str, code_verifier: str | None) -> dict[str, str]:
        grant = {"grant_type": self.grant_type, "code": code, "redirect_uri": redirect_uri}
        if code_verifier:
            grant["code_verifier"] = code_verifier
        return grant

    def refresh_grant(self, *, refresh_token: str, scopes: str) -> dict[str, str]:
        grant = {"grant_type": self.refresh_grant_type, "refresh_token": refresh_token}
        if self.scope_on_refresh and scopes.strip():
            grant["scope"] = self.join_scopes(scopes)
        return grant

    def parse_token_response(self, payload: Any, now: datetime | None = None) -> TokenSet:
        """Read a token endpoint's JSON answer; raise TransientTokenError if it holds no token.

        A usable new refresh token is kept even when the access token beside it is not (it is then
        empty and expired, so the next call refreshes again with the new refresh token): the old
        refresh token is already spent.
        """
        if not isinstance(payload, Mapping):
            raise TransientTokenError("The token endpoint answered JSON that is not an object.")
        found_refresh = payload.get(self.refresh_token_key)
        refresh_token = found_refresh if _usable_token(found_refresh) else None
        found_access = payload.get(self.access_token_key)
        now = now or datetime.now(UTC)
        if not _usable_token(found_access):
            if refresh_token is None:
                raise TransientTokenError(
                    f"The token endpoint's answer has no usable {self.access_token_key!r}."
                )
            return TokenSet(
                access_token="", refresh_token=refresh_token, expires_at=now, unusable_access_token=True
            )
        access_token = str(found_access)
        expires_at = None
        refresh_expires_at = None
        try:
            expires_in = _seconds(payload.get(self.expires_in_key))
            if expires_in is not None:
                # 0 or less: already expired, never "does not expire".
                expires_at = now + timedelta(seconds=max(0, expires_in))
            elif (expires := _seconds(payload.get("expires"))) is not None:
                # Retail X-Series also sends an absolute epoch time.
                expires_at = datetime.fromtimestamp(expires, UTC)
            refresh_expires_in = _seconds(payload.get("refresh_expires_in"))
            if refresh_expires_in and refresh_expires_in > 0:
                refresh_expires_at = now + timedelta(seconds=refresh_expires_in)
        except (OverflowError, ValueError, OSError):
            # A number so large it is past the year 9999. The answer may carry a new refresh
            # token that must be kept, so read it as "no expiry" rather than refusing it.
            expires_at = refresh_expires_at = None
        secret_keys = {self.access_token_key, self.refresh_token_key, "id_token"}
        extra = {
            name: value
            for name, value in payload.items()
            if name not in secret_keys and isinstance(value, (str, int, float, bool))
        }
        id_token = payload.get("id_token")
        return TokenSet(
            access_token=access_token,
            refresh_token=refresh_token,
            expires_at=expires_at,
            # Cut to the columns' sizes: a longer value would fail the write of the new tokens.
            token_type=str(payload.get("token_type") or "bearer")[:32],
            scope=str(payload.get("scope") or "")[:1000],
            refresh_expires_at=refresh_expires_at,
            id_token=id_token if isinstance(id_token, str) else None,
            extra=extra,
        )

    # Identity ---------------------------------------------------------------------------------

    #: Statuses of the identity endpoint that mean "not allowed to ask" rather than a failure: the
    #: provider then reads the identity without an answer (``payload`` None), as well as it can.
    identity_fallback_statuses: ClassVar[tuple[int, ...]] = ()

    def has_url(self, which: str, environment: str) -> bool:
        if environment == "sandbox":
            return which in self.sandbox_paths
        return which in self.urls.get(environment, {})

    def identity_endpoint(self, environment: str, context: Mapping[str, str], tokens: TokenSet) -> str | None:
        """The URL to GET with the new access token to learn who connected, or None."""
        if "identity_url" not in self.options and self.has_url("identity", environment):
            return self.endpoint("identity", environment, context=context)
        if not self.identity_url:
            return None
        url = self.identity_url
        if "{api}" in url:
            url = url.replace("{api}", self.api_url(environment, context))
        return self.fill(url, context)

    def next_identity_page(self, url: str, payload: Any) -> str | None:
        """The next page of a paginated identity answer, or None (the default: one page)."""
        return None

    def read_identities(
        self, tokens: TokenSet, context: Mapping[str, str], payloads: list[Any]
    ) -> list[Identity]:
        """Every company the tokens were granted for, read from the identity answer's pages.

        Most flavours grant one company; a K-Series token covers every business its user can see.
        """
        return [self.read_identity(tokens, context, payloads[0] if payloads else None)]

    def read_identity(self, tokens: TokenSet, context: Mapping[str, str], payload: Any | None) -> Identity:
        """Find the company in the identity endpoint's answer (or the tokens, or the callback)."""
        company_id = _dig(payload, self.identity_id_key) if self.identity_id_key else None
        if company_id in (None, "") or isinstance(company_id, bool):
            raise IdentityError(
                f"The {self.name} identity answer has no {self.identity_id_key or 'id'!r}: "
                "cannot tell which company connected."
            )
        if not isinstance(company_id, (str, int)) or len(str(company_id)) > 255:
            # ConnectedCompany.company_id holds 255 characters; a dict or a novel is not an id.
            raise IdentityError(
                f"The {self.name} identity answer's {self.identity_id_key!r} is not a company id."
            )
        name = _dig(payload, self.identity_name_key) if self.identity_name_key else ""
        return Identity(company_id=str(company_id), name=str(name or ""))


class KSeriesProvider(Provider):
    key = "k-series"
    name = "Restaurant K-Series (V1)"
    notes = "Client ids start with devp-. Trial and production are different servers."
    urls = {
        "production": {
            "authorize": "https://api.lsk.lightspeed.app/oauth/authorize",
            "token": "https://api.lsk.lightspeed.app/oauth/token",
            "api": "https://api.lsk.lightspeed.app",
        },
        "trial": {
            "authorize": "https://api.trial.lsk.lightspeed.app/oauth/authorize",
            "token": "https://api.trial.lsk.lightspeed.app/oauth/token",
            "api": "https://api.trial.lsk.lightspeed.app",
        },
    }
    sandbox_paths = {"authorize": "oauth/authorize", "token": "oauth/token", "api": ""}
    token_auth = "basic"
    token_params = "query"
    identity_url = "{api}/f/data/businesses"
    identity_id_key = "businessId"
    identity_name_key = "businessName"
    requires_scopes = True
    scope_hint = "the APIs granted to your client, e.g. 'financial-api orders-api items'"
    #: Businesses asked for per page of "Get Businesses" (Lightspeed's default page size is 1000).
    identity_page_size: ClassVar[int] = 200
    #: Pages read at most: a user seeing more businesses than this is not a merchant connecting.
    identity_max_pages: ClassVar[int] = 25

    def identity_endpoint(self, environment, context, tokens):
        url = super().identity_endpoint(environment, context, tokens)
        if url is None:
            return None
        return _with_query(url, page="0", size=str(self.identity_page_size))

    def next_identity_page(self, url, payload):
        businesses = _business_list(payload)
        query = dict(parse_qsl(urlsplit(url).query))
        try:
            page, size = int(query.get("page", "0")), int(query.get("size", "0"))
        except ValueError:
            return None
        if size <= 0 or len(businesses) < size or page + 1 >= self.identity_max_pages:
            return None
        return _with_query(url, page=str(page + 1), size=str(size))

    def read_identities(self, tokens, context, payloads):
        identities: dict[str, Identity] = {}
        for payload in payloads:
            if not isinstance(payload, Mapping) or not isinstance(payload.get("_embedded", {}), Mapping):
                raise IdentityError(
                    f"The {self.name} businesses answer is not the documented "
                    "{'_embedded': {'businessList': [...]}} object."
                )
            for business in _business_list(payload):
                identity = self.read_identity(tokens, context, business)
                identities.setdefault(identity.company_id, identity)
        if not identities:
            raise IdentityError(
                f"The {self.name} businesses answer lists no business: the user who authorized has "
                "access to none."
            )
        return list(identities.values())

    def read_identity(self, tokens, context, payload):
        identity = super().read_identity(tokens, context, payload)
        locations = payload.get("businessLocations") if isinstance(payload, Mapping) else None
        extra: dict[str, Any] = {
            "business_locations": [
                {key: location.get(key) for key in ("blID", "blName", "country", "timezone")}
                for location in (locations if isinstance(locations, list) else [])
                if isinstance(location, Mapping) and isinstance(location.get("blID"), (int, str))
            ]
        }
        if isinstance(payload.get("currencyCode"), str):
            extra["currency_code"] = payload["currencyCode"][:8]
        return Identity(company_id=identity.company_id, name=identity.name, extra=extra)


class KSeriesV2Provider(KSeriesProvider):
    key = "k-series-v2"
    name = "Restaurant K-Series (V2)"
    notes = "Default for clients created since 2025-11-10 (client ids start with devp-v2-)."
    urls = {
        "production": {
            "authorize": "https://auth.lsk-prod.app/realms/k-series/protocol/openid-connect/auth",
            "token": "https://auth.lsk-prod.app/realms/k-series/protocol/openid-connect/token",
            "api": "https://api.lsk.lightspeed.app",
        },
        "trial": {
            "authorize": "https://auth.lsk-demo.app/realms/k-series/protocol/openid-connect/auth",
            "token": "https://auth.lsk-demo.app/realms/k-series/protocol/openid-connect/token",
            "api": "https://api.trial.lsk.lightspeed.app",
        },
    }
    sandbox_paths = {
        "authorize": "realms/k-series/protocol/openid-connect/auth",
        "token": "realms/k-series/protocol/openid-connect/token",
        "api": "",
    }
    token_params = "form"
    scope_hint = (
        "'offline_access' (for refresh tokens) and the APIs granted to your client, "
        "e.g. 'offline_access financial-api orders-api'"
    )


class OSeriesProvider(Provider):
    key = "o-series"
    name = "Restaurant O-Series (Kounta)"
    notes = "The merchant picks a company on the consent page. Refresh tokens do not rotate."
    rotates_refresh_tokens = False
    # https://apidoc.kounta.com/authentication/ names these two URLs.
    _urls = {
        "authorize": "https://my.kounta.com/authorize",
        "token": "https://api.kounta.com/v1/token",
        "api": "https://api.kounta.com",
    }
    urls = {"production": _urls, "trial": _urls}
    sandbox_paths = {"authorize": "authorize", "token": "v1/token", "api": ""}
    token_auth = "body"
    identity_url = "{api}/v1/companies/me"
    identity_id_key = "id"
    identity_name_key = "name"


class RetailRProvider(Provider):
    key = "retail-r"
    name = "Retail R-Series"
    notes = "Form-encoded only; never send a scope on refresh. Refresh tokens are single-use."
    # Every API call is under the account: api_session() paths are relative to it.
    _urls = {
        "authorize": "https://cloud.lightspeedapp.com/auth/oauth/authorize",
        "token": "https://cloud.lightspeedapp.com/auth/oauth/token",
        "api": "https://api.lightspeedapp.com/API/V3/Account/{accountID}",
        "identity": "https://api.lightspeedapp.com/API/V3/Account.json",
    }
    urls = {"production": _urls, "trial": _urls}
    sandbox_paths = {
        "authorize": "auth/oauth/authorize",
        "token": "auth/oauth/token",
        "api": "API/V3/Account/{accountID}",
        "identity": "API/V3/Account.json",
    }
    token_auth = "body"
    token_params = "form"
    pkce = "optional"
    identity_id_key = "Account.accountID"
    identity_name_key = "Account.name"

    def read_identity(self, tokens, context, payload):
        identity = super().read_identity(tokens, context, payload)
        if not URL_PLACEHOLDER_VALUE.match(identity.company_id):
            raise IdentityError("The Retail R-Series account id cannot be used in an API URL.")
        return Identity(identity.company_id, identity.name, extra={"accountID": identity.company_id})

    # A JSON body or a scope on refresh gets 400 invalid_grant, which reads as a revoked grant
    # and would send every merchant back through the consent page: refuse both.
    @classmethod
    def validate_options(cls, options: Any) -> dict[str, Any]:
        clean = super().validate_options(options)
        if clean.get("scope_on_refresh") or clean.get("token_params", "form") != "form":
            raise ProviderError(
                "Invalid provider options: Retail R-Series takes form-encoded token requests "
                "without a scope on refresh (anything else is answered 400 invalid_grant)."
            )
        return clean

    def refresh_grant(self, *, refresh_token: str, scopes: str) -> dict[str, str]:
        return super().refresh_grant(refresh_token=refresh_token, scopes="")


class RetailXProvider(Provider):
    key = "retail-x"
    name = "Retail X-Series"
    notes = (
        "The callback names the store (domain_prefix); its token URL is built from it. Scopes are "
        "required since 2026-06-01; ask for retailer:read so the retailer's id and name can be read."
    )
    _urls = {
        "authorize": "https://secure.retail.lightspeed.app/connect",
        "token": "https://{domain_prefix}.retail.lightspeed.app/api/1.0/token",
        "api": "https://{domain_prefix}.retail.lightspeed.app/api",
    }
    urls = {"production": _urls, "trial": _urls}
    sandbox_paths = {
        "authorize": "connect",
        "token": "{domain_prefix}/api/1.0/token",
        "api": "{domain_prefix}/api",
    }
    token_auth = "body"
    token_params = "form"
    callback_params = ("domain_prefix",)
    identity_url = "{api}/2.0/retailer"
    # Without the retailer:read scope the retailer endpoint refuses the token.
    identity_fallback_statuses = (401, 403)
    requires_scopes = True
    scope_hint = "'retailer:read' and the scopes your app declares, e.g. 'retailer:read products:read'"

    def read_identity(self, tokens, context, payload):
        prefix = context.get("domain_prefix", "")
        granted = tokens.extra.get("domain_prefix")
        if not granted:
            # The callback's query string is the browser's word; only the token answer is Lightspeed's.
            raise IdentityError("The token endpoint's answer does not name the store (domain_prefix).")
        if granted != prefix:
            raise IdentityError("The token endpoint named another store than the callback did.")
        if not URL_PLACEHOLDER_VALUE.match(prefix):
            raise IdentityError("The callback did not name the store (domain_prefix).")
        if payload is None:
            return Identity(
                company_id=prefix,
                name=prefix,
                extra={"domain_prefix": prefix},
                warning="The retailer could not be read (is the retailer:read scope granted?): the "
                "store is identified by its domain prefix, which the retailer can change.",
            )
        data = payload.get("data") if isinstance(payload, Mapping) else None
        retailer_id = data.get("id") if isinstance(data, Mapping) else None
        if (
            not isinstance(data, Mapping)
            or not isinstance(retailer_id, str)
            or not retailer_id
            or len(retailer_id) > 255
        ):
            raise IdentityError("The Retail X-Series retailer answer has no 'data.id'.")
        current = data.get("domain_prefix")
        if not isinstance(current, str) or not URL_PLACEHOLDER_VALUE.match(current):
            current = prefix
        name = data.get("name")
        return Identity(
            company_id=retailer_id,
            name=name if isinstance(name, str) and name else current,
            extra={"domain_prefix": current},
            previous_ids=(prefix,),
        )


class VendorsProvider(Provider):
    key = "vendors"
    name = "Vendors (accounts.lightspeed.app)"
    notes = "PKCE S256 and a state of 20+ letters and digits are required; ask for offline_access."
    # Tokens come from the accounts server; the API called with them is the catalog API.
    _urls = {
        "authorize": "https://accounts.lightspeed.app/authorize",
        "token": "https://accounts.lightspeed.app/oauth/token",
        "api": "https://lsapi-catalog.lightspeedapp.com",
        "identity": "https://accounts.lightspeed.app/userinfo",
    }
    urls = {"production": _urls, "trial": _urls}
    sandbox_paths = {"authorize": "authorize", "token": "oauth/token", "api": "", "identity": "userinfo"}
    token_auth = "basic"
    token_params = "form"
    pkce = "required"
    identity_id_key = "sub"
    identity_name_key = "name"

    def identity_endpoint(self, environment, context, tokens):
        if _unverified_jwt_claims(tokens.id_token).get("sub"):
            return None  # the ID token already says who connected
        return super().identity_endpoint(environment, context, tokens)

    def read_identity(self, tokens, context, payload):
        if payload is None:
            claims = _unverified_jwt_claims(tokens.id_token)
            return Identity(company_id=str(claims["sub"]), name=str(claims.get("name") or ""))
        return super().read_identity(tokens, context, payload)


def _unverified_jwt_claims(token: str | None) -> dict[str, Any]:
    # The ID token came straight from the token endpoint over TLS, which OpenID Connect accepts in
    # place of checking its signature; we only read who connected from it.
    if not token:
        return {}
    try:
        body = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (IndexError, ValueError):
        return {}
    if not isinstance(claims, dict):
        return {}
    exp = claims.get("exp")
    if isinstance(exp, (int, float)) and exp < time.time() - 300:
        return {}
    return claims


class CustomProvider(Provider):
    key = "custom"
    name = "Custom OAuth2"
    notes = "Set authorize_url, token_url and the provider options for your server."
    requires_urls = True
    identity_id_key = "id"
    identity_name_key = "name"

    def read_identity(self, tokens, context, payload):
        if payload is None:
            # Without an identity endpoint, the token answer itself must name the company.
            payload = tokens.extra
        return super().read_identity(tokens, context, payload)


BUILTIN_PROVIDERS: tuple[type[Provider], ...] = (
    KSeriesProvider,
    KSeriesV2Provider,
    OSeriesProvider,
    RetailRProvider,
    RetailXProvider,
    VendorsProvider,
    CustomProvider,
)


@lru_cache(maxsize=8)
def _registry(extra: tuple[str, ...]) -> dict[str, type[Provider]]:
    registry = {cls.key: cls for cls in BUILTIN_PROVIDERS}
    for path in extra:
        try:
            cls = import_string(path)
        except ImportError as err:
            raise ConfigurationError(
                f'LIGHTSPEED_OAUTH["PROVIDERS"] names {path!r}, which cannot be imported.'
            ) from err
        if not (isinstance(cls, type) and issubclass(cls, Provider) and cls.key):
            raise ConfigurationError(
                f'LIGHTSPEED_OAUTH["PROVIDERS"] entry {path!r} is not a Provider subclass with a key.'
            )
        registry[cls.key] = cls
    return registry


def provider_classes() -> dict[str, type[Provider]]:
    """Every provider class by key: the built-in ones and those named in settings."""
    return _registry(app_settings.PROVIDERS)


def provider_choices() -> list[tuple[str, str]]:
    return [(key, cls.name) for key, cls in provider_classes().items()]


def get_provider(key: str, options: Mapping[str, Any] | None = None) -> Provider:
    """The provider for ``key`` with ``options`` applied; :class:`ProviderError` if unknown."""
    try:
        cls = provider_classes()[key]
    except KeyError:
        raise ProviderError(
            f"Unknown provider {key!r}; known providers: {', '.join(provider_classes())}."
        ) from None
    return cls(options)
