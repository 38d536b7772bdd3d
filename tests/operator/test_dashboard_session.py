"""The dashboard's login session: revoked on logout, expiring, and logins throttled per client address.

Real HTTP against a real registry.  Requests from a second client address come from 127.0.0.2 (the
whole 127/8 block is loopback on Linux), so the throttle sees two different callers.
"""

from __future__ import annotations

import time

import httpx

from tests.support.live_server import LiveServer


def _client(server: LiveServer, address: str = "127.0.0.1") -> httpx.Client:
    return httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address=address))


def _login(client: httpx.Client, token: str) -> httpx.Response:
    return client.post("/dashboard/login", data={"token": token, "next": "/dashboard/fleet"})


def test_a_cookie_copied_before_logout_is_refused_after_it(live_server: LiveServer) -> None:
    with _client(live_server) as browser:
        r = _login(browser, live_server.admin_token)
        assert r.status_code == 303
        cookie = browser.cookies["ota_dash"]
        set_cookie = r.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "max-age=" in set_cookie
        assert "secure" not in set_cookie  # plain http here; over https it is Secure (test_tls.py)
        assert browser.get("/dashboard/fleet").status_code == 200
        assert browser.post("/dashboard/logout").status_code == 303
    with httpx.Client(base_url=live_server.url, cookies={"ota_dash": cookie}) as thief:
        r = thief.get("/dashboard/fleet")
        assert r.status_code == 303 and "/dashboard/login" in r.headers["location"]
        assert thief.get("/dashboard/live.json").status_code == 401


def test_logging_out_one_browser_leaves_another_logged_in(live_server: LiveServer) -> None:
    with _client(live_server) as one, _client(live_server) as two:
        assert _login(one, live_server.admin_token).status_code == 303
        assert _login(two, live_server.admin_token).status_code == 303
        one.post("/dashboard/logout")
        assert one.get("/dashboard/fleet").status_code == 303
        assert two.get("/dashboard/fleet").status_code == 200


def test_a_session_expires_after_its_lifetime(live_server_factory) -> None:
    server: LiveServer = live_server_factory(dashboard_session_s=1)
    with _client(server) as browser:
        r = _login(browser, server.admin_token)
        assert "max-age=1" in r.headers["set-cookie"].lower()
        cookie = browser.cookies["ota_dash"]
    with httpx.Client(base_url=server.url, cookies={"ota_dash": cookie}) as late:
        assert late.get("/dashboard/fleet").status_code == 200
        time.sleep(1.5)
        assert late.get("/dashboard/fleet").status_code == 303


def test_failed_logins_are_throttled_per_address_with_retry_after(live_server: LiveServer) -> None:
    with _client(live_server, "127.0.0.2") as guesser, _client(live_server, "127.0.0.1") as operator:
        for i in range(5):
            r = _login(guesser, f"guess-{i}")
            assert r.status_code == 401, (i, r.status_code)
        r = _login(guesser, "guess-5")
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "too many" in r.text.lower()
        r = _login(guesser, live_server.admin_token)  # even the right token waits: a guess must not be confirmed
        assert r.status_code == 429 and "ota_dash" not in r.headers.get("set-cookie", "")
        # another address is not throttled, and its success does not clear the guesser's count
        assert _login(operator, live_server.admin_token).status_code == 303
        assert _login(guesser, "guess-6").status_code == 429
