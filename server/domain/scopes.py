"""The scope catalog: what a key may be allowed to do (docs/API.md, "Scopes").

A scope is ``<domain>.<resource>.<action>``. A ``*.manage`` scope also grants
the matching ``*.read`` scope, as write implies read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

_MANAGE_SUFFIX = ".manage"
_READ_SUFFIX = ".read"


@dataclass(frozen=True, kw_only=True, slots=True)
class Scope:
    """One scope of the catalog; ``domain`` is the part of the name before
    the first dot."""

    name: str
    domain: str
    description: str


def _scope(name: str, description: str) -> Scope:
    return Scope(name=name, domain=name.partition(".")[0], description=description)


SCOPE_CATALOG: Mapping[str, Scope] = MappingProxyType(
    {
        scope.name: scope
        for scope in (
            _scope("voice.call.manage", "Place and control voice calls"),
            _scope("campaigns.read", "View dialer campaigns"),
            _scope(
                "campaigns.manage",
                "Pause and resume campaigns and add leads to them; includes campaigns.read",
            ),
            _scope("reporting.cdrs.read", "Read call detail records (CDRs)"),
            _scope("messaging.sms.send", "Send SMS messages"),
            _scope("messaging.conversations.read", "View messaging conversations"),
            _scope(
                "messaging.conversations.manage",
                "Act on messaging conversations, such as closing them; "
                "includes messaging.conversations.read",
            ),
            _scope("messaging.channels.read", "View the configured messaging channels"),
            _scope("messaging.canned_messages.read", "View canned messages"),
            _scope("messaging.whatsapp_templates.read", "View WhatsApp message templates"),
            _scope("users.read", "View users"),
            _scope("users.teams.read", "View teams of users"),
            _scope("tasks.scheduled_callbacks.read", "View scheduled callbacks"),
            _scope(
                "tasks.scheduled_callbacks.manage",
                "Create and cancel scheduled callbacks; includes tasks.scheduled_callbacks.read",
            ),
            _scope("tasks.webhooks.read", "View webhooks and failed webhook deliveries"),
            _scope(
                "tasks.webhooks.manage",
                "Create and delete webhooks and retrigger failed deliveries; "
                "includes tasks.webhooks.read",
            ),
            _scope("numbers.read", "View the contact center's phone numbers"),
            _scope("routing.queues.read", "View queues and the users assigned to them"),
            _scope("routing.skills.read", "View routing skills"),
            _scope("contact_center.wrapup_codes.read", "View wrap-up codes"),
            _scope("billing.balance.read", "View the account balance"),
        )
    }
)

_IMPLIED: Mapping[str, str] = MappingProxyType(
    {
        name: read
        for name in SCOPE_CATALOG
        if name.endswith(_MANAGE_SUFFIX)
        and (read := name.removesuffix(_MANAGE_SUFFIX) + _READ_SUFFIX) in SCOPE_CATALOG
    }
)


def implied_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """``scopes`` plus every scope they imply: each ``X.manage`` adds
    ``X.read`` when the catalog has it. Unknown names pass through unchanged,
    so a scope retired from the catalog grants nothing new."""
    granted = set(scopes)
    granted.update([_IMPLIED[name] for name in granted if name in _IMPLIED])
    return frozenset(granted)
