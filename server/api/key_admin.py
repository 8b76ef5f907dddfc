"""``KeyAdmin``: the transport side of key administration."""

from __future__ import annotations

from typing import Any

import grpc

from server.api import convert
from server.api.auth import current_actor
from server.api.errors import translates_errors
from server.domain.admin import KeyAdministration
from server.domain.records import KeyRecord
from voiso.apikeys.v1 import api_key_pb2, key_admin_pb2_grpc
from voiso.apikeys.v1 import key_admin_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]


class KeyAdminServicer(key_admin_pb2_grpc.KeyAdminServicer):
    """Maps ``KeyAdmin`` requests onto ``KeyAdministration``."""

    def __init__(self, administration: KeyAdministration) -> None:
        self._admin = administration

    @translates_errors
    async def CreateKey(
        self, request: pb.CreateKeyRequest, context: Context
    ) -> pb.CreateKeyResponse:
        record, secret = await self._admin.create_key(
            current_actor(),
            name=request.name,
            description=request.description,
            scopes=list(request.scopes),
            expire_time=convert.optional_time(request, "expire_time"),
            allowed_cidrs=list(request.allowed_cidrs),
        )
        return pb.CreateKeyResponse(key=self._key(record), secret=secret)

    @translates_errors
    async def GetKey(self, request: pb.GetKeyRequest, context: Context) -> pb.GetKeyResponse:
        record = await self._admin.get_key(current_actor(), request.id)
        return pb.GetKeyResponse(key=self._key(record))

    @translates_errors
    async def ListKeys(self, request: pb.ListKeysRequest, context: Context) -> pb.ListKeysResponse:
        now = self._admin.now()
        listing = await self._admin.list_keys(
            current_actor(),
            query=request.query,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListKeysResponse(
            keys=[convert.api_key(record, now) for record in listing.keys],
            next_page_token=listing.next_page_token,
            total_size=listing.total_size,
        )

    @translates_errors
    async def UpdateKey(
        self, request: pb.UpdateKeyRequest, context: Context
    ) -> pb.UpdateKeyResponse:
        record = await self._admin.update_key(
            current_actor(),
            request.id,
            name=request.name,
            description=request.description,
            scopes=list(request.scopes),
            update_mask=list(request.update_mask.paths),
            expire_time=convert.optional_time(request, "expire_time"),
            allowed_cidrs=list(request.allowed_cidrs),
        )
        return pb.UpdateKeyResponse(key=self._key(record))

    @translates_errors
    async def DeleteKey(
        self, request: pb.DeleteKeyRequest, context: Context
    ) -> pb.DeleteKeyResponse:
        await self._admin.delete_key(current_actor(), request.id)
        return pb.DeleteKeyResponse()

    @translates_errors
    async def RevealKey(
        self, request: pb.RevealKeyRequest, context: Context
    ) -> pb.RevealKeyResponse:
        secret = await self._admin.reveal_key(current_actor(), request.id)
        return pb.RevealKeyResponse(secret=secret)

    @translates_errors
    async def ListScopes(
        self, request: pb.ListScopesRequest, context: Context
    ) -> pb.ListScopesResponse:
        scopes = self._admin.list_scopes(current_actor())
        return pb.ListScopesResponse(scopes=[convert.scope_info(scope) for scope in scopes])

    @translates_errors
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context
    ) -> pb.ListAuditEventsResponse:
        listing = await self._admin.list_audit_events(
            current_actor(),
            key_id=request.key_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListAuditEventsResponse(
            events=[convert.audit_event(event) for event in listing.events],
            next_page_token=listing.next_page_token,
        )

    @translates_errors
    async def DisableKey(
        self, request: pb.DisableKeyRequest, context: Context
    ) -> pb.DisableKeyResponse:
        record = await self._admin.disable_key(current_actor(), request.id)
        return pb.DisableKeyResponse(key=self._key(record))

    @translates_errors
    async def EnableKey(
        self, request: pb.EnableKeyRequest, context: Context
    ) -> pb.EnableKeyResponse:
        record = await self._admin.enable_key(current_actor(), request.id)
        return pb.EnableKeyResponse(key=self._key(record))

    @translates_errors
    async def RollKey(self, request: pb.RollKeyRequest, context: Context) -> pb.RollKeyResponse:
        record, secret = await self._admin.roll_key(
            current_actor(), request.id, overlap=convert.optional_duration(request, "overlap")
        )
        return pb.RollKeyResponse(key=self._key(record), secret=secret)

    def _key(self, record: KeyRecord) -> api_key_pb2.ApiKey:
        return convert.api_key(record, self._admin.now())
