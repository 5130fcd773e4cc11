"""The one place that speaks HTTP to authorization servers: code exchange, refresh, identity.

Rules kept here: every request has a timeout; only a failure to *connect* is retried (a POST that
may have reached a token endpoint is never sent twice, or a single-use refresh token could be spent
without us seeing the new one); no token, secret or code reaches a log line or an exception message.
"""

from __future__ import annotations

import email.utils
import http.cookiejar
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, cast
from urllib.parse import quote, quote_plus, urlsplit

import requests
from django.views.decorators.debug import sensitive_variables
from requests.adapters import HTTPAdapter
from requests.sessions import merge_setting
from requests.structures import CaseInsensitiveDict
from urllib3.util.retry import Retry

from . import __version__
from .conf import app_settings
from .exceptions import (
    IdentityError,
    InvalidClient,
    InvalidGrant,
    TokenEndpointError,
    TransientTokenError,
)
from .providers import Identity, Provider, TokenRequest, TokenSet

__all__ = ["USER_AGENT", "exchange_code", "http_session", "identify", "identify_all", "refresh_tokens"]

logger = logging.getLogger(__name__)

USER_AGENT = f"django-lightspeed-oauth/{__version__} (+python-requests/{requests.__version__})"

#: OAuth error codes that mean "this grant is gone for good: the merchant must connect again".
REVOKED_GRANT_ERRORS = frozenset({"invalid_grant", "invalid_token"})
#: Error codes that refuse the API client itself (a wrong secret, a disabled client): Keycloak
#: (K-Series V2) answers unauthorized_client for some of those. Not one merchant's grant ending.
CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})

_local = threading.local()

_GRANT_VALUE = re.compile(
    r"((?:^|[?&\s])(?:code|refresh_token|access_token|client_secret|code_verifier)=)[^&\s\"']+"
)


class RedactGrantParameters(logging.Filter):
    """Blank grant values in urllib3's debug lines, which print the request path with its query.

    K-Series V1 sends the code or refresh token as URL query parameters; a site that turns on
    debug logging for urllib3 would otherwise write them to its logs. Installed on the
    ``urllib3.connectionpool`` logger by the app's ``ready()``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _GRANT_VALUE.sub(r"\1[redacted]", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


class _Session(requests.Session):
    """A session that reads proxy and CA settings from the environment once, not per request.

    requests scans ``os.environ`` twice for every request; with tens of thousands of refreshes
    that is a tenth of the CPU a refresh costs. The answer depends only on the scheme unless
    NO_PROXY is set, in which case it is kept per host (a bounded number of them).
    """

    _MAX_HOSTS = 1024

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[str, dict] = {}
        self._per_host = bool(os.environ.get("no_proxy") or os.environ.get("NO_PROXY"))

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        # ``stream`` does not come from the environment: a token request's stream=True must not
        # turn the cache off (it did, and every refresh scanned the environment again).
        if proxies or verify is not None or cert is not None:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}" if self._per_host else parts.scheme
        settings: Any = self._environment.get(key)
        if settings is None:
            if len(self._environment) >= self._MAX_HOSTS:
                self._environment.clear()
            settings = super().merge_environment_settings(url, {}, None, None, None)
            self._environment[key] = settings
        return {
            **settings,
            "proxies": dict(settings["proxies"]),
            "stream": self.stream if stream is None else stream,
        }


def http_session() -> requests.Session:
    """This thread's session (requests sessions are not safe to share across threads)."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _Session()
        # Retry only connection failures: nothing was sent, so nothing can have been spent.
        retry = Retry(
            total=2,
            connect=2,
            read=0,
            status=0,
            other=0,
            redirect=0,
            backoff_factor=0.2,
            allowed_methods=None,
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers["User-Agent"] = USER_AGENT
        # One session serves every client and company of this thread: a cookie one token endpoint
        # sets must never travel with another company's request.
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        _local.session = session
    return session


def _timeout() -> tuple[float, float]:
    return app_settings.HTTP_TIMEOUT


def _where(url: str) -> str:
    # Host and path only: a K-Series V1 token URL carries the code or refresh token in its query.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
                text = text.replace(form, "[redacted]")
    return text[:200]


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)  # ValueError on a value that is not a date
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, parsed.timestamp() - time.time())


@sensitive_variables()
def post_token(
    request: TokenRequest, provider: Provider, secrets: tuple[str, ...], *, refresh: bool = False
) -> TokenSet:
    """Send one token request and read the answer, raising a classified TokenEndpointError.

    A refresh waits long for its answer (``REFRESH_READ_TIMEOUT`` per read, the whole answer within
    ``REFRESH_MAX_DURATION``; the caller's lease is renewed meanwhile): the answer may hold the only
    copy of a rotated refresh token. A lost answer raises with ``maybe_spent``.
    """
    where = _where(request.url)
    started = time.monotonic()
    timeout = _timeout()
    if refresh:
        timeout = (timeout[0], app_settings.REFRESH_READ_TIMEOUT)
        deadline = started + app_settings.REFRESH_MAX_DURATION
    else:
        deadline = started + timeout[1]
    try:
        response = _post(request, timeout)
    except requests.ConnectionError as err:
        # `from None`: the underlying message may quote the URL, and with it a query-string secret.
        sent = not isinstance(err, requests.ConnectTimeout) and _sent_before_failing(err)
        kind = (
            "timed out while connecting"
            if isinstance(err, requests.ConnectTimeout)
            else "could not be reached"
        )
        if sent:
            kind = "dropped the connection before answering"
        logger.warning("Token endpoint %s %s (%s)", where, kind, type(err).__name__)
        raise TransientTokenError(f"The token endpoint {kind}.", maybe_spent=sent) from None
    except requests.Timeout:
        logger.warning("Token endpoint %s did not answer in time", where)
        raise TransientTokenError("The token endpoint did not answer in time.", maybe_spent=True) from None
    except requests.RequestException as err:
        logger.warning("Token endpoint %s request failed (%s)", where, type(err).__name__)
        raise TransientTokenError("The request to the token endpoint failed.", maybe_spent=True) from None
    body = _read_body(response, where, deadline)
    elapsed_ms = (time.monotonic() - started) * 1000
    logger.info("Token endpoint %s answered %s in %.0f ms", where, response.status_code, elapsed_ms)
    return _read_token_response(response, body, provider, secrets, refresh=refresh)


def _no_netrc(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An auth that adds nothing: given to requests, it stops it reading ``~/.netrc``."""
    return request


def _post(request: TokenRequest, timeout: tuple[float, float]) -> requests.Response:
    """POST a token request with this thread's session; no redirect is followed, the body is
    left to be read (``stream``), ``~/.netrc`` is never read.

    The session's own adapters, headers and proxy / CA settings apply; its cookie jar (which takes
    no cookies) is left out: the request is prepared here and handed to the adapter, which saves a
    fifth of the CPU ``Session.post`` spends. A session given auth, params, hooks or cookies of its
    own, or a ``Session.send`` wrapped by tracing (OpenTelemetry, ddtrace), is used as usual.
    """
    session = http_session()
    if (
        session.auth
        or session.params
        or any(session.hooks.values())
        or len(session.cookies)
        or hasattr(requests.Session.send, "__wrapped__")
    ):
        return session.post(
            request.url,
            params=request.params or None,
            data=request.data,
            json=request.json,
            headers=request.headers,
            auth=None if session.auth else _no_netrc,
            timeout=timeout,
            allow_redirects=False,
            stream=True,
        )
    prepared = requests.PreparedRequest()
    prepared.prepare(
        method="POST",
        url=request.url,
        # As Session.post merges them: the request's win, and one set to None is left out.
        headers=merge_setting(request.headers, session.headers, dict_class=CaseInsensitiveDict),
        data=request.data,
        json=request.json,
        params=request.params or None,
    )
    url = cast(str, prepared.url)
    settings = session.merge_environment_settings(url, {}, True, None, None)
    started = time.perf_counter()
    response = session.get_adapter(url).send(
        prepared,
        stream=True,
        timeout=timeout,
        verify=True if settings["verify"] is None else settings["verify"],
        cert=settings["cert"],
        proxies=settings["proxies"],
    )
    response.elapsed = timedelta(seconds=time.perf_counter() - started)
    return response


#: A token answer is a few kilobytes; more than this is not one.
MAX_TOKEN_ANSWER = 1024 * 1024


def _read_body(response: requests.Response, where: str, deadline: float) -> bytes:
    """The whole body, read before ``deadline`` however slowly it comes, or a maybe-spent error."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(8192):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_TOKEN_ANSWER:
                raise TransientTokenError(
                    "The token endpoint's answer is too large to be a token answer.",
                    status_code=response.status_code,
                )
            if time.monotonic() > deadline:
                logger.error("Token endpoint %s was still sending its answer at the deadline", where)
                raise TransientTokenError(
                    "The token endpoint's answer did not arrive in time.",
                    status_code=response.status_code,
                    maybe_spent=True,
                )
    except requests.RequestException as err:
        logger.warning("Token endpoint %s broke off its answer (%s)", where, type(err).__name__)
        raise TransientTokenError(
            "The token endpoint broke off its answer.", status_code=response.status_code, maybe_spent=True
        ) from None
    finally:
        response.close()
    return b"".join(chunks)


def _sent_before_failing(err: requests.ConnectionError) -> bool:
    # A reset or a closed connection after the request went out; urllib3 names those
    # ProtocolError. A refused or unresolvable connection is a NewConnectionError.
    text = type(getattr(err.args[0], "reason", err.args[0]) if err.args else err).__name__
    return "Protocol" in text or "RemoteDisconnected" in text


@sensitive_variables()
def _read_token_response(
    response: requests.Response, body: bytes, provider: Provider, secrets: tuple[str, ...], *, refresh: bool
) -> TokenSet:
    status = response.status_code
    try:
        payload: Any = json.loads(body) if body else None
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested beyond reason
        payload = None
    if 200 <= status < 300:
        # A page that is not JSON (a proxy's maintenance page) is a passing failure; JSON from the
        # token endpoint that we cannot use may still have rotated the refresh token: on a
        # refresh, that outcome is uncertain.
        if payload is None:
            # A body that says it is JSON, or looks like it, came from the token endpoint itself:
            # it may have rotated the token even though we cannot read the answer.
            looks_json = "json" in _content_type(response) or body.lstrip()[:1] in (b"{", b"[")
            raise TransientTokenError(
                f"The token endpoint answered {status} with something that is not readable JSON "
                f"({_content_type(response)}).",
                status_code=status,
                maybe_spent=refresh and looks_json,
            )
        try:
            return provider.parse_token_response(payload)
        except TransientTokenError as err:
            err.status_code = status
            err.maybe_spent = refresh
            raise
        except Exception as err:
            # A provider (a custom one, say) choking on an odd answer: the app's own error, whose
            # message names no value of the answer.
            logger.exception("Reading the token endpoint's %s answer failed", status)
            raise TransientTokenError(
                f"The token endpoint's {status} answer could not be read ({type(err).__name__}).",
                status_code=status,
                maybe_spent=refresh,
            ) from None
    error = ""
    description = ""
    if isinstance(payload, Mapping):
        error = _redact(str(payload.get("error") or ""), secrets)[:64]
        description = _redact(str(payload.get("error_description") or ""), secrets)
    detail = f" ({error}: {description})" if description else (f" ({error})" if error else "")
    if status == 429 or status >= 500:
        raise TransientTokenError(
            f"The token endpoint answered {status}{detail or ' ' + _content_type(response)}.",
            status_code=status,
            error=error,
            retry_after=_retry_after(response),
        )
    # A bare 401 (no error code) is not evidence against the client: it may concern this grant
    # only, so it stays a failure of this company rather than stopping every company of the client.
    if error in CLIENT_ERRORS:
        raise InvalidClient(
            f"The token endpoint refused the API client's credentials{detail}: check the client "
            "id and secret.",
            status_code=status,
            error=error or "invalid_client",
        )
    if error in REVOKED_GRANT_ERRORS or "revoked" in description.lower():
        raise InvalidGrant(f"The token endpoint refused the grant{detail}.", status_code=status, error=error)
    if payload is None:
        raise TransientTokenError(
            f"The token endpoint answered {status} with {_content_type(response)}.",
            status_code=status,
        )
    raise TokenEndpointError(
        f"The token endpoint answered {status}{detail}.", status_code=status, error=error
    )


def _content_type(response: requests.Response) -> str:
    return (response.headers.get("Content-Type") or "no content type").split(";")[0]


@sensitive_variables()
def exchange_code(
    provider: Provider,
    *,
    url: str,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    code: str,
    code_verifier: str | None,
) -> TokenSet:
    """Trade an authorization code for tokens."""
    grant = provider.code_grant(code=code, redirect_uri=redirect_uri, code_verifier=code_verifier)
    request = provider.token_request(url, client_id=client_id, client_secret=client_secret, grant=grant)
    return post_token(request, provider, (client_secret, code, code_verifier or ""))


@sensitive_variables()
def refresh_tokens(
    provider: Provider,
    *,
    url: str,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    scopes: str = "",
) -> TokenSet:
    """Trade a refresh token for new tokens (sent once, never retried after it went out)."""
    grant = provider.refresh_grant(refresh_token=refresh_token, scopes=scopes)
    request = provider.token_request(url, client_id=client_id, client_secret=client_secret, grant=grant)
    return post_token(request, provider, (client_secret, refresh_token), refresh=True)


@sensitive_variables()
def identify(provider: Provider, tokens: TokenSet, environment: str, context: Mapping[str, str]) -> Identity:
    """The one company that granted ``tokens``; IdentityError when they cover several."""
    identities = identify_all(provider, tokens, environment, context)
    if len(identities) != 1:
        raise IdentityError(f"The tokens cover {len(identities)} companies; choose one.")
    return identities[0]


@sensitive_variables()
def identify_all(
    provider: Provider, tokens: TokenSet, environment: str, context: Mapping[str, str]
) -> list[Identity]:
    """Every company ``tokens`` were granted for, reading each page of the identity endpoint."""
    url = provider.identity_endpoint(environment, context, tokens)
    payloads: list[Any] = []
    while url:
        payload = _get_identity_page(provider, url, tokens)
        if payload is None:
            break  # the provider reads the identity without an answer
        payloads.append(payload)
        url = provider.next_identity_page(url, payload)
    return provider.read_identities(tokens, context, payloads)


@sensitive_variables()
def _get_identity_page(provider: Provider, url: str, tokens: TokenSet) -> Any:
    where = _where(url)
    try:
        response = http_session().get(
            url,
            headers={"Authorization": f"Bearer {tokens.access_token}", "Accept": "application/json"},
            timeout=_timeout(),
            allow_redirects=False,
        )
    except requests.RequestException as err:
        logger.warning("Identity endpoint %s failed (%s)", where, type(err).__name__)
        raise IdentityError("The identity endpoint could not be reached.") from None
    logger.info("Identity endpoint %s answered %s", where, response.status_code)
    if response.status_code in provider.identity_fallback_statuses:
        logger.warning(
            "Identity endpoint %s refused the token (%s); reading the identity without it",
            where,
            response.status_code,
        )
        return None
    if response.status_code != 200:
        raise IdentityError(
            f"The identity endpoint answered {response.status_code}.",
            status_code=response.status_code,
        )
    try:
        return response.json()
    except (ValueError, RecursionError):
        raise IdentityError(f"The identity endpoint answered {_content_type(response)}, not JSON.") from None
