"""Domain records to protobuf messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from server.domain.decisions import Decision, Reason
from server.domain.keys import mask
from server.domain.records import AuditAction, AuditRecord, KeyRecord
from server.domain.scopes import Scope
from voiso.apikeys.v1 import api_key_pb2, authorize_pb2

_ACTIONS = {
    AuditAction.CREATED: api_key_pb2.AUDIT_ACTION_CREATED,
    AuditAction.UPDATED: api_key_pb2.AUDIT_ACTION_UPDATED,
    AuditAction.DELETED: api_key_pb2.AUDIT_ACTION_DELETED,
    AuditAction.REVEALED: api_key_pb2.AUDIT_ACTION_REVEALED,
}

REASONS = {reason: authorize_pb2.Reason.Value(reason.value) for reason in Reason}


def api_key(record: KeyRecord) -> api_key_pb2.ApiKey:
    """The admin view of a key: never its secret."""
    message = api_key_pb2.ApiKey(
        id=record.id,
        name=record.name,
        description=record.description,
        scopes=sorted(record.scopes),
        masked_key=mask(record.last4),
        create_time=_timestamp(record.create_time),
        update_time=_timestamp(record.update_time),
        created_by=record.created_by,
    )
    if record.last_used_time is not None:
        message.last_used_time.CopyFrom(_timestamp(record.last_used_time))
    return message


def audit_event(record: AuditRecord) -> api_key_pb2.AuditEvent:
    """One audit event."""
    return api_key_pb2.AuditEvent(
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
    )


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
    )


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
