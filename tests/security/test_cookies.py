"""Trust suite: the hub's cookies behind the load balancer (finding 4 of the trust review).

The load balancer terminates HTTPS and forwards ``X-Forwarded-Proto: https``;
configurable-http-proxy appends its own hop, so the hub receives ``https,http`` and tornado
takes the last value. Judged by the request alone the hub would set its login and session
cookies without ``Secure``: a browser would then send them over plain HTTP too (a downgrade on
a hostile network hands them over). The test sends what the load balancer sends, through the
real proxy, and reads what the hub answers.
"""

from __future__ import annotations

import pytest
import requests

from tests.integration.harness import (
    free_port,
    hub_env,
    hub_test_config,
    start_hub,
    wait_until,
)

pytestmark = pytest.mark.integration

PUBLIC_URL = "https://hub.example.test"
LOAD_BALANCER = {  # what an AWS Application Load Balancer adds to a request it forwards
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443",
    "X-Forwarded-For": "203.0.113.7",
    "Host": "hub.example.test",
}


def test_cookies_are_secure_and_httponly_and_hsts_is_sent_behind_the_proxy(cloud, tmp_path):
    port = free_port()
    env = hub_env(
        cloud,
        tmp_path,
        SNH_PUBLIC_URL=PUBLIC_URL,
        SNH_BIND_URL=f"http://127.0.0.1:{port}",
        SNH_HUB_ID="trust-cookies",
        SNH_EXTRA_CONFIG=str(hub_test_config(tmp_path)),
    )
    hub = start_hub(env, tmp_path / "hub.log", wait=False)
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert hub.proc.poll() is None, hub.log()[-3000:]
            try:
                return requests.get(f"{base}/hub/health", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, 60, "the hub behind its proxy")
        answer = requests.get(
            f"{base}/hub/oauth_login", headers=LOAD_BALANCER, allow_redirects=False, timeout=30
        )
        assert answer.status_code == 302, answer.text
        cookies = answer.raw.headers.getlist("Set-Cookie")
        assert cookies, "the sign-in sets its state cookie"
        for cookie in cookies:
            attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
            assert "secure" in attributes and "httponly" in attributes, cookie
        hsts = answer.headers.get("Strict-Transport-Security", "")
        assert hsts.startswith("max-age=") and int(hsts.split("=")[1].split(";")[0]) >= 31536000
        # the redirect to Synapse carries the public callback, not the proxy's address
        assert (
            "redirect_uri=https%3A%2F%2Fhub.example.test%2Fhub%2Foauth_callback"
            in (answer.headers["Location"])
        )
    finally:
        hub.stop()
