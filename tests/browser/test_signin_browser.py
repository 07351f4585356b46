"""Sign-in as a person does it: headless Chromium (Debian's, driven by Playwright) clicks
through the hub's login page and the Synapse stand-in's form."""

from __future__ import annotations

import pytest

from tests.integration.harness import Hub

from .conftest import SCREENSHOTS

pytestmark = pytest.mark.browser


def sign_in_with_browser(page, hub: Hub, username: str) -> None:
    page.goto(f"{hub.url}/")
    page.get_by_text("Sign in with Synapse").click()
    page.fill("#username", username)
    page.click("#allow")


def test_alice_signs_in_and_lands_on_home(page, hub):
    sign_in_with_browser(page, hub, "alice")
    page.wait_for_url(f"{hub.url}/hub/home")
    assert page.locator("text=alice").first.is_visible()
    assert page.locator("a[href='/hub/admin']").count() >= 1  # admin link for an admin
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "signin-alice-home.png"), full_page=True)


def test_mallory_sees_the_team_page(page, hub):
    sign_in_with_browser(page, hub, "mallory")
    refusal = page.locator("#synapse-team-refusal")
    refusal.wait_for()
    links = refusal.locator("a")
    hrefs = {links.nth(i).get_attribute("href") for i in range(links.count())}
    assert "https://www.synapse.org/#!Team:3500001" in hrefs
    assert "https://www.synapse.org/#!Team:3500002" in hrefs
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "signin-mallory-refused.png"), full_page=True)
