"""Typed Python clients of the API-key service.

``AuthorizeClient`` / ``AsyncAuthorizeClient`` answer whether a key may call a
v4 route; ``CachingAuthorizeClient`` / ``AsyncCachingAuthorizeClient`` do the
same and answer repeated checks from memory while the server streams its
changes; ``KeyAdminClient`` / ``AsyncKeyAdminClient`` manage a contact
center's keys with an admin token. All take a :class:`ChannelOptions` and
raise the :class:`ApiKeysError` tree on failed calls::

    from clients import AuthorizeClient, ChannelOptions

    with AuthorizeClient(ChannelOptions(target="apikeys:50051")) as authorize:
        decision = authorize.check(request.headers["Authorization"], "GET", path)
        if not decision.allowed:
            ...
"""

from clients._authorize import (
    DEFAULT_CHECK_TIMEOUT,
    MAX_CHECKS_PER_BATCH,
    AsyncAuthorizeClient,
    AuthorizeClient,
    Decision,
    Reason,
)
from clients._caching import (
    DEFAULT_MAX_ENTRIES,
    DEFAULT_STALENESS,
    AsyncCachingAuthorizeClient,
    CachingAuthorizeClient,
)
from clients._channel import (
    DEFAULT_TARGET,
    ChannelOptions,
    Retrier,
    RetryBudget,
    RetryPolicy,
    create_aio_channel,
    create_channel,
)
from clients._exceptions import (
    ApiKeysError,
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TransportError,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from clients._key_admin import DEFAULT_ADMIN_TIMEOUT, AsyncKeyAdminClient, KeyAdminClient

__all__ = [
    "DEFAULT_ADMIN_TIMEOUT",
    "DEFAULT_CHECK_TIMEOUT",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_STALENESS",
    "DEFAULT_TARGET",
    "MAX_CHECKS_PER_BATCH",
    "ApiKeysError",
    "AsyncAuthorizeClient",
    "AsyncCachingAuthorizeClient",
    "AsyncKeyAdminClient",
    "AuthorizeClient",
    "CachingAuthorizeClient",
    "ChannelOptions",
    "DeadlineExceeded",
    "Decision",
    "InternalError",
    "InvalidArgument",
    "KeyAdminClient",
    "NotFound",
    "PermissionDenied",
    "Reason",
    "ResourceExhausted",
    "Retrier",
    "RetryBudget",
    "RetryPolicy",
    "TransportError",
    "Unauthenticated",
    "Unavailable",
    "create_aio_channel",
    "create_channel",
    "from_rpc_error",
]
