"""Every error leaves through one mapping: a known one as its status, anything
else logged with its traceback and answered as a fixed ``INTERNAL``."""

from __future__ import annotations

import logging

import grpc
import pytest

from server.api.errors import to_status
from server.domain.errors import KeyCollision, StoreUnavailable


def test_an_unmapped_domain_error_is_logged_and_answered_as_internal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="server.api.errors"):
        status = to_status(KeyCollision("lookup hash vsk_secretish already used"))
    assert status.code == grpc.StatusCode.INTERNAL
    assert status.details == "internal error"
    [record] = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is KeyCollision


def test_a_library_error_is_logged_and_its_text_kept_from_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="server.api.errors"):
        status = to_status(RuntimeError("connection to 10.0.0.7 refused"))
    assert status.code == grpc.StatusCode.INTERNAL
    assert "10.0.0.7" not in status.details
    assert len(caplog.records) == 1


def test_a_mapped_domain_error_is_answered_without_an_error_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="server.api.errors"):
        status = to_status(StoreUnavailable("timeout"))
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert caplog.records == []
