"""A real local OAuth2 token server with single-use, rotating refresh tokens, for tests and benchmarks.

Unlike :class:`~django_lightspeed_oauth.testing.FakeTokenEndpoint` (which plugs into ``responses``
inside one process), this is a real HTTP server on 127.0.0.1, so several OS processes, threads or
machines can refresh against it at once and it can count what really reached it.

It behaves like Lightspeed's token endpoints where it matters for safety (the token families of
:mod:`django_lightspeed_oauth.testing.families`, shared with the fake):

- every refresh rotates the refresh token; a refresh token is good for ONE refresh;
- a refresh token used a second time revokes its whole family (every token descended from the same
  grant) and is answered ``400 {"error": "invalid_grant"}``, as is any later use of the family;
- a refresh token it never issued is accepted once as the start of a new family (so companies made
  by factories work), unless ``accept_unknown`` is off, in which case it must be :meth:`seeded
  <TokenServer.seed>` first;
- ``latency`` seconds of sleep before each answer; ``fail_status`` (e.g. 503) answers every token
  request with that status and a ``Retry-After``, using no token; ``hang`` makes token requests wait without
  answering and WITHOUT using their refresh token (like a request lost on the way), until ``hang``
  is switched off, when they are dropped unanswered.

Pair it with an API client of the ``custom`` provider::

    with TokenServer(latency=0.05, expires_in=3600) as server:
        client = make_client(provider="custom", authorize_url=server.url + "/authorize",
                             token_url=server.url + "/oauth/token",
                             provider_options={"token_auth": "body", "token_params": "form"})
        ...
        assert server.stats()["refreshes"] == 1

HTTP interface (for other processes):

- ``POST /oauth/token``: grant_type ``refresh_token`` or ``authorization_code`` (any code, once);
  parameters in the form body, a JSON body or the query string; client credentials are not checked.
- ``GET /stats``: counters as JSON (``refreshes``, ``invalid_grants``, ``codes``, ``requests``,
  ``hung``, ``dropped``, ``in_flight``, ``max_in_flight``, ``families``, ``revoked_families``).
- ``GET /family?fingerprint=sha256:...``: the family of a refresh token, by fingerprint: its current
  token's fingerprint, how often it was refreshed, whether it is revoked.
- ``POST /seed``: form or JSON ``refresh_token=...`` starts a family with that token.
- ``POST /control``: JSON ``{"hang": bool, "latency_ms": int, "expires_in": int, "fail_status": int}``
  switches behaviour (``fail_status`` 0 or null: answer normally again).
- ``POST /reset``: forgets every family and counter.

Command line (prints ``http://127.0.0.1:PORT`` on its first line once it listens)::

    python -m django_lightspeed_oauth.testing.tokenserver --port 0 --latency-ms 50

Tokens are never written to logs: requests are logged (at DEBUG) by method and path only, and tokens
appear only as fingerprints in ``/stats`` and ``/family``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

from .families import Family, InvalidGrant, TokenFamilies, fingerprint

__all__ = ["TokenServer", "fingerprint", "main"]

logger = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default (5) refuses connections under a burst of workers

    token_server: TokenServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as with a real server
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: _Server
    server_version = "LightspeedTokenServer/1"

    def log_message(self, format: str, *args: Any) -> None:
        # The request line may hold a token in its query string: never log it.
        logger.debug("%s %s", self.command, urlsplit(self.path).path)

    # Plumbing ---------------------------------------------------------------------------------

    def _params(self) -> dict[str, str]:
        parts = urlsplit(self.path)
        params = dict(parse_qsl(parts.query))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        if body:
            if "json" in (self.headers.get("Content-Type") or ""):
                try:
                    loaded = json.loads(body)
                except ValueError:
                    loaded = {}
                if isinstance(loaded, dict):
                    params.update(loaded)
            else:
                params.update(parse_qsl(body))
        return params

    def _send(
        self, status: int, payload: Any, headers: dict[str, str] | None = None, drip: float = 0.0
    ) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if drip <= 0:
            self.wfile.write(body)
            return
        # A slow proxy or an overloaded server: the answer comes in small pieces over `drip` s.
        pieces = [body[i : i + 8] for i in range(0, len(body), 8)]
        for piece in pieces:
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(drip / len(pieces))

    # Routes -----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        owner = self.server.token_server
        parts = urlsplit(self.path)
        if parts.path == "/stats":
            self._send(200, owner.stats())
        elif parts.path == "/family":
            wanted = dict(parse_qsl(parts.query)).get("fingerprint", "")
            info = owner.family(wanted)
            self._send(200 if info else 404, info or {"error": "not_found"})
        else:
            self._send(404, {"error": "not_found"})

    def do_POST(self) -> None:
        owner = self.server.token_server
        path = urlsplit(self.path).path
        params = self._params()
        if path == "/oauth/token":
            answer = owner._token(params)
            if answer is None:  # hung, then dropped: close without a word
                self.close_connection = True
                return
            status, payload, *headers = answer
            self._send(status, payload, headers[0] if headers else None, drip=owner.drip)
        elif path == "/seed":
            token = str(params.get("refresh_token") or "")
            if not token:
                self._send(400, {"error": "invalid_request"})
            else:
                owner.seed(token)
                self._send(200, {"seeded": fingerprint(token)})
        elif path == "/control":
            if "hang" in params:
                owner.hang = params["hang"] in (True, "1", "true", "True", 1)
            if "latency_ms" in params:
                owner.latency = float(params["latency_ms"]) / 1000
            if "expires_in" in params:
                owner.expires_in = int(params["expires_in"])
            if "drip" in params:
                owner.drip = float(params["drip"])
            if "fail_status" in params:
                owner.fail_status = int(params["fail_status"] or 0) or None
            self._send(200, owner.stats())
        elif path == "/reset":
            owner.reset()
            self._send(200, owner.stats())
        else:
            self._send(404, {"error": "not_found"})


class TokenServer:
    """A rotating-refresh-token OAuth2 server on 127.0.0.1, in a background thread.

    Thread-safe: every change of state happens under one lock; the latency sleep and the hang
    happen outside it, so requests overlap as they would on a real server.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        expires_in: int = 3600,
        accept_unknown: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.latency = latency
        self.expires_in = expires_in
        self._accept_unknown = accept_unknown
        #: when set (429, 500, 503...), token requests get this status, a Retry-After of
        #: ``retry_after`` seconds, and use no token
        self.fail_status: int | None = None
        self.retry_after = 120
        #: seconds over which each token answer's body is sent, a few bytes at a time (the tokens
        #: are rotated at once, before the first byte goes out)
        self.drip = 0.0
        self._lock = threading.Lock()
        self._unhung = threading.Condition(self._lock)
        self._hang = False
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # Life cycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self._httpd is None:
            raise RuntimeError("The token server is not running.")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    @property
    def token_url(self) -> str:
        return self.url + "/oauth/token"

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        httpd = _Server((self.host, self.port), _Handler)
        httpd.token_server = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="token-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.hang = False  # let hung handlers go
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # Switches and state -------------------------------------------------------------------------

    @property
    def hang(self) -> bool:
        return self._hang

    @hang.setter
    def hang(self, value: bool) -> None:
        with self._lock:
            self._hang = bool(value)
            if not self._hang:
                self._unhung.notify_all()

    @property
    def accept_unknown(self) -> bool:
        """Whether a refresh token never issued nor seeded starts a family (else: invalid_grant)."""
        return self._families.accept_unknown

    @accept_unknown.setter
    def accept_unknown(self, value: bool) -> None:
        with self._lock:
            self._accept_unknown = self._families.accept_unknown = bool(value)

    def reset(self) -> None:
        """Forget every family and counter."""
        with self._lock:
            self._families = TokenFamilies(prefix="ts", accept_unknown=self._accept_unknown)
            self._codes: set[str] = set()
            self.refreshes = 0
            self.invalid_grants = 0
            self.codes = 0
            self.requests = 0
            self.hung = 0
            self.dropped = 0
            self.failures = 0
            self.in_flight = 0
            self.max_in_flight = 0
            #: (arrived, answered, what) for every token request, times from time.time(); what is
            #: "refreshed", "code", "dropped" (hung, then let go) or the OAuth error code
            self.history: list[tuple[float, float, str]] = []

    def seed(self, refresh_token: str) -> None:
        """Start a family with ``refresh_token`` (a token this server did not issue)."""
        with self._lock:
            self._families.seed(refresh_token)

    def stats(self) -> dict[str, int]:
        with self._lock:
            families = self._families.families()
            return {
                "refreshes": self.refreshes,
                "invalid_grants": self.invalid_grants,
                "codes": self.codes,
                "requests": self.requests,
                "hung": self.hung,
                "dropped": self.dropped,
                "failures": self.failures,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "families": len(families),
                "revoked_families": sum(1 for f in families if f.revoked),
            }

    def family(self, token_fingerprint: str) -> dict[str, Any] | None:
        """The family of the refresh token with this fingerprint (any generation), or None."""
        with self._lock:
            fam = self._families.by_fingerprint(token_fingerprint)
            if fam is None:
                return None
            return {
                "id": fam.id,
                "current": fingerprint(fam.current),
                "refreshes": fam.refreshes,
                "revoked": fam.revoked,
            }

    def current_refresh_token(self, token: str) -> str | None:
        """The newest refresh token of ``token``'s family (in-process use only)."""
        with self._lock:
            fam = self._families.get(token)
            return fam.current if fam else None

    # The token endpoint -------------------------------------------------------------------------

    def _issue(self, fam: Family) -> dict[str, Any]:
        access, refresh = self._families.issue(fam)
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": "",
        }

    def _token(self, params: dict[str, str]) -> tuple[Any, ...] | None:
        """Answer one token request: (status, JSON payload[, headers]), or None to drop it."""
        arrived = time.time()
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            with self._lock:
                if self._hang:
                    self.hung += 1
                    self._unhung.wait_for(lambda: not self._hang)
                    self.dropped += 1
                    self.history.append((arrived, time.time(), "dropped"))
                    return None  # the refresh token was not used
            if self.latency > 0:
                time.sleep(self.latency)
            grant = params.get("grant_type", "")
            with self._lock:
                if self.fail_status:
                    self.failures += 1
                    self.history.append((arrived, time.time(), str(self.fail_status)))
                    return (
                        self.fail_status,
                        {"error": "temporarily_unavailable"},
                        {"Retry-After": str(self.retry_after)},
                    )
                answer = self._answer(grant, params)
                what = {200: "code" if grant == "authorization_code" else "refreshed"}.get(
                    answer[0], answer[1].get("error", "error")
                )
                self.history.append((arrived, time.time(), what))
                return answer
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, grant: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        # Called with the lock held.
        if grant == "refresh_token":
            return self._refresh(str(params.get("refresh_token") or ""))
        if grant == "authorization_code":
            code = str(params.get("code") or "")
            if not code or code in self._codes:
                self.invalid_grants += 1
                return 400, {"error": "invalid_grant", "error_description": "unknown or used code"}
            self._codes.add(code)
            self.codes += 1
            return 200, self._issue(self._families.start())
        return 400, {"error": "unsupported_grant_type"}

    def _refresh(self, token: str) -> tuple[int, dict[str, Any]]:
        # Called with the lock held.
        if not token:
            return 400, {"error": "invalid_request", "error_description": "no refresh_token"}
        try:
            fam = self._families.refresh(token)
        except InvalidGrant as refused:
            self.invalid_grants += 1
            if refused.reused:
                logger.warning("Refresh token %s reused: family revoked", fingerprint(token))
            return 400, {"error": "invalid_grant", "error_description": refused.description}
        self.refreshes += 1
        return 200, self._issue(fam)


def main(argv: list[str] | None = None) -> int:
    """Run a token server until SIGTERM / SIGINT; print its URL on the first line of stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m django_lightspeed_oauth.testing.tokenserver", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (default)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--expires-in", type=int, default=3600)
    parser.add_argument(
        "--strict", action="store_true", help="refuse refresh tokens that were neither issued nor seeded"
    )
    args = parser.parse_args(argv)
    server = TokenServer(
        host=args.host,
        port=args.port,
        latency=args.latency_ms / 1000,
        expires_in=args.expires_in,
        accept_unknown=not args.strict,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with server:
        print(server.url, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
