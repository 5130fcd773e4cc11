"""The authorization flow: connect (staff), invite (merchant with a signed link), and callback."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import string
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

from django.contrib.auth.views import redirect_to_login
from django.core.cache import cache
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import get_object_or_404, resolve_url
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.crypto import get_random_string
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_variables

from . import oauth, signals
from .conf import app_settings
from .exceptions import ConfigurationError, IdentityError, TokenEndpointError
from .models import (
    ApiClient,
    AuthorizationRequest,
    ConnectedCompany,
    Invitation,
    TokenEvent,
    hash_invitation_token,
)
from .providers import URL_PLACEHOLDER_VALUE, Identity, TokenSet

__all__ = ["CallbackView", "ChooseBusinessView", "ConnectView", "FlowError", "InviteView", "ResultView"]

logger = logging.getLogger(__name__)

SESSION_BINDING_KEY = "lightspeed_oauth_binding"
SESSION_CHOICE_KEY = "lightspeed_oauth_choice"
# How the last flow of this browser ended, shown by ResultView (so its page survives a reload).
SESSION_RESULT_KEY = "lightspeed_oauth_result"
# The invitation page a merchant's flow started from: "Try again" leads back to it.
SESSION_INVITATION_KEY = "lightspeed_oauth_invitation"
# Failures after which starting the same flow again cannot help.
NOT_RETRYABLE = {"misconfigured"}
STATE_PATTERN = re.compile(r"^[A-Za-z0-9._~-]{8,128}$")
PRINTABLE = re.compile(r"^[\x21-\x7e]{1,2048}$")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
STATE_ALPHABET = string.ascii_letters + string.digits
INVITATION_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{20,100}$")
T = TypeVar("T")

#: How long the callback keeps trying to store the tokens of a spent code when the database is busy
#: (a locked SQLite file, a dropped connection): the code cannot be exchanged again.
STORE_RETRY_SECONDS = 60
NEXT_URL_MAX_LENGTH: int = AuthorizationRequest._meta.get_field("next_url").max_length or 2000


class ChoiceNeeded(Exception):
    """The tokens cover several businesses: the merchant chooses one on the next page."""


class FlowError(Exception):
    """A flow cannot go on; carries what the browser is shown."""

    def __init__(self, title: str, message: str, status: int = 400, reason: str = "") -> None:
        super().__init__(message)
        self.title = title
        self.message = message
        self.status = status
        self.reason = reason


def _binding(request: HttpRequest) -> str:
    """A hash of a nonce kept in this browser's session, created on first use."""
    nonce = request.session.get(SESSION_BINDING_KEY)
    if not nonce:
        nonce = secrets.token_urlsafe(24)
        request.session[SESSION_BINDING_KEY] = nonce
    return hashlib.sha256(nonce.encode()).hexdigest()


def _pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _misconfigured(client: ApiClient | None, err: ConfigurationError) -> FlowError:
    # The detail goes to the log for staff; the browser gets a sentence without it.
    logger.error("API client %s cannot be used: %s", client.slug if client else "?", err.message)
    return FlowError(
        _("This connection is not set up correctly"),
        _("The site's Lightspeed connection is misconfigured; staff have been told why."),
        status=500,
        reason="misconfigured",
    )


class FlowViewMixin:
    """What every view of the flow shares: error pages and starting a flow."""

    error_template_name = "lightspeed_oauth/error.html"

    def flow_failed(
        self, request: HttpRequest, error: FlowError, auth_request: AuthorizationRequest | None = None
    ) -> HttpResponse:
        """Render the error page (override to change how failures look)."""
        return TemplateResponse(
            request,
            self.error_template_name,
            {
                "title": error.title,
                "message": error.message,
                "reason": error.reason,
                "auth_request": auth_request,
            },
            status=error.status,
        )

    def start_flow(
        self,
        request: HttpRequest,
        client: ApiClient,
        *,
        created_by=None,
        reference: str = "",
        next_url: str = "",
        via_invitation: bool = False,
        invitation: Invitation | None = None,
    ) -> HttpResponse:
        """Create the AuthorizationRequest and send the browser to the provider's consent page.

        With ``invitation``, the new request holds the use of it that the caller has claimed.
        """
        try:
            provider = client.get_provider()
            client.authorize_endpoint()
        except ConfigurationError as err:
            raise _misconfigured(client, err) from None
        state = get_random_string(provider.state_length, STATE_ALPHABET)
        verifier = secrets.token_urlsafe(48) if provider.uses_pkce else ""
        now = timezone.now()
        auth_request = AuthorizationRequest.objects.create(
            client=client,
            state=state,
            code_verifier=verifier,
            browser_binding=_binding(request),
            created_by=created_by,
            via_invitation=via_invitation or invitation is not None,
            invitation=invitation,
            holds_invitation_use=invitation is not None,
            next_url=next_url,
            reference=reference,
            created_at=now,
            expires_at=now + timedelta(seconds=app_settings.STATE_MAX_AGE),
        )
        logger.info(
            "Started a flow for API client %s (invitation=%s)", client.slug, auth_request.via_invitation
        )
        return self.redirect_to_provider(auth_request)

    def redirect_to_provider(self, auth_request: AuthorizationRequest) -> HttpResponse:
        """The provider's consent page for this request (also to resume a pending one)."""
        client = auth_request.client
        try:
            provider = client.get_provider()
            authorize_url = client.authorize_endpoint()
        except ConfigurationError as err:
            raise _misconfigured(client, err) from None
        verifier = auth_request.code_verifier
        params = provider.authorization_params(
            client_id=client.client_id,
            redirect_uri=client.redirect_uri,
            scopes=client.scopes,
            state=auth_request.state,
            code_challenge=_pkce_challenge(verifier) if verifier else None,
        )
        separator = "&" if "?" in authorize_url else "?"
        return HttpResponseRedirect(f"{authorize_url}{separator}{urlencode(params)}")


def _clean_reference(value: str) -> str:
    value = value.strip()
    if len(value) > 255 or any(ord(c) < 32 for c in value):
        raise FlowError(
            _("Invalid reference"),
            _("The reference must be at most 255 printable characters."),
            reason="bad_reference",
        )
    return value


@method_decorator(never_cache, name="dispatch")
@method_decorator(csrf_protect, name="dispatch")
class ConnectView(FlowViewMixin, View):
    """A staff member starts a flow for one API client: ``connect/<slug>/?next=&reference=``.

    A GET only shows what will happen, with a button; the flow starts with the POST that button
    sends (CSRF-protected), so a link from another site cannot start a flow, nor choose the
    reference and the page to return to, in the name of a logged-in staff member.
    """

    template_name = "lightspeed_oauth/connect.html"
    http_method_names = ["get", "post", "head", "options"]

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not (request.user.is_staff and request.user.has_perm(app_settings.CONNECT_PERMISSION)):
            return self.flow_failed(
                request,
                FlowError(
                    _("Permission denied"),
                    _("You are not allowed to connect Lightspeed companies."),
                    status=403,
                    reason="forbidden",
                ),
            )
        return super().dispatch(request, *args, **kwargs)

    def clean(self, request: HttpRequest, data: Any) -> tuple[str, str]:
        """The reference and the page to return to, from the query (GET) or the form (POST)."""
        next_url = data.get("next", "")
        if next_url and (
            len(next_url) > NEXT_URL_MAX_LENGTH
            # A control character (NUL above all: PostgreSQL cannot store it) is never part of a page.
            or any(ord(c) < 32 or ord(c) == 127 for c in next_url)
            or not url_has_allowed_host_and_scheme(
                next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
            )
        ):
            raise FlowError(
                _("Invalid next page"), _("The page to return to must be on this site."), reason="bad_next"
            )
        return _clean_reference(data.get("reference", "")), next_url

    def get(self, request: HttpRequest, slug: str) -> HttpResponse:
        client = get_object_or_404(ApiClient, slug=slug, is_active=True)
        try:
            reference, next_url = self.clean(request, request.GET)
            try:
                provider = client.get_provider()
                client.authorize_endpoint()  # a client that cannot start a flow says so now
            except ConfigurationError as err:
                raise _misconfigured(client, err) from None
        except FlowError as err:
            return self.flow_failed(request, err)
        return TemplateResponse(
            request,
            self.template_name,
            {"client": client, "provider": provider, "reference": reference, "next_url": next_url},
        )

    def post(self, request: HttpRequest, slug: str) -> HttpResponse:
        client = get_object_or_404(ApiClient, slug=slug, is_active=True)
        try:
            reference, next_url = self.clean(request, request.POST)
            return self.start_flow(
                request, client, created_by=request.user, reference=reference, next_url=next_url
            )
        except FlowError as err:
            return self.flow_failed(request, err)


def _client_ip(request: HttpRequest) -> str:
    # REMOTE_ADDR only: a forwarded-for header is whatever the client wants it to be. Behind a
    # proxy, the site sets REMOTE_ADDR from the proxy's header (see README).
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def _over_limit(key: str, limit: int | None, window: int) -> bool:
    """Count one more start under ``key`` in Django's default cache; True past ``limit``."""
    if not limit:
        return False
    cache.add(key, 0, window)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add() and incr()
        cache.set(key, 1, window)
        count = 1
    return count > limit


@method_decorator(never_cache, name="dispatch")
@method_decorator(csrf_protect, name="dispatch")
class InviteView(FlowViewMixin, View):
    """A merchant holding an invitation link: a page explaining the step, then the flow (POST).

    The link's token is looked up by its hash. A revoked, expired or used-up invitation gets a
    page saying so; the browser whose flow is still pending gets that flow again instead of a new
    one; anonymous starts are rate-limited per invitation and per IP address.
    """

    template_name = "lightspeed_oauth/invite.html"
    http_method_names = ["get", "post", "head", "options"]

    def load(self, token: str) -> Invitation:
        invitation = None
        if INVITATION_TOKEN_PATTERN.match(token):
            invitation = (
                Invitation.objects.select_related("client")
                .filter(token_hash=hash_invitation_token(token))
                .first()
            )
        if invitation is None:
            raise FlowError(
                _("Invalid invitation"),
                _("This invitation link is not valid. Ask for a new one."),
                status=404,
                reason="bad_invitation",
            )
        if invitation.revoked_at is not None:
            raise FlowError(
                _("This invitation has been withdrawn"),
                _("This invitation link was withdrawn by the site. Ask for a new one."),
                status=410,
                reason="invitation_revoked",
            )
        if invitation.expires_at <= timezone.now():
            raise FlowError(
                _("This invitation has expired"),
                _("This invitation link has expired. Ask for a new one."),
                status=410,
                reason="invitation_expired",
            )
        if not invitation.client.is_active:
            raise FlowError(
                _("Invitation no longer valid"),
                _("This connection is no longer offered."),
                status=404,
                reason="client_gone",
            )
        try:
            invitation.client.get_provider()
            invitation.client.authorize_endpoint()
        except ConfigurationError as err:
            raise _misconfigured(invitation.client, err) from None
        return invitation

    def used_up(self) -> FlowError:
        return FlowError(
            _("This invitation has already been used"),
            _(
                "This invitation link was already used to connect, and it works only once. "
                "Ask for a new one if you need to connect again."
            ),
            status=410,
            reason="invitation_used",
        )

    def pending_flow(self, request: HttpRequest, invitation: Invitation) -> AuthorizationRequest | None:
        """This browser's flow from this invitation that can still reach the callback."""
        nonce = request.session.get(SESSION_BINDING_KEY)
        if not nonce:
            return None
        return (
            AuthorizationRequest.objects.select_related("client")
            .filter(
                invitation=invitation,
                browser_binding=hashlib.sha256(nonce.encode()).hexdigest(),
                used_at__isnull=True,
                expires_at__gt=timezone.now(),
                outcome=AuthorizationRequest.Outcome.PENDING,
            )
            .order_by("-created_at")
            .first()
        )

    def rate_limited(self, request: HttpRequest, invitation: Invitation) -> bool:
        window = app_settings.INVITATION_RATE_WINDOW
        # Both counters count every attempt, so a flood from many addresses still stops at the
        # invitation's limit, and one address cannot work through many invitations.
        by_invitation = _over_limit(
            f"lightspeed_oauth:invitation:{invitation.pk}", app_settings.INVITATION_RATE_LIMIT, window
        )
        by_address = _over_limit(
            f"lightspeed_oauth:invitation-ip:{_client_ip(request)}",
            app_settings.INVITATION_IP_RATE_LIMIT,
            window,
        )
        return by_invitation or by_address

    def get(self, request: HttpRequest, token: str) -> HttpResponse:
        try:
            invitation = self.load(token)
            pending = self.pending_flow(request, invitation)
            if pending is None and invitation.uses >= invitation.max_uses:
                invitation.uses -= Invitation.objects.release_abandoned(invitation)
                if invitation.uses >= invitation.max_uses:
                    raise self.used_up()
        except FlowError as err:
            return self.flow_failed(request, err)
        client = invitation.client
        return TemplateResponse(
            request,
            self.template_name,
            {
                "invitation": invitation,
                "client": client,
                "reference": invitation.reference,
                "expires_at": invitation.expires_at,
                "provider": client.get_provider(),
            },
        )

    def post(self, request: HttpRequest, token: str) -> HttpResponse:
        try:
            invitation = self.load(token)
            pending = self.pending_flow(request, invitation)
            if pending is not None:
                # A second click, a reload, the back button: the same flow, not a new row.
                response = self.redirect_to_provider(pending)
            else:
                if self.rate_limited(request, invitation):
                    logger.warning(
                        "Invitation %s: too many starts (API client %s); refused",
                        invitation.pk,
                        invitation.client.slug,
                    )
                    raise FlowError(
                        _("Too many attempts"),
                        _(
                            "This invitation was used to start too many connections in a short time. "
                            "Wait a while, then try again."
                        ),
                        status=429,
                        reason="rate_limited",
                    )
                response = self.start_from(request, invitation)
        except FlowError as err:
            response = self.flow_failed(request, err)
            if err.status == 429:
                response["Retry-After"] = str(app_settings.INVITATION_RATE_WINDOW)
            return response
        request.session[SESSION_INVITATION_KEY] = request.path
        return response

    def start_from(self, request: HttpRequest, invitation: Invitation) -> HttpResponse:
        """Take a use of the invitation and start a flow holding it (both or neither)."""
        with transaction.atomic():
            claimed = Invitation.objects.claim_use(invitation.pk)
            if not claimed and Invitation.objects.release_abandoned(invitation):
                claimed = Invitation.objects.claim_use(invitation.pk)
            if not claimed:
                # Revoked or expired between load() and now reads as the page load() gives.
                self.load_again(invitation)
                raise self.used_up()
            return self.start_flow(
                request, invitation.client, reference=invitation.reference, invitation=invitation
            )

    def load_again(self, invitation: Invitation) -> None:
        invitation.refresh_from_db()
        if invitation.revoked_at is not None or invitation.expires_at <= timezone.now():
            raise FlowError(
                _("This invitation is no longer valid"),
                _("This invitation link was withdrawn or has expired. Ask for a new one."),
                status=410,
                reason="invitation_expired",
            )


def _retry_busy_database(write: Callable[[], T], what: str) -> T:
    """Run ``write`` (a transaction of its own), again on a locked or lost database.

    For what cannot be fetched again once the code is spent: the tokens are held in memory, and a
    failed transaction changed nothing ("database is locked" on a busy SQLite file, a dropped
    connection). Inside the caller's transaction nothing is retried: a failed statement has already
    spoilt it.
    """
    connection = connections[router.db_for_write(ConnectedCompany)]
    retry_until = None if connection.in_atomic_block else time.monotonic() + STORE_RETRY_SECONDS
    delay = 0.05
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError):
            if retry_until is None or time.monotonic() + delay > retry_until:
                raise
            logger.warning("Database error while %s; retrying", what)
            connection.close()  # a broken connection is replaced at the next query
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


@method_decorator(never_cache, name="dispatch")
@method_decorator(transaction.non_atomic_requests, name="dispatch")
class CallbackView(FlowViewMixin, View):
    # Not inside ATOMIC_REQUESTS: the code is spent once exchanged, so the tokens must be committed
    # by store() whatever happens later in the request.
    """Lightspeed sends the browser back here, with a code or an error, for every API client."""

    success_template_name = "lightspeed_oauth/connected.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        auth_request = None
        try:
            try:
                auth_request = self.find_request(request)
                company = self.complete(request, auth_request)
            except ConfigurationError as err:
                # A provider removed from PROVIDERS, or a secret no key decrypts, since the flow
                # started: a clear page, not a traceback.
                raise _misconfigured(auth_request.client if auth_request else None, err) from None
        except ChoiceNeeded:
            return HttpResponseRedirect(reverse("lightspeed_oauth:choose"))
        except FlowError as err:
            return self.flow_failed(request, err, auth_request)
        return self.connect_success(request, company, auth_request)

    # Steps, each overridable -------------------------------------------------------------------

    def find_request(self, request: HttpRequest) -> AuthorizationRequest:
        states = request.GET.getlist("state")
        state = states[-1] if states else ""
        if not state:
            raise FlowError(
                _("Missing state"),
                _("This link is incomplete: it has no state. Start again from the site."),
                reason="missing_state",
            )
        if len(states) > 1 or not STATE_PATTERN.match(state):
            raise FlowError(
                _("Invalid state"), _("This link is not one the site started."), reason="invalid_state"
            )
        auth_request = AuthorizationRequest.objects.select_related("client").filter(state=state).first()
        if auth_request is None:
            raise FlowError(
                _("Unknown state"),
                _("This link is not one the site started. Start again from the site."),
                reason="unknown_state",
            )
        if auth_request.used_at is not None:
            raise FlowError(
                _("Link already used"),
                _("This authorization was already completed or cancelled. Start again from the site."),
                reason="replayed_state",
            )
        if auth_request.expires_at <= timezone.now():
            raise FlowError(
                _("Link expired"),
                _("This authorization took too long and expired. Start again from the site."),
                reason="expired_state",
            )
        binding = request.session.get(SESSION_BINDING_KEY)
        if auth_request.browser_binding and (
            not binding
            or not secrets.compare_digest(
                hashlib.sha256(binding.encode()).hexdigest(), auth_request.browser_binding
            )
        ):
            raise FlowError(
                _("Different browser"),
                _(
                    "This authorization was started in another "
                    "browser. Finish it in the browser where it started."
                ),
                reason="browser_mismatch",
            )
        return auth_request

    def consume(self, auth_request: AuthorizationRequest, **values: Any) -> None:
        """Mark the request used, exactly once; a second callback with the same state loses.

        Nothing is spent yet (the code is exchanged after this), and a conditional UPDATE that
        failed changed nothing: a busy SQLite file or a lost connection is retried.
        """
        now = timezone.now()
        won = _retry_busy_database(
            lambda: AuthorizationRequest.objects.filter(
                pk=auth_request.pk, used_at__isnull=True, expires_at__gt=now
            ).update(used_at=now, **values),
            "consuming an authorization request",
        )
        if not won:
            raise FlowError(
                _("Link already used"),
                _("This authorization was already completed. Start again from the site."),
                reason="replayed_state",
            )
        auth_request.used_at = now
        for name, value in values.items():
            setattr(auth_request, name, value)

    def record_failure(self, auth_request: AuthorizationRequest, outcome: str, error: str) -> None:
        AuthorizationRequest.objects.filter(pk=auth_request.pk).update(outcome=outcome, error=error[:2000])
        auth_request.outcome = outcome
        auth_request.error = error
        self.release_invitation_use(auth_request)

    def release_invitation_use(self, auth_request: AuthorizationRequest) -> None:
        """A flow that ends without a connection gives its invitation's use back."""
        if auth_request.holds_invitation_use:
            Invitation.objects.release_use(auth_request.pk)
            auth_request.holds_invitation_use = False

    @method_decorator(sensitive_variables())
    def complete(self, request: HttpRequest, auth_request: AuthorizationRequest) -> ConnectedCompany:
        client = auth_request.client
        params = request.GET
        error = params.get("error", "")
        if error:
            code = error if PRINTABLE.match(error) else "invalid_error"
            # Control characters (NUL above all) cannot be stored by every database.
            description = CONTROL_CHARACTERS.sub("", params.get("error_description", ""))[:300]
            outcome = (
                AuthorizationRequest.Outcome.DENIED
                if code == "access_denied"
                else AuthorizationRequest.Outcome.FAILED
            )
            self.consume(
                auth_request, outcome=outcome, error=f"{code}: {description}" if description else code
            )
            self.release_invitation_use(auth_request)
            if outcome == AuthorizationRequest.Outcome.DENIED:
                raise FlowError(
                    _("Connection cancelled"),
                    _("The connection to Lightspeed was declined, so nothing was connected."),
                    reason="access_denied",
                )
            raise FlowError(
                _("Lightspeed refused the connection"),
                _("Lightspeed answered with an error (%(code)s).") % {"code": code},
                reason="provider_error",
            )
        codes = params.getlist("code")
        code = codes[0] if len(codes) == 1 else ""
        if not code or not PRINTABLE.match(code):
            raise FlowError(
                _("Missing code"),
                _("Lightspeed's answer has no valid authorization code."),
                reason="missing_code",
            )
        provider = client.get_provider()
        context = {}
        for name in provider.callback_params:
            value = params.get(name, "")
            if not URL_PLACEHOLDER_VALUE.match(value):
                raise FlowError(
                    _("Invalid answer"),
                    _("Lightspeed's answer has no valid %(parameter)s.") % {"parameter": name},
                    reason=f"bad_{name}",
                )
            context[name] = value
        self.consume(auth_request)

        try:
            tokens = oauth.exchange_code(
                provider,
                url=client.token_endpoint(context),
                client_id=client.client_id,
                client_secret=client.client_secret,
                redirect_uri=client.redirect_uri,
                code=code,
                code_verifier=auth_request.code_verifier or None,
            )
            identities = oauth.identify_all(provider, tokens, client.environment, context)
        except (TokenEndpointError, IdentityError) as err:
            logger.warning("Connecting with API client %s failed: %s", client.slug, err.message)
            self.record_failure(auth_request, AuthorizationRequest.Outcome.FAILED, err.message)
            raise FlowError(
                _("Lightspeed could not complete the connection"),
                _(
                    "Lightspeed did not confirm the connection. Nothing was saved; "
                    "please try again in a moment."
                ),
                status=502,
                reason="exchange_failed",
            ) from None
        except ConfigurationError as err:
            logger.error("API client %s is misconfigured: %s", client.slug, err.message)
            self.record_failure(auth_request, AuthorizationRequest.Outcome.FAILED, err.message)
            raise FlowError(
                _("This connection is not set up correctly"),
                _("The site's Lightspeed connection is misconfigured; staff can see why in the admin."),
                status=500,
                reason="misconfigured",
            ) from None
        if len(identities) > 1:
            self.await_choice(request, auth_request, tokens, identities, context)
            raise ChoiceNeeded()
        return self.finish(request, auth_request, tokens, identities[0], context)

    @method_decorator(sensitive_variables())
    def await_choice(
        self,
        request: HttpRequest,
        auth_request: AuthorizationRequest,
        tokens: TokenSet,
        identities: list[Identity],
        context: dict[str, str],
    ) -> None:
        """Keep the tokens server-side, encrypted, until the merchant chooses a business."""
        companies = [
            {"id": identity.company_id, "name": identity.name, "extra": identity.extra}
            for identity in identities
        ]
        auth_request.pending_tokens = tokens.to_json()
        auth_request.pending_companies = {"companies": companies, "context": context}
        auth_request.choice_expires_at = timezone.now() + timedelta(seconds=app_settings.STATE_MAX_AGE)
        auth_request.outcome = AuthorizationRequest.Outcome.CHOOSING
        fields = ["pending_tokens", "pending_companies", "choice_expires_at", "outcome"]

        @sensitive_variables()  # its frame sees the request holding the tokens
        def write() -> None:
            with transaction.atomic():
                auth_request.save(update_fields=fields)

        _retry_busy_database(write, f"keeping the tokens of API client {auth_request.client.slug}")
        request.session[SESSION_CHOICE_KEY] = auth_request.pk
        logger.info(
            "API client %s: the authorizing user sees %s businesses; waiting for a choice",
            auth_request.client.slug,
            len(identities),
        )

    @method_decorator(sensitive_variables())
    def finish(
        self,
        request: HttpRequest,
        auth_request: AuthorizationRequest,
        tokens: TokenSet,
        identity: Identity,
        context: dict[str, str],
    ) -> ConnectedCompany:
        client = auth_request.client
        try:
            company, created = self.store(request, auth_request, tokens, identity, context)
        except DatabaseError:
            logger.exception("Could not store the company connected with API client %s", client.slug)
            self.record_failure(
                auth_request,
                AuthorizationRequest.Outcome.FAILED,
                "The connection could not be saved (database error).",
            )
            raise FlowError(
                _("The connection could not be saved"),
                _(
                    "Lightspeed confirmed the connection but the site could not save it. "
                    "Please try again in a moment."
                ),
                status=503,
                reason="store_failed",
            ) from None
        if identity.warning:
            logger.warning("Company %s (API client %s): %s", company.pk, client.slug, identity.warning)
        signals.send(signals.company_connected, company=company, created=created, request=request)
        return company

    @method_decorator(sensitive_variables())
    def store(
        self,
        request: HttpRequest,
        auth_request: AuthorizationRequest,
        tokens: TokenSet,
        identity: Identity,
        context: dict[str, str],
    ) -> tuple[ConnectedCompany, bool]:
        """Create or update the company (one row per client and company id) and log it."""
        client = auth_request.client
        details = {**context, **identity.extra}
        if identity.warning:
            details["identity_warning"] = identity.warning
        values = dict(
            name=identity.name[:255],
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token or "",
            token_type=tokens.token_type[:32],
            granted_scopes=tokens.scope[:1000],
            expires_at=tokens.expires_at,
            refresh_expires_at=tokens.refresh_expires_at,
            connected_by=auth_request.created_by,
        )
        if auth_request.reference:
            values["reference"] = auth_request.reference

        @sensitive_variables()  # its frame sees the tokens (``values``)
        def write() -> tuple[ConnectedCompany, bool]:
            for attempt in range(2):
                try:
                    with transaction.atomic():
                        # The first statement writes: on SQLite the transaction then takes the
                        # write lock at once, waiting for it (the database's timeout), instead of
                        # reading first and failing with "database is locked" when another process
                        # writes in between (Django's default, DEFERRED, transactions).
                        request_row = AuthorizationRequest.objects.filter(pk=auth_request.pk)
                        request_row.update(
                            outcome=AuthorizationRequest.Outcome.CONNECTED,
                            pending_tokens="",
                            pending_companies=[],
                            choice_expires_at=None,
                        )
                        company, created = ConnectedCompany.objects.store_grant(
                            client,
                            identity.company_id,
                            previous_ids=identity.previous_ids,
                            values=values,
                            details=details,
                        )
                        request_row.update(company=company)
                        TokenEvent.objects.create(
                            company=company,
                            kind=TokenEvent.Kind.CONNECTED,
                            actor=auth_request.created_by,
                            message="Connected." if created else "Connected again; new tokens stored.",
                            details={
                                "access_token": company.access_token_fingerprint,
                                "refresh_token": company.refresh_token_fingerprint,
                                "via_invitation": auth_request.via_invitation,
                                "authorization_request": auth_request.pk,
                            },
                        )
                    return company, created
                except IntegrityError:
                    # Two callbacks for the same new company at once: the other one created the row.
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        company, created = _retry_busy_database(
            write, f"storing the company connected with API client {client.slug}"
        )
        logger.info(
            "Company %s connected to API client %s (%s)",
            company.pk,
            client.slug,
            "new" if created else "again",
        )
        return company, created

    def connect_success(
        self, request: HttpRequest, company: ConnectedCompany, auth_request: AuthorizationRequest
    ) -> HttpResponse:
        """Redirect to the validated ``next`` or SUCCESS_URL, or render the success page."""
        next_url = auth_request.next_url
        if next_url and url_has_allowed_host_and_scheme(
            next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return HttpResponseRedirect(next_url)
        if app_settings.SUCCESS_URL:
            return HttpResponseRedirect(resolve_url(app_settings.SUCCESS_URL))
        # The success page at a clean address: no code or state in the address bar, and a reload
        # shows it again instead of "Link already used".
        request.session[SESSION_RESULT_KEY] = {"request": auth_request.pk}
        return HttpResponseRedirect(reverse("lightspeed_oauth:result"))

    def flow_failed(self, request, error, auth_request=None):
        if auth_request is not None and auth_request.used_at is not None:
            if app_settings.FAILURE_URL:
                url = resolve_url(app_settings.FAILURE_URL)
                separator = "&" if "?" in url else "?"
                return HttpResponseRedirect(f"{url}{separator}{urlencode({'reason': error.reason})}")
            # The state is spent: show the outcome at a clean address, which survives a reload.
            request.session[SESSION_RESULT_KEY] = {
                "request": auth_request.pk,
                "title": str(error.title),
                "message": str(error.message),
                "reason": error.reason,
                "status": error.status,
            }
            return HttpResponseRedirect(reverse("lightspeed_oauth:result"))
        return super().flow_failed(request, error, auth_request)


@method_decorator(never_cache, name="dispatch")
@method_decorator(csrf_protect, name="dispatch")
class ChooseBusinessView(CallbackView):
    """After the callback, a K-Series user who sees several businesses picks the one to connect.

    The tokens wait on the AuthorizationRequest, encrypted; the browser only holds the request's id
    in its session, and the request must still be bound to this browser.
    """

    template_name = "lightspeed_oauth/choose_business.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        try:
            auth_request = self.pending_request(request)
        except FlowError as err:
            return self.flow_failed(request, err)
        return self.render_choice(request, auth_request)

    @method_decorator(sensitive_variables())
    def post(self, request: HttpRequest) -> HttpResponse:
        auth_request = None
        try:
            auth_request = self.pending_request(request)
            chosen = request.POST.get("company", "")
            pending = auth_request.pending_companies
            match = next((c for c in pending["companies"] if c["id"] == chosen), None)
            if match is None:
                return self.render_choice(request, auth_request, error=True, status=400)
            identity = Identity(company_id=match["id"], name=match["name"], extra=match["extra"])
            tokens = TokenSet.from_json(auth_request.pending_tokens)
            company = self.claim_and_finish(request, auth_request, tokens, identity, pending["context"])
        except FlowError as err:
            return self.flow_failed(request, err, auth_request)
        request.session.pop(SESSION_CHOICE_KEY, None)
        return self.connect_success(request, company, auth_request)

    @method_decorator(sensitive_variables())
    def claim_and_finish(self, request, auth_request, tokens, identity, context) -> ConnectedCompany:
        # Single use: the first POST moves the request out of "choosing"; a second one loses.
        won = AuthorizationRequest.objects.filter(
            pk=auth_request.pk, outcome=AuthorizationRequest.Outcome.CHOOSING
        ).update(outcome=AuthorizationRequest.Outcome.PENDING)
        if not won:
            raise FlowError(
                _("Link already used"),
                _("This business was already chosen. Start again from the site."),
                reason="replayed_choice",
            )
        try:
            return self.finish(request, auth_request, tokens, identity, context)
        except FlowError:
            # Nothing was stored: the tokens still wait, so the merchant can choose again.
            AuthorizationRequest.objects.filter(pk=auth_request.pk).update(
                outcome=AuthorizationRequest.Outcome.CHOOSING
            )
            raise

    def pending_request(self, request: HttpRequest) -> AuthorizationRequest:
        pk = request.session.get(SESSION_CHOICE_KEY)
        auth_request = (
            AuthorizationRequest.objects.select_related("client")
            .filter(pk=pk, outcome=AuthorizationRequest.Outcome.CHOOSING)
            .first()
            if isinstance(pk, int)
            else None
        )
        if auth_request is None or not auth_request.pending_tokens:
            raise FlowError(
                _("Nothing to choose"),
                _("There is no connection waiting for a choice in this browser. Start again from the site."),
                reason="no_choice",
            )
        binding = request.session.get(SESSION_BINDING_KEY) or ""
        if not secrets.compare_digest(
            hashlib.sha256(binding.encode()).hexdigest(), auth_request.browser_binding
        ):
            raise FlowError(
                _("Different browser"),
                _("This connection was started in another browser. Finish it where it started."),
                reason="browser_mismatch",
            )
        if auth_request.choice_expires_at is None or auth_request.choice_expires_at <= timezone.now():
            AuthorizationRequest.objects.filter(pk=auth_request.pk).update(
                pending_tokens="",
                pending_companies=[],
                outcome=AuthorizationRequest.Outcome.FAILED,
                error="The business was not chosen in time; the tokens were discarded.",
            )
            self.release_invitation_use(auth_request)
            raise FlowError(
                _("Link expired"),
                _("The business was not chosen in time. Start again from the site."),
                reason="choice_expired",
            )
        return auth_request

    def render_choice(
        self, request: HttpRequest, auth_request: AuthorizationRequest, error: bool = False, status: int = 200
    ) -> HttpResponse:
        companies = [
            {
                "id": company["id"],
                "name": company["name"] or company["id"],
                "locations": [
                    location.get("blName") or location.get("blID")
                    for location in company["extra"].get("business_locations", [])
                ],
            }
            for company in auth_request.pending_companies["companies"]
        ]
        return TemplateResponse(
            request,
            self.template_name,
            {"client": auth_request.client, "companies": companies, "error": error},
            status=status,
        )


@method_decorator(never_cache, name="dispatch")
class ResultView(FlowViewMixin, View):
    """How this browser's last flow ended, at a clean address: the callback redirects here.

    Connected: the success page, with a link to the company in the admin for staff who may see it.
    Cancelled or failed: the error page with the same status as before, and "Try again" where the
    flow can be started again (the invitation page, or the connect link for staff).
    """

    success_template_name = "lightspeed_oauth/connected.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        result = request.session.get(SESSION_RESULT_KEY)
        auth_request = None
        if isinstance(result, dict) and isinstance(result.get("request"), int):
            auth_request = (
                AuthorizationRequest.objects.select_related("client", "company")
                .filter(pk=result["request"])
                .first()
            )
        if auth_request is None:
            return self.flow_failed(
                request,
                FlowError(
                    _("Nothing to show"),
                    _(
                        "This page shows how a connection made in this browser ended, and there is none. "
                        "Start again from the site."
                    ),
                    status=404,
                    reason="no_result",
                ),
            )
        if isinstance(result, dict) and "reason" in result:
            error = FlowError(result["title"], result["message"], int(result["status"]), result["reason"])
            response = self.flow_failed(request, error, auth_request)
            if (
                error.reason not in NOT_RETRYABLE
                and isinstance(response, TemplateResponse)
                and response.context_data is not None
            ):
                response.context_data["retry_url"] = self.retry_url(request, auth_request)
            return response
        company = auth_request.company
        if company is None:
            return self.flow_failed(
                request,
                FlowError(
                    _("Nothing to show"),
                    _("The company connected in this browser no longer exists."),
                    status=404,
                    reason="no_result",
                ),
            )
        return TemplateResponse(
            request,
            self.success_template_name,
            {
                "company": company,
                "client": auth_request.client,
                "admin_url": self.admin_url(request, company),
            },
        )

    def retry_url(self, request: HttpRequest, auth_request: AuthorizationRequest) -> str:
        """Where the same flow starts again, or "" when this browser cannot start it."""
        if auth_request.via_invitation:
            return request.session.get(SESSION_INVITATION_KEY) or ""
        if not auth_request.client.is_active:
            return ""
        url = reverse("lightspeed_oauth:connect", kwargs={"slug": auth_request.client.slug})
        params = {
            k: v for k, v in (("reference", auth_request.reference), ("next", auth_request.next_url)) if v
        }
        return f"{url}?{urlencode(params)}" if params else url

    def admin_url(self, request: HttpRequest, company: ConnectedCompany) -> str:
        user = getattr(request, "user", None)
        if not (user and user.is_staff and user.has_perm("lightspeed_oauth.view_connectedcompany")):
            return ""
        try:
            return reverse("admin:lightspeed_oauth_connectedcompany_change", args=[company.pk])
        except NoReverseMatch:
            return ""
