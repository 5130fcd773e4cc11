"""oauth.py against a real local HTTP server: no secret reaches any log, urllib3's included."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from django_lightspeed_oauth import oauth
from django_lightspeed_oauth.providers import get_provider


class TokenHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.dumps(
            {"access_token": "NEW-ACCESS-abc", "refresh_token": "NEW-REFRESH-abc", "expires_in": 3600}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), TokenHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_query_string_grants_are_redacted_from_urllib3_debug_logs(server, caplog):
    caplog.set_level(logging.DEBUG)
    tokens = oauth.refresh_tokens(
        get_provider("k-series"),
        url=f"{server}/oauth/token",
        client_id="devp-1",
        client_secret="SECRET-xyz",
        refresh_token="OLD-REFRESH-xyz",
    )
    assert tokens.access_token == "NEW-ACCESS-abc"
    urllib3_lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("/oauth/token" in line for line in urllib3_lines)  # urllib3 did log the request
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("OLD-REFRESH-xyz", "SECRET-xyz", "NEW-ACCESS-abc", "NEW-REFRESH-abc"):
        assert secret not in everything
    assert "refresh_token=[redacted]" in everything


def test_a_refused_connection_is_transient_and_names_no_secret():
    from django_lightspeed_oauth.exceptions import TransientTokenError

    with pytest.raises(TransientTokenError) as caught:
        oauth.refresh_tokens(
            get_provider("k-series"),
            url="http://127.0.0.1:9/oauth/token",
            client_id="c",
            client_secret="SECRET-xyz",
            refresh_token="OLD-REFRESH-xyz",
        )
    assert "could not be reached" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_proxy_settings_from_the_environment_are_still_honoured(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = oauth._Session()
    first = session.merge_environment_settings("https://a.example.com/x", {}, None, None, None)
    again = session.merge_environment_settings("https://b.example.com/y", {}, None, None, None)
    assert first["proxies"]["https"] == "http://proxy.internal:3128" == again["proxies"]["https"]
    first["proxies"]["https"] = "changed"  # a caller's change does not leak into the cache
    assert (
        session.merge_environment_settings("https://c.example.com/", {}, None, None, None)["proxies"]["https"]
        == "http://proxy.internal:3128"
    )


def test_a_streamed_token_request_reads_the_environment_once(monkeypatch):
    # Token requests are sent with stream=True: the environment must still be read only once.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = oauth._Session()
    first = session.merge_environment_settings("https://a.example.com/x", {}, True, None, None)
    monkeypatch.setenv("HTTPS_PROXY", "http://other.internal:3128")
    again = session.merge_environment_settings("https://b.example.com/y", {}, True, None, None)
    plain = session.merge_environment_settings("https://b.example.com/y", {}, None, None, None)
    assert first["stream"] is True and again["stream"] is True and plain["stream"] is False
    assert again["proxies"]["https"] == "http://proxy.internal:3128"  # from the cache


def test_no_proxy_is_honoured_per_host(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example.com")
    session = oauth._Session()
    bypassed = session.merge_environment_settings("https://internal.example.com/", {}, None, None, None)
    proxied = session.merge_environment_settings("https://api.lightspeedapp.com/", {}, None, None, None)
    assert "https" not in bypassed["proxies"]
    assert proxied["proxies"]["https"] == "http://proxy.internal:3128"
