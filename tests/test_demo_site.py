"""The demo site's settings follow the URL ``make demo`` serves it at, also in commands from another shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "testproject" / "manage.py"
PRINT = (
    "import json; from django.conf import settings; "
    "print(json.dumps({k: settings.LIGHTSPEED_OAUTH.get(k) for k in ('SANDBOX_URL', 'SITE_URL')}))"
)


def demo_settings(**env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("LIGHTSPEED_OAUTH_", "DEMO_URL"))}
    environment.update(DJANGO_SETTINGS_MODULE="testproject.settings", DEBUG="1", **env)
    result = subprocess.run(
        [sys.executable, str(MANAGE), "shell", "-c", PRINT],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_demo_url_sets_the_sandbox_and_the_links():
    assert demo_settings(DEMO_URL="http://127.0.0.1:8123/") == {
        "SANDBOX_URL": "http://127.0.0.1:8123/lightspeed-sandbox/",
        "SITE_URL": "http://127.0.0.1:8123",
    }


def test_an_explicit_setting_still_wins_over_demo_url():
    values = demo_settings(
        DEMO_URL="http://127.0.0.1:8123", LIGHTSPEED_OAUTH_SANDBOX_URL="http://sandbox.example/x/"
    )
    assert values == {"SANDBOX_URL": "http://sandbox.example/x/", "SITE_URL": "http://127.0.0.1:8123"}


def test_without_demo_url_the_settings_read_what_make_demo_recorded(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "testproject"))
    monkeypatch.delenv("DEMO_URL", raising=False)
    from testproject import settings as demo

    recorded = tmp_path / ".demo-url"
    monkeypatch.setattr(demo, "DEMO_URL_FILE", recorded)
    assert demo.demo_url() == "http://127.0.0.1:8000"
    recorded.write_text("http://127.0.0.1:8001\n")
    assert demo.demo_url() == "http://127.0.0.1:8001"
    monkeypatch.setenv("DEMO_URL", "http://localhost:9000")
    assert demo.demo_url() == "http://localhost:9000"


def test_make_demo_records_the_url_of_its_port():
    result = subprocess.run(
        ["make", "-n", "demo", "DEMO_PORT=8123"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "echo 'http://127.0.0.1:8123' > testproject/.demo-url" in result.stdout
    assert "lightspeed_demo --base-url http://127.0.0.1:8123" in result.stdout
    assert "runserver 127.0.0.1:8123" in result.stdout
