"""Headless Chromium through the demo site: admin, sandbox consent page, invitations, refresh.

Runs the real testproject (``runserver``) in a subprocess on a free port with its own SQLite file,
set up by ``lightspeed_demo``, and drives it with Playwright. ``make browser-test`` runs these; they
need the ``browser`` extra and Chromium (``CHROMIUM``, default /usr/bin/chromium). Playwright's own
browser download is never used.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "testproject" / "manage.py"
ARTIFACTS = ROOT / ".ci-artifacts"
# The README's screenshots are rewritten only on request (``make screenshots``), so that a test run
# leaves the working tree alone; otherwise they go with the other artifacts.
SCREENSHOTS = (
    ROOT / "docs" / "screenshots" if os.environ.get("UPDATE_SCREENSHOTS") else ARTIFACTS / "screenshots"
)
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN_LIFETIME = 120
TIMEOUT_MS = 20_000


def _unavailable(reason: str) -> None:
    """Skip, unless the run must exercise the browser (``make browser-test`` sets the variable)."""
    if os.environ.get("LIGHTSPEED_BROWSER_REQUIRED"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The live demo site ------------------------------------------------------------------------------


class LiveSite:
    def __init__(self, base_url: str, env: dict[str, str]) -> None:
        self.base_url = base_url
        self.env = env

    def url(self, path: str) -> str:
        return self.base_url + path

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, str(MANAGE), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[LiveSite]:
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    workdir = tmp_path_factory.mktemp("live-site")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "DEBUG": "1",
        "DEMO_URL": base_url,
        "LIGHTSPEED_OAUTH_SANDBOX_URL": f"{base_url}/lightspeed-sandbox/",
        "LIGHTSPEED_OAUTH_SANDBOX_TOKEN_LIFETIME": str(TOKEN_LIFETIME),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("LIGHTSPEED_OAUTH_SITE_URL", None)
    live = LiveSite(base_url, env)
    live.manage("migrate", "--noinput", "-v", "0")
    live.manage("lightspeed_demo", "--base-url", base_url)

    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / "browser-test-server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, str(MANAGE), "runserver", f"127.0.0.1:{port}", "--noreload"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_serving(server, base_url, log_path)
            yield live
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_until_serving(server: subprocess.Popen, base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if server.poll() is not None:
            pytest.fail(f"runserver exited with {server.returncode}; see {log_path}", pytrace=False)
        try:
            with urllib.request.urlopen(base_url + "/", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"runserver did not answer within 30 s; see {log_path}", pytrace=False)
        time.sleep(0.2)


# The browser ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install -e '.[browser]').")
    if not (shutil.which(CHROMIUM) or os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set CHROMIUM).")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser, site, request):
    """Open pages in fresh contexts (no cookies shared); screenshot every open page on failure."""
    contexts = []
    failed_before = request.session.testsfailed

    def open_page():
        context = browser.new_context(base_url=site.base_url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context.new_page()

    yield open_page
    # The call phase has been reported by now: a new failure means this test failed.
    if request.session.testsfailed > failed_before:
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", request.node.name)
        for n, context in enumerate(contexts):
            for m, page in enumerate(context.pages):
                try:
                    page.screenshot(path=str(ARTIFACTS / f"{name}-{n}-{m}.png"), full_page=True)
                    (ARTIFACTS / f"{name}-{n}-{m}.html").write_text(page.content())
                except Exception as err:
                    print(f"Could not save a screenshot of {page.url}: {err}")
    for context in contexts:
        context.close()


@pytest.fixture
def staff_page(new_page):
    """A page logged in to the admin as the demo superuser."""
    page = new_page()
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    assert "/admin/login/" not in page.url
    return page


# Steps -------------------------------------------------------------------------------------------


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def open_api_client(page, slug: str) -> None:
    """Open the admin change page of the demo API client ``slug`` from the API clients list."""
    from django_lightspeed_oauth.providers import get_provider
    from django_lightspeed_oauth.sandbox.management.commands.lightspeed_demo import DEMO_CLIENTS

    provider = next(demo.provider for demo in DEMO_CLIENTS if demo.slug == slug)
    page.goto("/admin/lightspeed_oauth/apiclient/")
    page.get_by_role("link", name=f"Sandbox {get_provider(provider).name}", exact=True).click()
    expect(page.locator("#connect-company")).to_be_visible()
    expect(page.locator("input[name=slug]")).to_have_value(slug)


def consent(page, company: str, decision: str = "allow") -> None:
    """On the sandbox consent page: pick ``company`` and Allow or Deny."""
    page.wait_for_selector('input[name="company"]')
    assert "/lightspeed-sandbox/" in page.url
    page.locator("label", has_text=company).locator('input[name="company"]').check()
    page.click(f'button[name="decision"][value="{decision}"]')


def connect_from_admin(page, slug: str, company: str, shown_as: str = "") -> None:
    """Connect ``company`` (as the consent page names it; ``shown_as`` on the site, if different)."""
    open_api_client(page, slug)
    page.click("#connect-company")
    consent(page, company)
    expect(page.locator("h1")).to_have_text("Connected")
    expect(page.locator("body")).to_contain_text(shown_as or company)


def company_row(page, client_name_part: str, company: str):
    page.goto("/admin/lightspeed_oauth/connectedcompany/")
    row = page.locator("#result_list tbody tr", has_text=company).filter(has_text=client_name_part)
    expect(row).to_have_count(1)
    return row


def expires_in_text(row) -> str:
    return row.locator("td.field-expires_in").inner_text().strip()


# Tests -----------------------------------------------------------------------------------------


def test_staff_connects_a_company_from_the_admin(site, staff_page):
    page = staff_page
    page.set_viewport_size({"width": 1440, "height": 900})  # wide enough for every column
    open_api_client(page, "sandbox-k-series")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "admin-api-client.png"), full_page=True)

    page.click("#connect-company")
    consent(page, "Harbour Bistro")
    expect(page.locator("h1")).to_have_text("Connected")
    expect(page.locator("body")).to_contain_text("Harbour Bistro")

    row = company_row(page, "K-Series (V1)", "Harbour Bistro")
    badge = row.locator("span.ls-status.ls-status-active")
    expect(badge).to_have_text("Active")
    assert expires_in_text(row).startswith("in ")


def test_merchant_connects_with_an_invitation_link(site, staff_page, new_page):
    page = staff_page
    open_api_client(page, "sandbox-vendors")
    page.click("#create-invitation")
    page.fill("input[name=reference]", "crm-4711")
    page.click("#create-invitation-submit")
    link = page.locator("input#invitation-url").input_value()
    assert link.startswith(site.url("/lightspeed/invite/"))

    merchant = new_page()  # a fresh context: no login on the site
    merchant.goto(link)
    merchant.click("text=Continue to Lightspeed")
    consent(merchant, "Corner Café")
    expect(merchant.locator("h1")).to_have_text("Connected")
    expect(merchant.locator("body")).to_contain_text("Corner Café")

    row = company_row(page, "Vendors", "Corner Café")
    expect(row.locator("span.ls-status-active")).to_have_text("Active")
    page.goto("/admin/lightspeed_oauth/connectedcompany/?q=crm-4711")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)

    # The invitation was single use: the same merchant, or anyone else, gets a clear page.
    for browser in (merchant, new_page()):
        response = browser.goto(link)
        assert response is not None and response.status == 410
        expect(browser.locator("h1")).to_have_text("This invitation has already been used")
        expect(browser.locator("body")).not_to_contain_text("Continue to Lightspeed")
    page.goto("/admin/lightspeed_oauth/invitation/?q=crm-4711")
    row = page.locator("#result_list tbody tr", has_text="crm-4711")
    expect(row.locator(".field-uses_display")).to_have_text("1 / 1")
    expect(row.locator(".field-status_badge")).to_have_text("Used")


def test_a_connect_link_only_asks_and_the_button_starts_the_flow(site, staff_page):
    page = staff_page
    # As if another site had linked here: nothing starts until the staff member clicks.
    page.goto("/lightspeed/connect/sandbox-o-series/?reference=from-a-link&next=/admin/")
    expect(page.locator("h1")).to_have_text("Connect a Lightspeed company")
    expect(page.locator("#connect-reference")).to_have_text("from-a-link")
    assert "/lightspeed/connect/" in page.url
    page.click("#connect-continue")
    consent(page, "Harbour Bistro", decision="deny")
    expect(page.locator("h1")).to_have_text("Connection cancelled")


def test_a_k_series_user_with_two_businesses_chooses_one(site, staff_page):
    page = staff_page
    open_api_client(page, "sandbox-k-series-v2")
    page.click("#connect-company")
    consent(page, "Corner Café")  # this demo user sees Corner Café and Northside Deli

    expect(page.locator("h1")).to_have_text("Choose the business to connect")
    assert page.url.endswith("/lightspeed/callback/choose/")  # no code or state in the address
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "choose-business.png"), full_page=True)
    page.locator("label", has_text="Northside Deli").locator('input[name="company"]').check()
    page.click("text=Connect this business")

    expect(page.locator("h1")).to_have_text("Connected")
    expect(page.locator("body")).to_contain_text("Northside Deli")
    row = company_row(page, "K-Series (V2)", "Northside Deli")
    expect(row.locator("span.ls-status-active")).to_have_text("Active")
    page.goto("/admin/lightspeed_oauth/connectedcompany/")
    expect(
        page.locator("#result_list tbody tr", has_text="Corner Café").filter(has_text="K-Series (V2)")
    ).to_have_count(0)


def test_denied_consent_shows_the_cancelled_page(site, staff_page):
    page = staff_page
    open_api_client(page, "sandbox-o-series")
    page.click("#connect-company")
    consent(page, "Northside Deli", decision="deny")
    expect(page.locator("h1")).to_have_text("Connection cancelled")
    assert "/lightspeed/callback/" in page.url
    page.goto("/admin/lightspeed_oauth/connectedcompany/")
    expect(page.locator("#result_list tbody tr", has_text="Restaurant O-Series")).to_have_count(0)


def test_refresh_now_action_renews_the_token(site, staff_page):
    page = staff_page
    # Retail X-Series: the token URL is the store's own, so the refresh must find it again.
    # The retailer's name comes from the sandbox's /api/2.0/retailer answer, as at Lightspeed.
    connect_from_admin(page, "sandbox-retail-x", "Northside Deli")
    # Age the token as if it had been issued long ago, so a renewed expiry shows in the list.
    site.manage(
        "shell",
        "-c",
        "from datetime import timedelta; from django.utils import timezone; "
        "from django_lightspeed_oauth.models import ConnectedCompany; "
        "ConnectedCompany.objects.filter(client__slug='sandbox-retail-x')"
        ".update(expires_at=timezone.now() - timedelta(seconds=30))",
    )
    row = company_row(page, "Retail X-Series", "Northside Deli")
    before = expires_in_text(row)
    assert before.startswith("expired"), before

    row.locator("input.action-select").check()
    page.select_option("select[name=action]", "refresh_now")
    page.click("button[name=index]")
    success = page.locator("ul.messagelist li.success")
    expect(success).to_contain_text("refreshed")

    row = page.locator("#result_list tbody tr", has_text="Northside Deli").filter(has_text="Retail X-Series")
    after = expires_in_text(row)
    assert after != before
    assert after.startswith("in "), after
    expect(row.locator("span.ls-status-active")).to_have_text("Active")
    # After the earlier tests this list shows several companies and the action's message; without
    # the navigation sidebar every column fits.
    page.set_viewport_size({"width": 1440, "height": 800})
    if page.locator("#toggle-nav-sidebar").is_visible():
        page.click("#toggle-nav-sidebar")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "admin-companies.png"), full_page=True)


def test_company_page_buttons_refresh_disconnect_and_invite_again(site, staff_page, new_page):
    page = staff_page
    connect_from_admin(page, "sandbox-retail-r", "Harbour Bistro")
    # Reloading the success page shows it again (the callback redirected to a clean address).
    assert "code=" not in page.url and "state=" not in page.url
    page.reload()
    expect(page.locator("h1")).to_have_text("Connected")
    expect(page.locator("body")).to_contain_text("Harbour Bistro")

    row = company_row(page, "Retail R-Series", "Harbour Bistro")
    row.locator("th a, td a").first.click()
    expect(page.locator("#company-refresh")).to_be_visible()
    page.click("#company-refresh")
    expect(page.locator("ul.messagelist li.success")).to_contain_text("refreshed")
    expect(page.locator("ul.messagelist li.success")).to_contain_text("Retail R-Series")
    expect(page.locator("#company-invitation")).to_have_count(0)  # nothing to re-authorize yet

    page.click("#company-disconnect")
    page.click("#confirm-disconnect")
    expect(page.locator("ul.messagelist li.success")).to_contain_text("disconnected")
    expect(page.locator("#company-refresh")).to_have_count(0)

    page.click("#company-invitation")
    page.click("#company-invitation-submit")
    link = page.locator("input#invitation-url").input_value()
    assert link.startswith(site.url("/lightspeed/invite/"))
    expect(page.locator("#copy-invitation-url")).to_be_visible()
    expect(page.locator("#invitation-expires")).to_contain_text("UTC")

    # The merchant's browser asks for French: the invitation page, the consent and the success page.
    context = page.context.browser.new_context(
        base_url=site.base_url, locale="fr-FR", viewport={"width": 1280, "height": 900}
    )
    try:
        merchant = context.new_page()
        merchant.goto(link)
        expect(merchant.locator("html")).to_have_attribute("lang", "fr")
        expect(merchant.locator("h1")).to_have_text("Connectez votre compte Lightspeed")
        small = merchant.locator("main small").inner_text()
        assert "UTC" in small and ".." not in small, small
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        merchant.screenshot(path=str(SCREENSHOTS / "invitation-fr.png"), full_page=True)
        merchant.click("text=Continuer vers Lightspeed")
        consent(merchant, "Harbour Bistro")
        expect(merchant.locator("h1")).to_have_text("Connecté")
        merchant.reload()
        expect(merchant.locator("h1")).to_have_text("Connecté")
    finally:
        context.close()

    row = company_row(page, "Retail R-Series", "Harbour Bistro")
    expect(row.locator("span.ls-status-active")).to_have_text("Active")


def test_overview_page_shows_every_api_client(site, staff_page):
    page = staff_page
    page.goto("/admin/")
    page.locator("a", has_text="Overview").first.click()
    expect(page.locator("#overview-clients")).to_be_visible()
    expect(page.locator("#overview-chart svg")).to_have_count(1)
    for name in ("K-Series", "O-Series", "Retail X-Series", "Vendors"):
        expect(page.locator("#overview-clients tbody")).to_contain_text(name)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "admin-overview.png"), full_page=True)


@pytest.mark.parametrize(
    "model", ["apiclient", "connectedcompany", "authorizationrequest", "invitation", "tokenevent"]
)
def test_admin_lists_fit_a_1280_pixel_screen(site, staff_page, model):
    page = staff_page
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"/admin/lightspeed_oauth/{model}/")
    expect(page.locator("#result_list")).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the {model} list scrolls sideways by {overflow} px at 1280 px"
    headers = [h.strip().lower() for h in page.locator("#result_list thead th").all_inner_texts()]
    assert all(h for h in headers[1:]), headers  # no column hidden or left without a heading
    assert len([h for h in headers if h]) == len({h for h in headers if h}), headers
