"""``Authorize``: the hot path. Kept thin: one call into the ``Authorizer``
and one message built per check, errors answered by ``server.api.errors``.
``WatchChanges`` relays the events of ``server.watchers``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from server.api import convert
from server.api.errors import abort
from server.domain.authorize import Checks
from server.domain.decisions import Decision
from server.domain.errors import FieldViolation, InvalidArgument, WatchingOff
from server.domain.memo import IdentityMemo
from server.domain.networks import is_address
from server.watchers import CHANGES, HEARTBEAT, RESET, Watchers, WatchEvent
from voiso.apikeys.v1 import authorize_pb2 as pb
from voiso.apikeys.v1 import authorize_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

MAX_BATCH = 100
MEMO_LIMIT = 4096


class AuthorizeServicer(authorize_pb2_grpc.AuthorizeServicer):
    """Answers ``Check`` and ``CheckBatch``."""

    def __init__(self, checks: Checks, watchers: Watchers | None = None) -> None:
        """``watchers`` ``None``: ``WatchChanges`` is turned off."""
        self._check = checks.check
        self._watchers = watchers
        # One message per event, shared by every watcher it goes to.
        self._events: IdentityMemo[pb.WatchChangesResponse] = IdentityMemo(MEMO_LIMIT)
        # The authorizer hands out the same Decision object for repeated
        # checks (constant denials, memoised allows), and a response is
        # derived from its decision alone, so the message built for it can be
        # sent again. The shared message is never changed after it is built:
        # it leaves only through grpc's serializer and CheckBatchResponse's
        # constructor, both of which copy it.
        self._responses: IdentityMemo[pb.CheckResponse] = IdentityMemo(MEMO_LIMIT)

    async def Check(self, request: pb.CheckRequest, context: Context) -> pb.CheckResponse:
        try:
            decision = await self._check(
                request.key,
                request.method,
                request.path,
                client_ip=request.client_ip,
                time_left=context.time_remaining(),
            )
        except Exception as exc:
            await abort(context, exc)
        return self._response(decision)

    async def CheckBatch(
        self, request: pb.CheckBatchRequest, context: Context
    ) -> pb.CheckBatchResponse:
        checks = request.checks
        try:
            _validate_batch(checks)
            results = [
                self._response(
                    await self._check(
                        item.key,
                        item.method,
                        item.path,
                        client_ip=item.client_ip,
                        time_left=context.time_remaining(),
                    )
                )
                for item in checks
            ]
        except Exception as exc:
            await abort(context, exc)
        return pb.CheckBatchResponse(results=results)

    async def WatchChanges(
        self, request: pb.WatchChangesRequest, context: Context
    ) -> AsyncIterator[pb.WatchChangesResponse]:
        try:
            if self._watchers is None:
                raise WatchingOff("WatchChanges is turned off")
            watch = self._watchers.open()
        except Exception as exc:
            await abort(context, exc)
        try:
            while True:
                try:
                    event = await watch.next()
                except Exception as exc:
                    await abort(context, exc)
                if event is None:
                    return
                yield self._event(event)
        finally:
            watch.close()

    def _event(self, event: WatchEvent) -> pb.WatchChangesResponse:
        message = self._events.get(event)
        if message is None:
            message = self._events.put(_watch_message(event), event)
        return message

    def _response(self, decision: Decision) -> pb.CheckResponse:
        response = self._responses.get(decision)
        if response is None:
            response = self._responses.put(convert.check_response(decision), decision)
        return response


def _watch_message(event: WatchEvent) -> pb.WatchChangesResponse:
    if event.kind == RESET:
        return pb.WatchChangesResponse(mark=event.mark, reset=pb.Reset())
    if event.kind == HEARTBEAT:
        return pb.WatchChangesResponse(mark=event.mark, heartbeat=pb.Heartbeat())
    assert event.kind == CHANGES
    return pb.WatchChangesResponse(
        mark=event.mark,
        changes=pb.Changes(
            changes=[
                pb.Change(
                    key_id=change.key_id,
                    kind=convert.CHANGE_KINDS[change.kind],
                    sequence=change.sequence,
                )
                for change in event.changes
            ]
        ),
    )


def _validate_batch(checks: Any) -> None:
    if not 1 <= len(checks) <= MAX_BATCH:
        # Refused whole: a 1 MB batch of empty checks would otherwise cost a
        # violation (and CPU time on the check path) per item.
        raise InvalidArgument(
            [FieldViolation(field="checks", description=f"must hold 1 to {MAX_BATCH} checks")]
        )
    violations: list[FieldViolation] = []
    for index, item in enumerate(checks):
        if not item.method:
            violations.append(
                FieldViolation(field=f"checks[{index}].method", description="must not be empty")
            )
        if not item.path:
            violations.append(
                FieldViolation(field=f"checks[{index}].path", description="must not be empty")
            )
        if item.client_ip and not is_address(item.client_ip):
            violations.append(
                FieldViolation(
                    field=f"checks[{index}].client_ip", description="is not an IPv4 or IPv6 address"
                )
            )
    if violations:
        raise InvalidArgument(violations)
