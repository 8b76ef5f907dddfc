"""Client behaviour that needs no server: retries, budget, error mapping, request shaping."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from clients import (
    ApiKeysError,
    ChannelOptions,
    DeadlineExceeded,
    Decision,
    InternalError,
    InvalidArgument,
    KeyAdminClient,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    Retrier,
    RetryBudget,
    RetryPolicy,
    TransportError,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from clients._authorize import _batch_decisions, _batches, key_from_authorization
from clients._key_admin import _update_request
from clients.cli import main
from voiso.apikeys.v1 import authorize_pb2


class FakeRpcError(grpc.RpcError):
    """What a failed call raises: a ``grpc.RpcError`` that is also a ``grpc.Call``."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._trailing_metadata = trailing_metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailing_metadata


def rich_error(code: grpc.StatusCode, message: str, *details: object) -> FakeRpcError:
    """An error carrying a ``google.rpc.Status`` with ``details``, as the server sends them."""
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=packed)
    )
    return FakeRpcError(status.code, status.details, status.trailing_metadata)


class FakeTime:
    """A clock that only moves when the code under test sleeps or an attempt takes time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


class Attempts:
    """An attempt function that fails with the given codes in turn, then answers."""

    def __init__(self, *codes: grpc.StatusCode, answer: str = "answer") -> None:
        self.codes = list(codes)
        self.answer = answer
        self.timeouts: list[float | None] = []

    def __call__(self, timeout: float | None) -> str:
        self.timeouts.append(timeout)
        if self.codes:
            raise FakeRpcError(self.codes.pop(0), "no luck")
        return self.answer

    async def async_call(self, remaining: float | None) -> str:
        return self(remaining)


def make_retrier(
    fake_time: FakeTime,
    *,
    policy: RetryPolicy | None = None,
    budget: RetryBudget | None = None,
    random_unit: Callable[[], float] = lambda: 1.0,
) -> Retrier:
    return Retrier(
        policy=policy or RetryPolicy(),
        budget=budget or RetryBudget(clock=fake_time.clock),
        clock=fake_time.clock,
        random_unit=random_unit,
        sleep=fake_time.sleep,
        async_sleep=fake_time.async_sleep,
    )


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
NOT_RETRIED = [code for code in grpc.StatusCode if code not in (grpc.StatusCode.OK, UNAVAILABLE)]


def test_unavailable_is_retried_until_an_answer() -> None:
    fake_time = FakeTime()
    attempts = Attempts(UNAVAILABLE, UNAVAILABLE)

    assert make_retrier(fake_time).call(attempts, timeout=None) == "answer"

    assert len(attempts.timeouts) == 3
    assert fake_time.sleeps == [0.01, 0.02]


def test_unavailable_gives_up_after_max_attempts() -> None:
    fake_time = FakeTime()
    attempts = Attempts(*[UNAVAILABLE] * 5)

    with pytest.raises(Unavailable) as caught:
        make_retrier(fake_time, policy=RetryPolicy(max_attempts=4)).call(attempts, timeout=None)

    assert len(attempts.timeouts) == 4
    assert isinstance(caught.value.__cause__, grpc.RpcError)
    assert caught.value.code is UNAVAILABLE


@pytest.mark.parametrize("code", NOT_RETRIED, ids=lambda code: code.name)
def test_every_other_code_is_raised_at_once(code: grpc.StatusCode) -> None:
    fake_time = FakeTime()
    attempts = Attempts(code)

    with pytest.raises(ApiKeysError) as caught:
        make_retrier(fake_time).call(attempts, timeout=None)

    assert len(attempts.timeouts) == 1
    assert fake_time.sleeps == []
    assert caught.value.code is code


def test_one_attempt_policy_never_retries() -> None:
    attempts = Attempts(UNAVAILABLE)

    with pytest.raises(Unavailable):
        make_retrier(FakeTime(), policy=RetryPolicy(max_attempts=1)).call(attempts, timeout=None)

    assert len(attempts.timeouts) == 1


@pytest.mark.parametrize("unit", [0.0, 0.25, 0.999])
def test_backoff_is_full_jitter_under_a_capped_exponential_ceiling(unit: float) -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.01, max_backoff=0.2)

    delays = [policy.backoff(retry, lambda: unit) for retry in range(1, 10)]

    ceilings = [0.01, 0.02, 0.04, 0.08, 0.16, 0.2, 0.2, 0.2, 0.2]
    assert delays == pytest.approx([unit * ceiling for ceiling in ceilings])


def test_backoff_draws_fresh_jitter_for_each_wait() -> None:
    fake_time = FakeTime()
    units = iter([0.5, 0.1])
    attempts = Attempts(UNAVAILABLE, UNAVAILABLE)

    make_retrier(fake_time, random_unit=lambda: next(units)).call(attempts, timeout=None)

    assert fake_time.sleeps == pytest.approx([0.005, 0.002])


def test_overall_timeout_bounds_attempts_and_waits() -> None:
    fake_time = FakeTime()
    attempts = Attempts(UNAVAILABLE, UNAVAILABLE)

    with pytest.raises(Unavailable):
        make_retrier(fake_time).call(attempts, timeout=0.025)

    # The second wait (0.02 s) would end after the deadline, so no third attempt.
    assert fake_time.sleeps == [0.01]
    assert attempts.timeouts == pytest.approx([0.025, 0.015])


def test_deadline_exceeded_is_not_retried_even_with_time_left() -> None:
    attempts = Attempts(grpc.StatusCode.DEADLINE_EXCEEDED)

    with pytest.raises(DeadlineExceeded):
        make_retrier(FakeTime()).call(attempts, timeout=10.0)

    assert len(attempts.timeouts) == 1


def test_budget_bounds_retries_to_a_tenth_of_calls_in_an_outage() -> None:
    fake_time = FakeTime()
    budget = RetryBudget(ratio=0.1, min_per_second=0.0, clock=fake_time.clock)
    retrier = make_retrier(fake_time, budget=budget, random_unit=lambda: 0.0)
    attempts = Attempts(*[UNAVAILABLE] * 10_000)

    for _ in range(1000):
        with pytest.raises(Unavailable):
            retrier.call(attempts, timeout=None)

    retries = len(attempts.timeouts) - 1000
    # One token in the bucket at the start, then one per ten calls.
    assert 95 <= retries <= 101


def test_budget_floor_lets_a_quiet_client_retry() -> None:
    fake_time = FakeTime()
    budget = RetryBudget(ratio=0.1, min_per_second=10.0, clock=fake_time.clock)
    retrier = make_retrier(fake_time, budget=budget)

    for _ in range(30):
        fake_time.now += 1.0
        assert retrier.call(Attempts(UNAVAILABLE, UNAVAILABLE), timeout=None) == "answer"


def test_budget_floor_does_not_save_up_a_burst() -> None:
    fake_time = FakeTime()
    budget = RetryBudget(ratio=0.0, min_per_second=10.0, clock=fake_time.clock)
    fake_time.now += 3600

    spent = 0
    while budget.try_spend():
        spent += 1

    assert spent == 10


async def test_async_retries_unavailable_with_async_sleep() -> None:
    fake_time = FakeTime()
    attempts = Attempts(UNAVAILABLE, UNAVAILABLE)

    answer = await make_retrier(fake_time).acall(attempts.async_call, timeout=1.0)

    assert answer == "answer"
    assert fake_time.sleeps == [0.01, 0.02]


async def test_async_does_not_retry_other_codes() -> None:
    attempts = Attempts(grpc.StatusCode.PERMISSION_DENIED)

    with pytest.raises(PermissionDenied):
        await make_retrier(FakeTime()).acall(attempts.async_call, timeout=1.0)

    assert len(attempts.timeouts) == 1


@pytest.mark.parametrize(
    ("code", "exception"),
    [
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.CANCELLED, TransportError),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNKNOWN, InternalError),
        (grpc.StatusCode.UNIMPLEMENTED, InternalError),
    ],
    ids=lambda value: getattr(value, "name", getattr(value, "__name__", "")),
)
def test_each_code_maps_to_its_exception(
    code: grpc.StatusCode, exception: type[ApiKeysError]
) -> None:
    error = from_rpc_error(FakeRpcError(code, "what went wrong"))

    assert type(error) is exception
    assert error.code is code
    assert str(error) == error.details == "what went wrong"


def test_transport_errors_share_a_base() -> None:
    assert issubclass(Unavailable, TransportError)
    assert issubclass(DeadlineExceeded, TransportError)
    assert not issubclass(InvalidArgument, TransportError)


def test_bad_request_details_become_field_violations() -> None:
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="name", description="empty"),
            error_details_pb2.BadRequest.FieldViolation(field="scopes[0]", description="unknown"),
        ]
    )
    info = error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="apikeys.voiso.com")
    exc = rich_error(grpc.StatusCode.INVALID_ARGUMENT, "bad request", info, bad_request)

    error = from_rpc_error(exc)

    assert isinstance(error, InvalidArgument)
    assert error.field_violations == [("name", "empty"), ("scopes[0]", "unknown")]


def test_quota_failure_details_become_quota_violations() -> None:
    quota_failure = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(subject="cc-1", description="50 keys at most")
        ]
    )
    exc = rich_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "key limit", quota_failure)

    error = from_rpc_error(exc)

    assert isinstance(error, ResourceExhausted)
    assert error.quota_violations == [("cc-1", "50 keys at most")]


def test_status_that_disagrees_with_the_call_is_ignored() -> None:
    bad_request = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="name")]
    )
    honest = rich_error(grpc.StatusCode.INVALID_ARGUMENT, "bad request", bad_request)
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="bad request")
    forged = FakeRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad request",
        (("grpc-status-details-bin", status.SerializeToString()),),
    )

    assert isinstance(from_rpc_error(honest), InvalidArgument)
    assert from_rpc_error(honest).field_violations == [("name", "")]
    error = from_rpc_error(forged)
    assert isinstance(error, InvalidArgument)
    assert error.field_violations == []


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("vsk_abc", "vsk_abc"),
        ("  vsk_abc\n", "vsk_abc"),
        ("Bearer vsk_abc", "vsk_abc"),
        ("bearer vsk_abc", "vsk_abc"),
        ("BEARER   vsk_abc  ", "vsk_abc"),
        ("Bearer\tvsk_abc", "vsk_abc"),
        ("Bearer", ""),
        ("", ""),
        ("Basic dXNlcjpwYXNz", "Basic dXNlcjpwYXNz"),
        ("Token vsk_abc", "Token vsk_abc"),
        ("Bearervsk_abc", "Bearervsk_abc"),
    ],
)
def test_key_is_taken_from_an_authorization_header(value: str, key: str) -> None:
    assert key_from_authorization(value) == key


def test_decision_mirrors_the_response() -> None:
    response = authorize_pb2.CheckResponse(
        allowed=True,
        reason=authorize_pb2.REASON_ALLOWED,
        key_id="key_1",
        contact_center_id="cc-1",
        granted_scopes=["campaigns.manage", "campaigns.read"],
        required_scopes=["campaigns.read"],
        route="GET /api/v4/campaigns",
    )

    assert Decision.from_proto(response) == Decision(
        allowed=True,
        reason=Reason.ALLOWED,
        key_id="key_1",
        contact_center_id="cc-1",
        granted_scopes=("campaigns.manage", "campaigns.read"),
        required_scopes=("campaigns.read",),
        route="GET /api/v4/campaigns",
    )
    assert Reason.ALLOWED == "REASON_ALLOWED"


@pytest.mark.parametrize("reason", [authorize_pb2.REASON_UNSPECIFIED, 99])
def test_allow_without_the_allowed_reason_is_a_deny(reason: int) -> None:
    response = authorize_pb2.CheckResponse(allowed=True, reason=reason)

    decision = Decision.from_proto(response)

    assert decision.allowed is False
    assert decision.reason is Reason.UNSPECIFIED


def test_check_many_is_sent_in_batches_of_100() -> None:
    items = [(f"vsk_{n}", "GET", "/api/v4/users") for n in range(250)]

    batches = _batches(items)

    assert [len(batch.checks) for batch in batches] == [100, 100, 50]
    assert [check.key for batch in batches for check in batch.checks] == [k for k, _, _ in items]
    assert _batches([]) == []


def test_batch_answer_of_the_wrong_length_is_an_error() -> None:
    request = authorize_pb2.CheckBatchRequest(
        checks=[authorize_pb2.CheckRequest(key="k", method="GET", path="/")] * 2
    )
    short = authorize_pb2.CheckBatchResponse(results=[authorize_pb2.CheckResponse(allowed=True)])

    with pytest.raises(InternalError):
        _batch_decisions(request, short)


def test_update_mask_names_exactly_the_given_fields() -> None:
    request = _update_request("key_1", None, "", ["users.read"])

    assert list(request.update_mask.paths) == ["description", "scopes"]
    assert request.description == ""
    assert list(request.scopes) == ["users.read"]


def test_update_with_nothing_to_change_is_refused() -> None:
    # An empty mask would ask the server to overwrite all three fields.
    with pytest.raises(ValueError, match="at least one"):
        _update_request("key_1", None, None, None)


@pytest.mark.parametrize("token", ["", "eyJ.a.b\nx-injected: 1", "eyJ a.b", "ey\u00e9"])
def test_unusable_admin_token_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(ValueError, match="admin token") as caught:
        KeyAdminClient(ChannelOptions(target="127.0.0.1:1"), token=token)

    assert not token or token not in str(caught.value)


def test_target_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APIKEYS_SERVER", raising=False)
    assert ChannelOptions().target == "127.0.0.1:50051"

    monkeypatch.setenv("APIKEYS_SERVER", "apikeys.internal:443")
    assert ChannelOptions().target == "apikeys.internal:443"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"target": ""}, "target"),
        ({"timeout": 0}, "timeout"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"initial_backoff": 0.5, "max_backoff": 0.2}, "backoff"),
        ({"tls": True, "client_certificate": Path("cert.pem")}, "client_key"),
        ({"root_certificates": Path("ca.pem")}, "tls=True"),
    ],
)
def test_inconsistent_channel_options_are_refused(
    overrides: dict[str, object], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        dataclasses.replace(ChannelOptions(target="127.0.0.1:1"), **overrides)


def test_options_give_each_client_its_own_budget() -> None:
    options = ChannelOptions(target="127.0.0.1:1", max_attempts=5)

    first, second = options.retrier(), options.retrier()

    assert first.policy.max_attempts == 5
    assert first.budget is not second.budget


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_cli_reports_an_unreachable_server_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{_unused_port()}"

    status = main(["--server", target, "--timeout", "2", "check", "vsk_x", "GET", "/api/v4/users"])

    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"apikeys: service at {target} unavailable")
    assert err.rstrip().endswith("(UNAVAILABLE)")


def test_cli_needs_a_token_for_admin_commands(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("APIKEYS_TOKEN", raising=False)

    status = main(["keys", "list"])

    assert status == 2
    assert "no admin token" in capsys.readouterr().err


def test_cli_never_prints_the_admin_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "eyJhbGciOiJFZERTQSJ9.secret-claims.signature"
    monkeypatch.setenv("APIKEYS_TOKEN", token)

    status = main(["--server", f"127.0.0.1:{_unused_port()}", "--timeout", "2", "scopes"])

    out, err = capsys.readouterr()
    assert status == 1
    assert token not in out + err
    assert "(UNAVAILABLE)" in err


def test_cli_update_without_changes_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["--token", "t.t.t", "keys", "update", "key_1"])

    assert status == 2
    assert (
        "--name, --description, --scope, --expires, --allow-cidr or --any-address"
        in capsys.readouterr().err
    )


def test_cli_global_options_work_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{_unused_port()}"

    status = main(["check", "vsk_x", "GET", "/", "--server", target, "--timeout", "2", "--json"])

    assert status == 1
    assert target in capsys.readouterr().err
