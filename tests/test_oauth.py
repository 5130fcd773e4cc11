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
    def do_POST(self):  # noqa: N802
        body = json.dumps({"access_token": "NEW-ACCESS-abc", "refresh_token": "NEW-REFRESH-abc",
                           "expires_in": 3600}).encode()
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
    tokens = oauth.refresh_tokens(get_provider("k-series"), url=f"{server}/oauth/token",
                                  client_id="devp-1", client_secret="SECRET-xyz",
                                  refresh_token="OLD-REFRESH-xyz")
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
        oauth.refresh_tokens(get_provider("k-series"), url="http://127.0.0.1:9/oauth/token",
                             client_id="c", client_secret="SECRET-xyz",
                             refresh_token="OLD-REFRESH-xyz")
    assert "could not be reached" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
