"""Domain records to protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from server.domain.decisions import Decision, Reason
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.keys import mask
from server.domain.records import AuditAction, AuditRecord, ChangeKind, KeyRecord, KeyState
from server.domain.scopes import Scope
from voiso.apikeys.v1 import api_key_pb2, authorize_pb2

_ACTIONS = {
    AuditAction.CREATED: api_key_pb2.AUDIT_ACTION_CREATED,
    AuditAction.UPDATED: api_key_pb2.AUDIT_ACTION_UPDATED,
    AuditAction.DELETED: api_key_pb2.AUDIT_ACTION_DELETED,
    AuditAction.REVEALED: api_key_pb2.AUDIT_ACTION_REVEALED,
    AuditAction.DISABLED: api_key_pb2.AUDIT_ACTION_DISABLED,
    AuditAction.ENABLED: api_key_pb2.AUDIT_ACTION_ENABLED,
    AuditAction.ROLLED: api_key_pb2.AUDIT_ACTION_ROLLED,
}

_STATES = {
    KeyState.ACTIVE: api_key_pb2.ApiKey.STATE_ACTIVE,
    KeyState.DISABLED: api_key_pb2.ApiKey.STATE_DISABLED,
    KeyState.EXPIRED: api_key_pb2.ApiKey.STATE_EXPIRED,
}

_NANOS_PER_SECOND = 1_000_000_000

REASONS = {reason: authorize_pb2.Reason.Value(reason.value) for reason in Reason}
CHANGE_KINDS = {
    kind: authorize_pb2.ChangeKind.Value(f"CHANGE_KIND_{kind.name}") for kind in ChangeKind
}


def api_key(record: KeyRecord, now: datetime) -> api_key_pb2.ApiKey:
    """The admin view of a key as of ``now``: never its secret."""
    message = api_key_pb2.ApiKey(
        id=record.id,
        name=record.name,
        description=record.description,
        scopes=sorted(record.scopes),
        masked_key=mask(record.last4),
        create_time=_timestamp(record.create_time),
        update_time=_timestamp(record.update_time),
        created_by=record.created_by,
        state=_STATES[record.state(now)],
        allowed_cidrs=record.allowed_cidrs,
    )
    if record.last_used_time is not None:
        message.last_used_time.CopyFrom(_timestamp(record.last_used_time))
    if record.expire_time is not None:
        message.expire_time.CopyFrom(_timestamp(record.expire_time))
    return message


def audit_event(record: AuditRecord) -> api_key_pb2.AuditEvent:
    """One audit event."""
    message = api_key_pb2.AuditEvent(
        id=str(record.id),
        key_id=record.key_id,
        action=_ACTIONS[record.action],
        actor_id=record.actor_id,
        time=_timestamp(record.time),
        old_name=record.old_name,
        new_name=record.new_name,
        old_description=record.old_description,
        new_description=record.new_description,
        old_scopes=sorted(record.old_scopes),
        new_scopes=sorted(record.new_scopes),
        old_allowed_cidrs=record.old_allowed_cidrs,
        new_allowed_cidrs=record.new_allowed_cidrs,
    )
    if record.old_expire_time is not None:
        message.old_expire_time.CopyFrom(_timestamp(record.old_expire_time))
    if record.new_expire_time is not None:
        message.new_expire_time.CopyFrom(_timestamp(record.new_expire_time))
    if record.previous_secret_expire_time is not None:
        message.previous_secret_expire_time.CopyFrom(_timestamp(record.previous_secret_expire_time))
    return message


def scope_info(scope: Scope) -> api_key_pb2.ScopeInfo:
    """One catalog entry."""
    return api_key_pb2.ScopeInfo(
        name=scope.name, domain=scope.domain, description=scope.description
    )


def check_response(decision: Decision) -> authorize_pb2.CheckResponse:
    """The wire form of a decision."""
    return authorize_pb2.CheckResponse(
        allowed=decision.allowed,
        reason=REASONS[decision.reason],
        key_id=decision.key_id,
        contact_center_id=decision.contact_center_id,
        granted_scopes=decision.granted_scopes,
        required_scopes=decision.required_scopes,
        route=decision.route,
        revision=decision.revision,
        cache_ttl=_duration(decision.cache_ttl),
    )


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def optional_time(message: Any, field: str) -> datetime | None:
    """The ``Timestamp`` in ``message.<field>`` as an aware datetime, or
    ``None`` when unset; ``InvalidArgument`` naming ``field`` when it is out
    of range."""
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    try:
        if not 0 <= stamp.nanos < _NANOS_PER_SECOND:
            raise ValueError
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            [FieldViolation(field=field, description="is not a valid timestamp")]
        ) from None


def optional_duration(message: Any, field: str) -> timedelta | None:
    """The ``Duration`` in ``message.<field>``, or ``None`` when unset;
    ``InvalidArgument`` naming ``field`` when it is malformed."""
    if not message.HasField(field):
        return None
    duration: Duration = getattr(message, field)
    seconds, nanos = duration.seconds, duration.nanos
    if abs(nanos) >= _NANOS_PER_SECOND or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise InvalidArgument([FieldViolation(field=field, description="is not a valid duration")])
    try:
        return duration.ToTimedelta()
    except OverflowError:
        raise InvalidArgument(
            [FieldViolation(field=field, description="is not a valid duration")]
        ) from None
