"""Every error leaves through one mapping: a known one as its status, anything
else logged with its traceback and answered as a fixed ``INTERNAL``."""

from __future__ import annotations

import logging

import grpc
import pytest

from server.api.errors import to_status
from server.domain.errors import KeyCollision, StoreUnavailable


@pytest.mark.parametrize(
    ("error", "code", "logged"),
    [
        # A domain error nobody mapped is a bug like any other.
        (KeyCollision("lookup hash of vsk_secretish already used"), grpc.StatusCode.INTERNAL, True),
        (RuntimeError("connection to 10.0.0.7 refused"), grpc.StatusCode.INTERNAL, True),
        (StoreUnavailable("timeout"), grpc.StatusCode.UNAVAILABLE, False),
    ],
    ids=["unmapped-domain-error", "library-error", "mapped-domain-error"],
)
def test_errors_are_answered_by_their_mapping_and_unmapped_ones_logged(
    caplog: pytest.LogCaptureFixture, error: Exception, code: grpc.StatusCode, logged: bool
) -> None:
    with caplog.at_level(logging.ERROR, logger="server.api.errors"):
        status = to_status(error)
    assert status.code == code
    assert str(error) not in status.details
    if logged:
        [record] = caplog.records
        assert record.exc_info is not None and record.exc_info[1] is error
        assert status.details == "internal error"
    else:
        assert caplog.records == []
