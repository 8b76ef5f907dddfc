"""The API keys page in a real browser: what an admin does with a key from
its creation to its deletion, on a desktop and on a phone, and what an admin
who may only view keys is offered."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, Dialog, Locator, Page, expect

from clients import Reason
from tests.console.conftest import (
    DESKTOP,
    PHONE,
    SCREENSHOTS,
    Stack,
    new_context,
    screenshots_wanted,
)
from tests.harness import ALL_PERMISSIONS

VIEWPORTS = [pytest.param(DESKTOP, id="desktop"), pytest.param(PHONE, id="phone")]


def scope(page: Page, name: str) -> Locator:
    return page.locator(f'input[name="scopes"][value="{name}"]')


async def screenshot(page: Page, name: str, viewport: dict[str, int]) -> None:
    if screenshots_wanted() and viewport is DESKTOP:
        await page.screenshot(path=SCREENSHOTS / name, full_page=True)


@pytest.mark.parametrize("viewport", VIEWPORTS)
async def test_an_admin_adds_copies_finds_edits_shows_and_deletes_a_key(
    stack: Stack, browser: Browser, viewport: dict[str, int]
) -> None:
    async with stack.admin() as admin:
        await admin.create_key("Billing export", "monthly balance report", ["billing.balance.read"])
        await admin.create_key(
            "Wallboard", "queue sizes on the office screen", ["routing.queues.read"]
        )
    context = await new_context(browser, viewport, token=stack.token())
    page = await context.new_page()
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))

    await page.goto(f"{stack.url}/keys")
    await page.get_by_role("link", name="Add key").click()
    await expect(page.get_by_role("heading", name="Add key")).to_be_visible()
    await expect(page.get_by_text("Scope selection tips")).to_be_visible()
    await page.get_by_label("Name").fill("CRM sync")
    await page.get_by_label("Description").fill("nightly export to the CRM")
    await scope(page, "reporting.cdrs.read").check()
    await scope(page, "campaigns.manage").check()
    await screenshot(page, "console-add-key.png", viewport)
    await page.get_by_role("button", name="Generate key").click()

    secret = (await page.locator("#secret").text_content() or "").strip()
    assert secret.startswith("vsk_")
    await expect(page.get_by_text("can show this key again")).to_be_visible()
    await page.get_by_role("button", name="Copy").click()
    await expect(page.get_by_text("Copied to the clipboard.")).to_be_visible()
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    assert (await stack.check(secret, "POST", "/api/v4/campaigns/7/pause")).allowed

    await page.get_by_role("link", name="Done").click()
    await expect(page.locator("tbody tr")).to_have_count(3)
    await screenshot(page, "console-keys.png", viewport)
    await page.get_by_label("Search keys").fill("crm")
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("tbody tr")).to_have_count(1)
    await expect(page.locator("tbody")).to_contain_text("••••" + secret[-4:])

    await page.get_by_role("link", name="CRM sync").click()
    await expect(page.get_by_role("heading", name="CRM sync")).to_be_visible()
    await scope(page, "campaigns.manage").uncheck()
    await scope(page, "users.read").check()
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_text("Changes saved.")).to_be_visible()
    await expect(page.locator(".assigned")).to_have_text(
        re.compile(r"^\s*reporting\.cdrs\.read\s+users\.read\s*$")
    )
    denied = await stack.check(secret, "POST", "/api/v4/campaigns/7/pause")
    assert denied.reason is Reason.SCOPE_MISSING

    await page.get_by_role("button", name="Show key").click()
    assert (await page.locator("#secret").text_content() or "").strip() == secret
    await expect(page.locator("table.history")).to_contain_text("Revealed")
    await expect(page.locator("table.history")).to_contain_text("Updated")
    await screenshot(page, "console-key.png", viewport)

    dialogs: list[str] = []

    async def confirm(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    page.on("dialog", confirm)
    await page.get_by_role("button", name="Delete").click()
    await expect(page.get_by_text("The key was deleted.")).to_be_visible()
    assert "revokes it immediately" in dialogs[0]
    refused = await stack.check(secret, "GET", "/api/v4/reporting/cdrs")
    assert refused.reason is Reason.KEY_NOT_FOUND
    await expect(page.locator("tbody tr")).to_have_count(2)
    await expect(page.get_by_role("link", name="CRM sync")).to_have_count(0)

    assert not [url for url in urls if secret in url]
    await context.close()


async def test_cancelling_the_confirmation_keeps_the_key(stack: Stack, browser: Browser) -> None:
    async with stack.admin() as admin:
        _, secret = await admin.create_key("Wallboard", "", ["routing.queues.read"])
    context = await new_context(browser, DESKTOP, token=stack.token())
    page = await context.new_page()
    page.on("dialog", lambda dialog: dialog.dismiss())
    await page.goto(f"{stack.url}/keys")
    await page.get_by_role("button", name="Delete").click()
    await expect(page.get_by_role("link", name="Wallboard")).to_be_visible()
    assert (await stack.check(secret, "GET", "/api/v4/routing/queues/1")).allowed
    await context.close()


@pytest.mark.parametrize("viewport", VIEWPORTS)
async def test_an_admin_who_may_only_view_is_offered_no_create_edit_or_delete_control(
    stack: Stack, browser: Browser, viewport: dict[str, int]
) -> None:
    async with stack.admin() as admin:
        key, secret = await admin.create_key("Wallboard", "", ["routing.queues.read"])
    viewer = stack.token(sag=True, permissions=["api_keys.view"])
    context = await new_context(browser, viewport, token=viewer)
    page = await context.new_page()

    await page.goto(f"{stack.url}/keys")
    await expect(page.get_by_role("link", name="Wallboard")).to_be_visible()
    await expect(page.get_by_role("link", name="Add key")).to_have_count(0)
    await expect(page.get_by_role("button", name="Delete")).to_have_count(0)

    await page.get_by_role("link", name="Wallboard").click()
    await expect(page.get_by_role("heading", name="Wallboard")).to_be_visible()
    await expect(page.get_by_role("button", name="Save changes")).to_have_count(0)
    await expect(page.get_by_role("button", name="Delete")).to_have_count(0)
    await expect(
        page.locator("input, textarea").and_(page.locator(":not([type=hidden])"))
    ).to_have_count(0)
    await page.get_by_role("button", name="Show key").click()
    assert (await page.locator("#secret").text_content() or "").strip() == secret
    assert key.id in page.url
    await context.close()


async def test_dev_sign_in_opens_as_an_admin_of_cc_dev_and_switches_to_a_viewer(
    dev_stack: Stack, browser: Browser
) -> None:
    context = await new_context(browser, DESKTOP)
    page = await context.new_page()
    await page.goto(f"{dev_stack.url}/keys")
    await expect(page.locator(".who")).to_have_text("dev-admin · admin · cc-dev")
    await expect(page.get_by_role("link", name="Add key")).to_be_visible()

    await page.get_by_label("SAG").check()
    await page.get_by_label("view").check()
    await page.get_by_role("button", name="Switch").click()
    await expect(page.get_by_role("link", name="Add key")).to_have_count(0)
    await expect(page.get_by_text("This contact center has no API keys yet.")).to_be_visible()

    await page.get_by_label("view").uncheck()
    await page.get_by_role("button", name="Switch").click()
    await expect(page.get_by_text("You don't have permission to view API keys.")).to_be_visible()

    await page.get_by_label("SAG").uncheck()
    for permission in ALL_PERMISSIONS:
        assert permission.startswith("api_keys.")
    await page.get_by_role("button", name="Switch").click()
    await expect(page.get_by_role("link", name="Add key")).to_be_visible()
    await context.close()


async def test_a_name_too_long_is_explained_next_to_the_form_that_keeps_its_values(
    stack: Stack, browser: Browser
) -> None:
    context = await new_context(browser, PHONE, token=stack.token())
    page = await context.new_page()
    await page.goto(f"{stack.url}/keys/new")
    await page.get_by_label("Name").fill("n" * 101)
    await page.get_by_label("Description").fill("kept")
    await scope(page, "users.read").check()
    await page.get_by_role("button", name="Generate key").click()
    await expect(page.get_by_role("alert")).to_contain_text(
        "Please correct the highlighted fields."
    )
    await expect(page.locator(".field-error")).to_contain_text("Name:")
    await expect(page.get_by_label("Description")).to_have_value("kept")
    await expect(scope(page, "users.read")).to_be_checked()
    async with stack.admin() as admin:
        assert (await admin.list_keys()).total_size == 0
    await context.close()
