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
    """One scope of the catalog. ``domain`` is the product area's display
    name (``Contact Center``), ``description`` the published definition."""

    name: str
    domain: str
    description: str


def _scopes(domain: str, *definitions: tuple[str, str]) -> tuple[Scope, ...]:
    return tuple(
        Scope(name=name, domain=domain, description=description)
        for name, description in definitions
    )


# The product's published table, word for word: admins pick scopes by these
# definitions, so they are not paraphrased here.
SCOPE_CATALOG: Mapping[str, Scope] = MappingProxyType(
    {
        scope.name: scope
        for scope in (
            *_scopes("Voice", ("voice.call.manage", "Start and stop voice calls.")),
            *_scopes(
                "Campaigns",
                ("campaigns.read", "View information about existing Dialer campaigns."),
                ("campaigns.manage", "Create, start, update, and stop Dialer campaigns."),
            ),
            *_scopes("Reporting", ("reporting.cdrs.read", "View Call Detail Records.")),
            *_scopes(
                "Messaging",
                ("messaging.sms.send", "Send an SMS to a phone number."),
                ("messaging.conversations.read", "View digital channels messages."),
                (
                    "messaging.conversations.manage",
                    "Create digital channels conversations and messages.",
                ),
                ("messaging.channels.read", "View digital channels profiles."),
                (
                    "messaging.canned_messages.read",
                    "Read digital channels and SMS message templates.",
                ),
                ("messaging.whatsapp_templates.read", "Read WhatsApp message templates."),
            ),
            *_scopes(
                "Users",
                ("users.read", "View user and deleted user information."),
                (
                    "users.teams.read",
                    "View team information, including users and supervisors assigned to teams.",
                ),
            ),
            *_scopes(
                "Tasks",
                (
                    "tasks.scheduled_callbacks.read",
                    "View a list of scheduled callback interactions.",
                ),
                ("tasks.scheduled_callbacks.manage", "Create and view callback interactions."),
                ("tasks.webhooks.read", "View information about failing webhooks."),
                ("tasks.webhooks.manage", "Retrigger failing webhooks."),
            ),
            *_scopes("Numbers", ("numbers.read", "View information about contact center numbers.")),
            *_scopes(
                "Routing",
                ("routing.queues.read", "View information about contact center queues."),
                ("routing.skills.read", "View information about contact center skills."),
            ),
            *_scopes(
                "Contact Center",
                (
                    "contact_center.wrapup_codes.read",
                    "View information about contact center wrap-up codes.",
                ),
            ),
            *_scopes(
                "Billing",
                (
                    "billing.balance.read",
                    "View information about your contact center billing balance.",
                ),
            ),
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
