"""The sandbox servers' endpoints: consent page, token endpoint, identity API and the index page."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    HttpResponseServerError,
    JsonResponse,
    QueryDict,
)
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.translation import gettext as _
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from ..conf import app_settings
from .apps import sandbox_enabled
from .flavours import BASIC, FLAVOURS, Flavour, get_flavour
from .forms import BehaviourForm
from .id_tokens import encode_hs256
from .models import SandboxBehaviour, SandboxClient, SandboxGrant, SandboxToken, hash_secret

__all__ = ["AuthorizeView", "IdentityView", "IndexView", "TokenView"]

logger = logging.getLogger(__name__)

#: The token request parameters K-Series V1 wants in the URL query rather than the body.
QUERY_TOKEN_PARAMS = ("grant_type", "code", "redirect_uri", "refresh_token")
#: RFC 7636: a code challenge (S256) is 43 base64url characters; a verifier 43 to 128 unreserved ones.
CODE_CHALLENGE_RE = re.compile(r"[A-Za-z0-9_-]{43}")
CODE_VERIFIER_RE = re.compile(r"[A-Za-z0-9._~-]{43,128}")


#: The permission that lets a staff member flip the switches on the index page.
CHANGE_BEHAVIOUR_PERMISSION = "lightspeed_sandbox.change_sandboxbehaviour"


class SandboxView(View):
    """Every sandbox page: 404 unless the sandbox is enabled (``SANDBOX_ENABLED``, else ``DEBUG``)."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not sandbox_enabled():
            raise Http404(_("The Lightspeed sandbox is not enabled on this site."))
        return super().dispatch(request, *args, **kwargs)


def has_nul(params: QueryDict) -> bool:
    """Whether any key or value of a query or form holds a NUL character."""
    return any("\x00" in key or any("\x00" in value for value in values) for key, values in params.lists())


class FlavourView(SandboxView):
    """A view serving one flavour; the URLconf sets ``flavour_slug``."""

    flavour_slug = ""

    @property
    def flavour(self) -> Flavour:
        return get_flavour(self.flavour_slug)


def redirect_with(uri: str, **params: str) -> HttpResponseRedirect:
    """Redirect to ``uri`` with ``params`` added to its query, leaving out empty values."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(key, value) for key, value in params.items() if value]
    return HttpResponseRedirect(urlunsplit(parts._replace(query=urlencode(query))))


@method_decorator(never_cache, name="dispatch")
class AuthorizeView(FlavourView):
    """The authorize endpoint: check the request, show the consent page, send the merchant back."""

    template_name = "lightspeed_sandbox/consent.html"
    error_template_name = "lightspeed_sandbox/error.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        checked = self.check_request(request.GET)
        if isinstance(checked, HttpResponse):
            return checked
        if SandboxBehaviour.for_flavour(self.flavour.slug).deny_authorization:
            return self.denied(request.GET)
        return self.consent_page(request, checked)

    def post(self, request: HttpRequest) -> HttpResponse:
        # The form posts back to the same URL, so the authorization request is still in the query string.
        checked = self.check_request(request.GET)
        if isinstance(checked, HttpResponse):
            return checked
        decision = request.POST.get("decision")
        if decision == "deny" or SandboxBehaviour.for_flavour(self.flavour.slug).deny_authorization:
            return self.denied(request.GET)
        if decision != "allow":
            return self.consent_page(request, checked, error="Choose Allow or Deny.", status=400)
        company = self.flavour.company(request.POST.get("company", ""))
        if company is None:
            return self.consent_page(request, checked, error="Choose a company to connect.", status=400)
        return self.allowed(request.GET, checked, company.id)

    def check_request(self, params: QueryDict) -> SandboxClient | HttpResponse:
        """Return the requesting client, or the response that refuses the request."""
        if has_nul(params):
            # Nothing to compare with: PostgreSQL cannot even look such a value up.
            return self.error_page(_("The authorization request contains a NUL character."))
        client = SandboxClient.objects.filter(
            flavour=self.flavour.slug, client_id=params.get("client_id", "")
        ).first()
        if client is None:
            return self.error_page(f"client_id is not a registered {self.flavour.label} sandbox client.")
        if params.get("redirect_uri") != client.redirect_uri:
            # Never redirect to a URI the client did not register (RFC 6749, section 4.1.2.1).
            return self.error_page("redirect_uri does not match the client's registered redirect URI.")
        state = params.get("state", "")
        if params.get("response_type") != "code":
            return self.refuse(params, "unsupported_response_type", "response_type must be code.")
        if not self.flavour.state_is_valid(state):
            return self.refuse(params, "invalid_request", self.flavour.state_rule)
        challenge = params.get("code_challenge", "")
        method = params.get("code_challenge_method", "")
        if self.flavour.requires_scope and not params.get("scope", "").strip():
            # Retail X-Series, since 2026-06-01: an authorization request without scope is denied.
            return self.refuse(params, "access_denied", "scope is required.")
        if self.flavour.pkce_required and not challenge:
            return self.refuse(params, "invalid_request", "code_challenge (PKCE, S256) is required.")
        if challenge and (method != "S256" or not CODE_CHALLENGE_RE.fullmatch(challenge)):
            return self.refuse(
                params, "invalid_request", "code_challenge must be an S256 challenge with method S256."
            )
        return client

    def consent_page(
        self, request: HttpRequest, client: SandboxClient, error: str = "", status: int = 200
    ) -> HttpResponse:
        context = {
            "flavour": self.flavour,
            "client": client,
            "scopes": request.GET.get("scope", "").split(),
            "companies": self.flavour.companies,
            "selected": request.POST.get("company") or self.flavour.companies[0].id,
            "action": request.get_full_path(),
            "error": error,
        }
        return render(request, self.template_name, context, status=status)

    def error_page(self, message: str) -> HttpResponse:
        context = {"flavour": self.flavour, "message": message}
        return render(self.request, self.error_template_name, context, status=400)

    def refuse(self, params: QueryDict, error: str, description: str) -> HttpResponse:
        return redirect_with(
            str(params["redirect_uri"]),
            error=error,
            error_description=description,
            state=params.get("state", ""),
        )

    def denied(self, params: QueryDict) -> HttpResponse:
        return self.refuse(params, "access_denied", "The merchant denied access.")

    def allowed(self, params: QueryDict, client: SandboxClient, company_id: str) -> HttpResponse:
        grant, code = SandboxGrant.start(
            client,
            company_id,
            scope=" ".join(params.get("scope", "").split()),
            redirect_uri=str(params["redirect_uri"]),
            code_challenge=params.get("code_challenge", ""),
            nonce=params.get("nonce", ""),
        )
        extra = {"domain_prefix": grant.domain_prefix} if self.flavour.uses_domain_prefix else {}
        return redirect_with(str(params["redirect_uri"]), code=code, state=params.get("state", ""), **extra)


class TokenError(Exception):
    """A token request refused with a standard OAuth error (RFC 6749, section 5.2)."""

    def __init__(
        self, error: str, description: str, status: int = 400, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}

    def response(self) -> JsonResponse:
        return oauth_json(
            {"error": self.error, "error_description": self.description},
            status=self.status,
            headers=self.headers,
        )


def oauth_json(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> JsonResponse:
    response = JsonResponse(body, status=status)
    # RFC 6749, section 5.1: token responses must not be cached.
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def invalid_client(description: str, basic: bool) -> TokenError:
    headers = {"WWW-Authenticate": 'Basic realm="lightspeed-sandbox"'} if basic else {}
    return TokenError("invalid_client", description, status=401, headers=headers)


@method_decorator(csrf_exempt, name="dispatch")
class TokenView(FlavourView):
    """The token endpoint: exchange a code, or refresh, under the flavour's rules."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest, domain_prefix: str = "") -> HttpResponse:
        try:
            params = self.token_parameters(request)
            client = self.authenticate_client(request)
            # Only after client authentication: an anonymous request must not hold a worker asleep.
            behaviour = SandboxBehaviour.for_flavour(self.flavour.slug)
            if behaviour.delay_ms:
                time.sleep(behaviour.delay_ms / 1000)
            grant_type = params.get("grant_type", "")
            if grant_type == "authorization_code":
                return self.exchange_code(request, client, params, domain_prefix)
            if grant_type == "refresh_token":
                if behaviour.refresh_error == "server_error":
                    return HttpResponseServerError(
                        "<!doctype html><title>500 Internal Server Error</title>"
                        "<h1>Internal Server Error</h1><p>The sandbox was told to fail refreshes.</p>"
                    )
                if behaviour.refresh_error == "invalid_grant":
                    raise TokenError("invalid_grant", "The refresh token is invalid (sandbox switch).")
                return self.refresh(request, client, params, domain_prefix)
            if not grant_type:
                raise TokenError("invalid_request", "grant_type is required.")
            raise TokenError(
                "unsupported_grant_type", "grant_type must be authorization_code or refresh_token."
            )
        except TokenError as error:
            logger.info("Sandbox %s token request refused: %s", self.flavour.slug, error.error)
            return error.response()

    def token_parameters(self, request: HttpRequest) -> QueryDict:
        """Return the parameters of the token request from where the flavour expects them."""
        flavour = self.flavour
        if has_nul(request.GET) or has_nul(request.POST):
            raise TokenError("invalid_request", "The token request contains a NUL character.")
        if flavour.rejects_query_credentials and (
            "client_id" in request.GET or "client_secret" in request.GET
        ):
            raise TokenError("invalid_request", "Client credentials must not be sent in the query string.")
        if request.content_type == "application/json":
            if flavour.strict_form_body:
                raise TokenError("invalid_grant", "The token request must be form-encoded, not JSON.")
            raise TokenError("invalid_request", "The token request must be form-encoded, not JSON.")
        if flavour.token_params_in_query:
            in_body = [name for name in QUERY_TOKEN_PARAMS if name in request.POST]
            if in_body:
                raise TokenError(
                    "invalid_request",
                    f"{', '.join(in_body)} must be sent as URL query parameters, not in the body.",
                )
            return request.GET
        return request.POST

    def authenticate_client(self, request: HttpRequest) -> SandboxClient:
        basic = self.flavour.client_auth == BASIC
        if basic:
            client_id, client_secret = self.basic_credentials(request)
        else:
            client_id = request.POST.get("client_id", "")
            client_secret = request.POST.get("client_secret", "")
            if not client_id or not client_secret:
                raise invalid_client("client_id and client_secret are required in the form body.", basic)
        client = None
        if "\x00" not in client_id:  # from a Basic header; PostgreSQL cannot look a NUL up
            client = SandboxClient.objects.filter(flavour=self.flavour.slug, client_id=client_id).first()
        if client is None or not client.secret_matches(client_secret):
            raise invalid_client("Client authentication failed.", basic)
        return client

    def basic_credentials(self, request: HttpRequest) -> tuple[str, str]:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            raise invalid_client("HTTP Basic client authentication is required.", basic=True)
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise invalid_client("The Basic authorization header is malformed.", basic=True) from None
        client_id, separator, client_secret = decoded.partition(":")
        if not separator:
            raise invalid_client("The Basic authorization header is malformed.", basic=True)
        return client_id, client_secret

    def exchange_code(
        self, request: HttpRequest, client: SandboxClient, params: QueryDict, domain_prefix: str
    ) -> HttpResponse:
        code = params.get("code", "")
        if not code:
            raise TokenError("invalid_request", "code is required.")
        grant = SandboxGrant.objects.filter(client=client, code_hash=hash_secret(code)).first()
        if grant is None:
            raise TokenError("invalid_grant", "The authorization code is invalid.")
        if grant.code_used_at is not None:
            self.revoke_family(grant, "authorization code replayed")
            raise TokenError("invalid_grant", "The authorization code was already used.")
        if grant.code_is_expired():
            raise TokenError("invalid_grant", "The authorization code has expired.")
        if params.get("redirect_uri") != grant.redirect_uri:
            raise TokenError("invalid_grant", "redirect_uri does not match the authorization request.")
        if self.flavour.uses_domain_prefix and domain_prefix != grant.domain_prefix:
            raise TokenError("invalid_grant", "The authorization code belongs to another store.")
        if grant.code_challenge:
            self.verify_pkce(grant.code_challenge, params.get("code_verifier", ""))
        with transaction.atomic():
            if grant.consume_code():
                return self.token_response(request, grant, with_refresh_token=True)
        # Another request exchanged the code in the meantime: a replay like any other.
        self.revoke_family(grant, "authorization code replayed")
        raise TokenError("invalid_grant", "The authorization code was already used.")

    def verify_pkce(self, challenge: str, verifier: str) -> None:
        if not CODE_VERIFIER_RE.fullmatch(verifier):
            raise TokenError("invalid_grant", "code_verifier is missing or malformed.")
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
        if not secrets.compare_digest(expected, challenge):
            raise TokenError("invalid_grant", "code_verifier does not match the code_challenge.")

    def refresh(
        self, request: HttpRequest, client: SandboxClient, params: QueryDict, domain_prefix: str
    ) -> HttpResponse:
        if self.flavour.strict_form_body and "scope" in params:
            raise TokenError("invalid_grant", "scope must not be sent with a refresh_token grant.")
        raw = params.get("refresh_token", "")
        if not raw:
            raise TokenError("invalid_request", "refresh_token is required.")
        token = SandboxToken.find(SandboxToken.REFRESH, raw)
        if token is None or token.grant.client_id != client.pk:
            raise TokenError("invalid_grant", "The refresh token is invalid.")
        grant = token.grant
        if token.is_revoked():
            raise TokenError("invalid_grant", "The refresh token has been revoked.")
        if token.is_expired():
            raise TokenError("invalid_grant", "The refresh token has expired.")
        if self.flavour.uses_domain_prefix and domain_prefix != grant.domain_prefix:
            raise TokenError("invalid_grant", "The refresh token belongs to another store.")
        if not self.flavour.rotates_refresh_tokens:
            return self.token_response(request, grant, with_refresh_token=False)
        with transaction.atomic():
            if token.mark_used():
                return self.token_response(request, grant, with_refresh_token=True)
        # A rotated-away refresh token came back: it may have been stolen, so nothing from it stays valid.
        self.revoke_family(grant, "refresh token reused")
        raise TokenError("invalid_grant", "The refresh token was already used; the authorization is revoked.")

    def revoke_family(self, grant: SandboxGrant, reason: str) -> None:
        grant.revoke()
        logger.warning(
            "Sandbox %s: %s for client %s; revoked every token of grant %s",
            self.flavour.slug,
            reason,
            grant.client.client_id,
            grant.pk,
        )

    def token_response(
        self, request: HttpRequest, grant: SandboxGrant, with_refresh_token: bool
    ) -> JsonResponse:
        flavour = self.flavour
        lifetime = app_settings.SANDBOX_TOKEN_LIFETIME
        # Keycloak's offline_access tokens live until revoked, and it reports them as expiring in 0 seconds.
        offline = flavour.reports_refresh_expires_in and "offline_access" in grant.scopes
        refresh_lifetime = None if offline else flavour.refresh_token_lifetime
        access, access_token = grant.issue(SandboxToken.ACCESS, lifetime)
        body: dict[str, Any] = {
            "access_token": access_token,
            "token_type": flavour.token_type,
            "expires_in": lifetime,
            "scope": grant.scope,
        }
        if with_refresh_token:
            body["refresh_token"] = grant.issue(SandboxToken.REFRESH, refresh_lifetime)[1]
        if flavour.reports_refresh_expires_in:
            body["refresh_expires_in"] = refresh_lifetime or 0
        if flavour.uses_domain_prefix:
            assert access.expires_at is not None
            body["domain_prefix"] = grant.domain_prefix
            body["expires"] = int(access.expires_at.timestamp())
        if flavour.issues_id_token and "openid" in grant.scopes:
            body["id_token"] = self.id_token(request, grant, lifetime)
        return oauth_json(body)

    def id_token(self, request: HttpRequest, grant: SandboxGrant, lifetime: int) -> str:
        now = int(time.time())
        company = grant.company()
        claims: dict[str, Any] = {
            "iss": request.build_absolute_uri(reverse("lightspeed_sandbox:index")) + self.flavour.slug,
            "sub": company.id,
            "aud": grant.client.client_id,
            "name": company.name,
            "iat": now,
            "exp": now + lifetime,
        }
        if grant.nonce:
            claims["nonce"] = grant.nonce
        return encode_hs256(claims, grant.client.client_secret)


class IdentityView(FlavourView):
    """The API call a site makes after connecting, to learn which company it connected."""

    http_method_names = ["get"]

    def get(self, request: HttpRequest, domain_prefix: str = "") -> HttpResponse:
        scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            return self.unauthorized("A bearer access token is required.")
        token = SandboxToken.find(SandboxToken.ACCESS, raw.strip())
        if token is None or token.grant.client.flavour != self.flavour.slug:
            return self.unauthorized("The access token is invalid.")
        if token.is_revoked():
            return self.unauthorized("The access token has been revoked.")
        if token.is_expired():
            return self.unauthorized("The access token has expired.")
        if self.flavour.uses_domain_prefix and domain_prefix != token.grant.domain_prefix:
            return self.unauthorized("The access token is not valid for this store.")
        scope = self.flavour.identity_scope
        if scope and scope not in token.grant.scopes:
            return JsonResponse(
                {"error": "insufficient_scope", "error_description": f"The {scope} scope is required."},
                status=403,
            )
        company = token.grant.company()
        if self.flavour.slug.startswith("k-series"):
            return self.businesses(request, company)
        return JsonResponse(self.flavour.identity(company), safe=False)

    def businesses(self, request: HttpRequest, company: Any) -> JsonResponse:
        """A page of "Get Businesses": every business the authorizing user sees (page / size)."""
        try:
            page = max(0, int(request.GET.get("page", "0")))
            size = min(1000, max(1, int(request.GET.get("size", "1000"))))
        except ValueError:
            return JsonResponse({"error": "page and size must be numbers"}, status=400)
        visible = self.flavour.visible_companies(company)[page * size : (page + 1) * size]
        return JsonResponse(
            {
                "_embedded": {"businessList": [self.flavour.identity(business) for business in visible]},
                "_links": {"self": {"href": request.build_absolute_uri()}},
            }
        )

    def unauthorized(self, description: str) -> JsonResponse:
        response = JsonResponse({"error": "invalid_token", "error_description": description}, status=401)
        response["WWW-Authenticate"] = f'Bearer error="invalid_token", error_description="{description}"'
        return response


@method_decorator(never_cache, name="dispatch")
class IndexView(SandboxView):
    """Lists the sandbox servers, their registered clients, and switches to make them misbehave.

    Staff only (others are sent to the admin's login); changing a switch also takes the permission to
    change sandbox behaviours.
    """

    template_name = "lightspeed_sandbox/index.html"

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        user = request.user
        if sandbox_enabled() and not (user.is_active and user.is_staff):
            return redirect_to_login(request.get_full_path())
        return super().dispatch(request, *args, **kwargs)

    def get(self, request: HttpRequest) -> HttpResponse:
        return self.render_index(request, {})

    def post(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm(CHANGE_BEHAVIOUR_PERMISSION):
            raise PermissionDenied(_("You may not change the sandbox's behaviour switches."))
        slug = request.POST.get("flavour", "")
        if slug not in FLAVOURS:
            return self.render_index(request, {}, status=400)
        form = BehaviourForm(request.POST, instance=SandboxBehaviour.for_flavour(slug), prefix=slug)
        if not form.is_valid():
            return self.render_index(request, {slug: form}, status=400)
        form.save()
        return redirect(f"{reverse('lightspeed_sandbox:index')}?saved={slug}#{slug}")

    def render_index(
        self, request: HttpRequest, bound_forms: dict[str, BehaviourForm], status: int = 200
    ) -> HttpResponse:
        clients = list(SandboxClient.objects.all())
        servers = []
        for flavour in FLAVOURS.values():
            form = bound_forms.get(flavour.slug) or BehaviourForm(
                instance=SandboxBehaviour.for_flavour(flavour.slug), prefix=flavour.slug
            )
            servers.append(
                {
                    "flavour": flavour,
                    "endpoints": self.endpoints(request, flavour),
                    "clients": [client for client in clients if client.flavour == flavour.slug],
                    "form": form,
                    "saved": request.GET.get("saved") == flavour.slug,
                }
            )
        context = {
            "servers": servers,
            "token_lifetime": app_settings.SANDBOX_TOKEN_LIFETIME,
            "can_change": request.user.has_perm(CHANGE_BEHAVIOUR_PERMISSION),
        }
        return render(request, self.template_name, context, status=status)

    def endpoints(self, request: HttpRequest, flavour: Flavour) -> list[tuple[str, str]]:
        kwargs = {"domain_prefix": "DOMAIN-PREFIX"} if flavour.uses_domain_prefix else {}
        endpoints = []
        for label, name, url_kwargs in (
            ("Authorize", "authorize", {}),
            ("Token", "token", kwargs),
            ("Identity", "identity", kwargs),
        ):
            url = request.build_absolute_uri(
                reverse(f"lightspeed_sandbox:{flavour.slug}-{name}", kwargs=url_kwargs)
            )
            endpoints.append((label, url.replace("DOMAIN-PREFIX", "{domain_prefix}")))
        return endpoints
