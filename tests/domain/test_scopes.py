from server.domain.scopes import SCOPE_CATALOG, Scope, implied_scopes

CONTRACT_SCOPES = {
    "voice.call.manage",
    "campaigns.read",
    "campaigns.manage",
    "reporting.cdrs.read",
    "messaging.sms.send",
    "messaging.conversations.read",
    "messaging.conversations.manage",
    "messaging.channels.read",
    "messaging.canned_messages.read",
    "messaging.whatsapp_templates.read",
    "users.read",
    "users.teams.read",
    "tasks.scheduled_callbacks.read",
    "tasks.scheduled_callbacks.manage",
    "tasks.webhooks.read",
    "tasks.webhooks.manage",
    "numbers.read",
    "routing.queues.read",
    "routing.skills.read",
    "contact_center.wrapup_codes.read",
    "billing.balance.read",
}


def test_catalog_has_exactly_the_contract_scopes() -> None:
    assert len(SCOPE_CATALOG) == 21
    assert set(SCOPE_CATALOG) == CONTRACT_SCOPES


def test_each_scope_names_its_domain_by_display_name_and_defines_itself() -> None:
    for name, scope in SCOPE_CATALOG.items():
        assert isinstance(scope, Scope)
        assert scope.name == name
        assert scope.domain.replace(" ", "_").lower() == name.split(".")[0]
        assert scope.description.endswith(".")
    assert SCOPE_CATALOG["contact_center.wrapup_codes.read"].domain == "Contact Center"
    assert SCOPE_CATALOG["messaging.sms.send"].domain == "Messaging"


def test_every_manage_scope_implies_its_read_scope() -> None:
    pairs = {
        "campaigns.manage": "campaigns.read",
        "messaging.conversations.manage": "messaging.conversations.read",
        "tasks.scheduled_callbacks.manage": "tasks.scheduled_callbacks.read",
        "tasks.webhooks.manage": "tasks.webhooks.read",
    }
    for manage, read in pairs.items():
        assert implied_scopes([manage]) == {manage, read}


def test_manage_without_a_read_scope_implies_nothing_more() -> None:
    assert implied_scopes(["voice.call.manage"]) == {"voice.call.manage"}


def test_read_does_not_imply_manage() -> None:
    assert implied_scopes(["campaigns.read"]) == {"campaigns.read"}
    assert implied_scopes(["tasks.webhooks.read", "users.read"]) == {
        "tasks.webhooks.read",
        "users.read",
    }


def test_implied_scopes_keeps_unknown_names_without_expanding_them() -> None:
    assert implied_scopes(["made.up.manage"]) == {"made.up.manage"}
    assert implied_scopes([]) == frozenset()
