"""The console over plain HTTP: forgery refused, the headers and cookies
that keep the page and its secrets safe, and KeyAdmin's refusals told as
sentences."""

from __future__ import annotations

import html
import logging
import socket
from pathlib import Path

import httpx
import pytest

from clients import Reason
from console import CSRF_FIELD, ConsoleServer
from tests.console.conftest import (
    Stack,
    csrf_cookie,
    running_console,
)
from tests.harness import running_server
from tests.tls_files import Authority

CREATE_FORM = {"name": "CRM sync", "description": "", "scopes": ["users.read"]}


async def signed_in_form(stack: Stack, token: str) -> tuple[str, dict[str, str]]:
    """The CSRF token the console gave the admin's browser, and the headers to post with."""
    async with stack.http(token) as http:
        page = await http.get("/keys")
    csrf = page.headers["set-cookie"].split(";")[0].removeprefix("apikeys_csrf=")
    return csrf, {**csrf_cookie(csrf), "Authorization": f"Bearer {token}"}


async def key_list(console: ConsoleServer, token: str) -> httpx.Response:
    """The list page as an admin with ``token`` gets it."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=console.url, headers=headers) as http:
        return await http.get("/keys")


async def test_a_form_without_the_sessions_token_changes_nothing(stack: Stack) -> None:
    token = stack.token()
    csrf, headers = await signed_in_form(stack, token)
    async with stack.http() as http:
        missing = await http.post("/keys", data=CREATE_FORM, headers=headers)
        wrong = await http.post(
            "/keys", data={**CREATE_FORM, CSRF_FIELD: csrf[:-2] + "xx"}, headers=headers
        )
        no_cookie = await http.post(
            "/keys",
            data={**CREATE_FORM, CSRF_FIELD: csrf},
            headers={"Authorization": f"Bearer {token}"},
        )
        cross_site = await http.post(
            "/keys",
            data={**CREATE_FORM, CSRF_FIELD: csrf},
            headers={
                **headers,
                "Origin": "https://attacker.example",
                "Sec-Fetch-Site": "cross-site",
            },
        )
    for refused in (missing, wrong, no_cookie, cross_site):
        assert refused.status_code == 403
        assert "Nothing was changed" in refused.text
    async with stack.admin() as admin:
        assert (await admin.list_keys()).total_size == 0


async def test_a_key_made_through_the_console_checks_until_its_delete_returns(stack: Stack) -> None:
    csrf, headers = await signed_in_form(stack, stack.token())
    async with stack.http() as http:
        created = await http.post("/keys", data={**CREATE_FORM, CSRF_FIELD: csrf}, headers=headers)
        assert created.status_code == 200
        secret = created.text.split('id="secret" class="secret-value">')[1].split("<")[0]
        decision = await stack.check(secret, "GET", "/api/v4/users")
        assert decision.allowed
        deleted = await http.post(
            f"/keys/{decision.key_id}/delete", data={CSRF_FIELD: csrf}, headers=headers
        )
    assert deleted.status_code == 303
    assert deleted.headers["location"] == "/keys?notice=deleted"
    assert (await stack.check(secret, "GET", "/api/v4/users")).reason is Reason.KEY_NOT_FOUND


async def test_pages_forbid_framing_inline_script_and_storing(stack: Stack) -> None:
    async with stack.http(stack.token()) as http:
        page = await http.get("/keys")
        script = await http.get("/static/console.js")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe" not in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text and " style=" not in page.text
    assert script.status_code == 200
    assert script.headers["content-security-policy"] == policy


async def test_cookies_are_http_only_same_site_strict_and_secure_behind_the_proxy(
    stack: Stack,
) -> None:
    async with stack.http(stack.token()) as http:
        page = await http.get("/keys")
    [cookie] = page.headers.get_list("set-cookie")
    assert cookie.startswith("apikeys_csrf=")
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie


async def test_dev_cookies_carry_the_session_token_but_not_secure_on_loopback(
    dev_stack: Stack,
) -> None:
    async with dev_stack.http() as http:
        page = await http.get("/keys")
    cookies = {c.split("=")[0]: c for c in page.headers.get_list("set-cookie")}
    assert set(cookies) == {"apikeys_csrf", "apikeys_session"}
    for cookie in cookies.values():
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Secure" not in cookie


async def test_a_dev_console_answers_loopback_host_names_only(dev_stack: Stack) -> None:
    async with dev_stack.http() as http:
        rebound = await http.get("/keys", headers={"Host": "attacker.example"})
        local = await http.get("/keys", headers={"Host": f"localhost:{dev_stack.console.port}"})
    assert rebound.status_code == 400
    assert local.status_code == 200


async def test_the_secret_is_only_in_the_body_of_the_post_that_made_or_showed_it(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    csrf, headers = await signed_in_form(stack, stack.token())
    async with stack.http() as http:
        created = await http.post("/keys", data={**CREATE_FORM, CSRF_FIELD: csrf}, headers=headers)
        secret = created.text.split('id="secret" class="secret-value">')[1].split("<")[0]
        key_id = (await stack.check(secret, "GET", "/api/v4/users")).key_id
        shown = await http.post(f"/keys/{key_id}/reveal", data={CSRF_FIELD: csrf}, headers=headers)
        key_page = await http.get(f"/keys/{key_id}", headers=headers)
        listing = await http.get("/keys", params={"q": "crm"}, headers=headers)
    assert secret.startswith("vsk_")
    assert secret in shown.text
    for response in (created, shown):
        assert response.headers["cache-control"] == "no-store"
        assert "location" not in response.headers
        assert all(secret not in cookie for cookie in response.headers.get_list("set-cookie"))
        assert secret not in str(response.url)
    assert secret not in key_page.text and secret not in listing.text
    assert secret not in caplog.text
    console_log = "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.partition(".")[0] in ("console", "uvicorn")
    )
    assert f"POST /keys/{key_id}/reveal 200" in console_log
    assert "GET /keys 200" in console_log
    assert "crm" not in console_log, [
        (r.name, r.getMessage()) for r in caplog.records if "crm" in r.getMessage()
    ]


async def test_the_51st_key_is_refused_with_what_to_do_about_it(stack: Stack) -> None:
    async with stack.admin() as admin:
        for number in range(50):
            await admin.create_key(f"key {number}", "", ["users.read"])
    csrf, headers = await signed_in_form(stack, stack.token())
    async with stack.http() as http:
        refused = await http.post("/keys", data={**CREATE_FORM, CSRF_FIELD: csrf}, headers=headers)
        still_working = await http.get("/keys", headers=headers)
    assert refused.status_code == 409
    assert "This contact center already has 50 keys, the most it can have." in refused.text
    assert "Delete a key it no longer needs" in refused.text
    assert "Traceback" not in refused.text
    assert still_working.status_code == 200
    assert still_working.text.count("<tr data-key-id=") == 50


async def test_a_missing_permission_is_told_and_nothing_is_created(stack: Stack) -> None:
    viewer = stack.token(sag=True, permissions=["api_keys.view"])
    csrf, headers = await signed_in_form(stack, viewer)
    async with stack.http() as http:
        refused = await http.post("/keys", data={**CREATE_FORM, CSRF_FIELD: csrf}, headers=headers)
        listing = await http.get("/keys", headers=headers)
    assert refused.status_code == 403
    assert "You don't have permission to create API keys." in html.unescape(refused.text)
    assert "Add key" not in listing.text
    async with stack.admin() as admin:
        assert (await admin.list_keys()).total_size == 0


async def test_an_unknown_key_a_bad_sign_in_and_no_sign_in_are_pages_not_tracebacks(
    stack: Stack,
) -> None:
    async with stack.http(stack.token()) as http:
        unknown = await http.get("/keys/key_000000000000000000000000")
    async with stack.http("not-a-token") as http:
        bad = await http.get("/keys")
    async with stack.http() as http:
        nobody = await http.get("/keys")
    assert unknown.status_code == 404
    assert "This key does not exist; it may have been deleted." in unknown.text
    assert bad.status_code == 401
    assert nobody.status_code == 401
    assert "Sign in" in bad.text and "Sign in" in nobody.text


async def test_an_unreachable_server_is_a_page_that_says_so(tmp_path: Path) -> None:
    async with running_server(tmp_path / "var") as harness:
        token = harness.token(contact_center="cc-dev")
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        # Bound but not listening: every connection to it is refused.
        address = f"127.0.0.1:{reserved.getsockname()[1]}"
        async with running_console(harness, ["--server", address]) as console:
            page = await key_list(console, token)
    assert page.status_code == 503
    assert "cannot be reached right now" in page.text


async def test_the_console_reaches_keyadmin_over_tls_with_the_client_settings(
    tmp_path: Path,
) -> None:
    ca = Authority.create(tmp_path / "pki")
    server = ca.issue("server", client=False)
    tls = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    async with running_server(tmp_path / "var", args=tls) as harness:
        token = harness.token(contact_center="cc-dev")
        async with running_console(harness, ["--ca-cert", str(ca.cert)]) as console:
            page = await key_list(console, token)
        async with running_console(harness) as plaintext:
            refused = await key_list(plaintext, token)
    assert page.status_code == 200
    assert "This contact center has no API keys yet." in page.text
    assert refused.status_code == 503


async def test_a_key_pasted_into_search_leaves_the_address_at_once(stack: Stack) -> None:
    async with stack.admin() as admin:
        _, secret = await admin.create_key("CRM sync", "", ["users.read"])
    async with stack.http(stack.token()) as http:
        pasted = await http.get("/keys", params={"q": secret})
        landed = await http.get(pasted.headers["location"])
    assert pasted.status_code == 303
    assert secret not in pasted.headers["location"]
    assert "That was an API key, so it was not searched for" in landed.text
    assert secret not in landed.text


async def test_the_access_log_keeps_a_path_percent_encoded(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="console")
    async with stack.http(stack.token()) as http:
        page = await http.get("/keys/forged%0Aline")
    assert page.status_code == 404
    assert "GET /keys/forged%0Aline 404 " in caplog.text
    assert not [record for record in caplog.records if "\n" in record.getMessage()]


async def test_the_key_page_shows_state_expiry_and_allowed_networks(stack: Stack) -> None:
    csrf, headers = await signed_in_form(stack, stack.token())
    async with stack.http() as http:
        created = await http.post("/keys", data={**CREATE_FORM, CSRF_FIELD: csrf}, headers=headers)
        secret = created.text.split('id="secret" class="secret-value">')[1].split("<")[0]
        key_id = (await stack.check(secret, "GET", "/api/v4/users")).key_id
        key_page = await http.get(f"/keys/{key_id}", headers=headers)
    assert '<dt>State</dt><dd class="state">Active</dd>' in key_page.text
    assert "<dt>Expires</dt><dd>Never</dd>" in key_page.text
    assert "<dt>Allowed from</dt><dd>Any address</dd>" in key_page.text
