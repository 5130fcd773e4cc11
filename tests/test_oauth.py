"""oauth.py against a real local HTTP server: no secret reaches any log, urllib3's included."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from requests.adapters import HTTPAdapter

from django_lightspeed_oauth import oauth
from django_lightspeed_oauth.providers import TokenRequest, get_provider


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


# How a token request is sent ----------------------------------------------------------------------


class RecordingHandler(TokenHandler):
    seen: list[dict[str, str]] = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        RecordingHandler.seen.append(dict(self.headers))
        super().do_POST()


@pytest.fixture
def fresh_session():
    """This thread's token session is made again for the test, and dropped after it."""
    oauth._local.__dict__.pop("session", None)
    yield
    oauth._local.__dict__.pop("session", None)


@pytest.fixture
def recording_server():
    RecordingHandler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RecordingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def netrc_for_local(tmp_path, monkeypatch):
    """A ~/.netrc (by NETRC) with credentials for 127.0.0.1, which requests would send."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password not-for-lightspeed\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))


def test_a_token_request_takes_no_credentials_from_netrc(recording_server, fresh_session, netrc_for_local):
    request = TokenRequest(url=recording_server + "/oauth/token", data={"grant_type": "refresh_token"})
    response = oauth._post(request, (5, 5))
    assert response.status_code == 200
    response.close()
    [headers] = RecordingHandler.seen
    assert "Authorization" not in headers
    assert headers["User-Agent"] == oauth.USER_AGENT
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_a_token_request_goes_through_the_proxy_of_the_environment(fresh_session, monkeypatch, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    sent = {}

    def send(adapter, request, **kwargs):
        sent.update(kwargs, url=request.url, headers=dict(request.headers))
        raise requests.ConnectionError("stop here")

    monkeypatch.setattr(HTTPAdapter, "send", send)
    request = TokenRequest(
        url="https://token.example.com/oauth/token", params={"a": "b"}, headers={"Accept": "x/y"}
    )
    with pytest.raises(requests.ConnectionError):
        oauth._post(request, (3, 7))
    assert sent["proxies"]["https"] == "http://proxy.internal:3128"
    assert sent["verify"] == str(bundle) and sent["cert"] is None
    assert sent["stream"] is True and sent["timeout"] == (3, 7)
    assert sent["url"] == "https://token.example.com/oauth/token?a=b"
    assert sent["headers"]["Accept"] == "x/y"


def test_a_session_given_hooks_of_its_own_sends_as_usual(recording_server, fresh_session):
    heard = []
    oauth.http_session().hooks["response"].append(
        lambda response, **kwargs: heard.append(response.status_code)
    )
    response = oauth._post(TokenRequest(url=recording_server + "/oauth/token", data={"x": "y"}), (5, 5))
    response.close()
    assert heard == [200]


def test_a_request_header_set_to_none_is_left_out_as_session_post_does(recording_server, fresh_session):
    request = TokenRequest(
        url=recording_server + "/oauth/token", data={"x": "y"}, headers={"User-Agent": None}
    )
    response = oauth._post(request, (5, 5))
    response.close()
    assert response.elapsed.total_seconds() > 0
    [headers] = RecordingHandler.seen
    assert headers.get("User-Agent") != oauth.USER_AGENT  # ours left out (urllib3 may add its own)


def test_a_traced_session_send_is_used_and_netrc_still_unread(
    recording_server, fresh_session, netrc_for_local, monkeypatch
):
    original = requests.Session.send
    traced = []

    def send(self, request, **kwargs):
        traced.append(request.url)
        return original(self, request, **kwargs)

    send.__wrapped__ = original  # what functools.wraps and wrapt leave on a tracing wrapper
    monkeypatch.setattr(requests.Session, "send", send)
    response = oauth._post(TokenRequest(url=recording_server + "/oauth/token", data={"x": "y"}), (5, 5))
    response.close()
    assert traced == [recording_server + "/oauth/token"]
    [headers] = RecordingHandler.seen
    assert "Authorization" not in headers
