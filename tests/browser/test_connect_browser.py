"""What a user sees of SSH in Chromium: the home page's "Connect from your computer" panel
with their own commands, and the SSH keys page it links to (add a key, see its fingerprint
as ``ssh-keygen -l`` prints it, remove it; a pasted private key refused)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from localcloud.instances.sshd import local_user

from .conftest import SCREENSHOTS
from .test_signin_browser import sign_in_with_browser

pytestmark = pytest.mark.browser


def test_the_home_page_shows_bobs_own_commands_and_his_keys_page_works(page, hub, tmp_path):
    sign_in_with_browser(page, hub, "bob")
    page.wait_for_url(f"{hub.url}/hub/home")
    panel = page.locator("#snh-connect")
    panel.wait_for()
    setup = panel.locator("#snh-connect-setup").inner_text()
    assert setup.splitlines() == [
        "pip install synapse-notebook-hub",
        f"snh login --hub {hub.url}",
        f"snh ssh-config --ssh-user {local_user()} >> ~/.ssh/config",
    ]
    server_lines = panel.locator("pre[data-server-name='']").inner_text()
    assert server_lines.splitlines()[0] == "ssh snh-bob"
    assert "alice" not in panel.inner_text()
    assert "custom:snh-relay" in panel.inner_text()
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "home-connect-panel.png"), full_page=True)

    panel.get_by_role("link", name="SSH keys page").click()
    page.wait_for_url(f"{hub.url}/hub/ssh-keys")
    page.locator("#snh-ssh-keys-none").wait_for()

    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bob@laptop", "-f", str(key)],
        check=True,
    )
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{key}.pub"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[1]

    # a private key pasted by mistake is refused and not kept
    page.fill("#snh-ssh-key", Path(key).read_text())
    page.get_by_role("button", name="Add key").click()
    page.locator("#snh-ssh-keys-error", has_text="private key").wait_for()
    assert page.locator(".snh-ssh-key").count() == 0

    page.fill("#snh-ssh-key", Path(f"{key}.pub").read_text())
    page.get_by_role("button", name="Add key").click()
    row = page.locator(f".snh-ssh-key[data-fingerprint='{fingerprint}']")
    row.wait_for()
    assert "bob@laptop" in row.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "ssh-keys-page.png"), full_page=True)

    row.get_by_role("button", name="Remove").click()
    page.locator("#snh-ssh-keys-notice", has_text="Removed").wait_for()
    assert page.locator(".snh-ssh-key").count() == 0
