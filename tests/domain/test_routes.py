import re
from pathlib import Path

import pytest

from server.domain.routes import MAX_PATH_LENGTH, RouteFileError, RouteMatch, RouteTable
from server.domain.scopes import SCOPE_CATALOG

CONFIRMED = [
    ("GET", "/api/v4/reporting/cdrs", "reporting.cdrs.read"),
    ("GET", "/api/v4/campaigns", "campaigns.read"),
    ("POST", "/api/v4/campaigns/{campaign_id}/pause", "campaigns.manage"),
    ("POST", "/api/v4/campaigns/{campaign_id}/leads", "campaigns.manage"),
    ("GET", "/api/v4/users", "users.read"),
    ("GET", "/api/v4/routing/queues/{queue_id}", "routing.queues.read"),
    ("GET", "/api/v4/routing/queues/{queue_id}/users", "routing.queues.read"),
    ("GET", "/api/v4/tasks/webhooks/{webhook_id}", "tasks.webhooks.read"),
    ("GET", "/api/v4/tasks/webhook_failures", "tasks.webhooks.read"),
    ("GET", "/api/v4/tasks/webhook_failures/{id}", "tasks.webhooks.read"),
    ("POST", "/api/v4/tasks/webhook_failures/{id}/retrigger", "tasks.webhooks.manage"),
]


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return RouteTable.load(known_scopes=SCOPE_CATALOG)


def concrete(template: str) -> str:
    """The template with each parameter replaced by a plausible value."""
    return "/".join("42" if segment.startswith("{") else segment for segment in template.split("/"))


def small_table(text: str) -> RouteTable:
    return RouteTable.from_text(text, known_scopes=SCOPE_CATALOG)


# The packaged table


def test_default_table_loads_with_every_scope_reachable(table: RouteTable) -> None:
    assert len(table) == len(table.routes) >= len(CONFIRMED)
    reachable = {scope for route in table.routes for scope in route.required_scopes}
    assert reachable == set(SCOPE_CATALOG)


@pytest.mark.parametrize(("method", "template", "scope"), CONFIRMED)
def test_confirmed_routes_match_as_in_the_contract(
    table: RouteTable, method: str, template: str, scope: str
) -> None:
    assert table.match(method, concrete(template)) == RouteMatch(
        route=f"{method} {template}", required_scopes=(scope,), confirmed=True
    )


def test_only_the_contract_routes_are_confirmed(table: RouteTable) -> None:
    confirmed = {route.route for route in table.routes if route.confirmed}
    assert confirmed == {f"{method} {template}" for method, template, _ in CONFIRMED}


def test_every_default_route_matches_itself(table: RouteTable) -> None:
    for route in table.routes:
        method, template = route.route.split(" ")
        assert table.match(method, concrete(template)) == route


def test_contract_examples_of_unconfirmed_routes(table: RouteTable) -> None:
    sms = table.match("POST", "/api/v4/messaging/sms")
    balance = table.match("GET", "/api/v4/billing/balance")
    assert sms is not None
    assert sms.required_scopes == ("messaging.sms.send",)
    assert balance is not None
    assert balance.required_scopes == ("billing.balance.read",)
    assert not sms.confirmed
    assert not balance.confirmed


def test_head_follows_get(table: RouteTable) -> None:
    match = table.match("HEAD", "/api/v4/routing/queues/7")
    assert match is not None
    assert match.route == "GET /api/v4/routing/queues/{queue_id}"
    assert table.match("HEAD", "/api/v4/campaigns/7/pause") is None


def test_query_string_is_ignored(table: RouteTable) -> None:
    match = table.match("GET", "/api/v4/reporting/cdrs?from=2024-01-01&filter[x]=a/b?c")
    assert match is not None
    assert match.route == "GET /api/v4/reporting/cdrs"
    assert table.match("GET", "/api/v4/reporting/cdrs?") == match


@pytest.mark.parametrize(
    "path",
    [
        "/api/v4/reporting/cdrs?a=b c",
        "/api/v4/reporting/cdrs?a=\n",
        "/api/v4/reporting/cdrs?a=é",
        "/api/v4/reporting/cdrs?a=b#frag",
    ],
)
def test_query_that_no_request_line_could_carry_is_refused(table: RouteTable, path: str) -> None:
    assert table.match("GET", path) is None


@pytest.mark.parametrize("method", ["get", "Get", "head", "post", "", "OPTIONS", "TRACE", " GET"])
def test_methods_are_case_sensitive_and_known(table: RouteTable, method: str) -> None:
    assert table.match(method, "/api/v4/campaigns") is None


def test_method_decides_the_route(table: RouteTable) -> None:
    assert table.match("PUT", "/api/v4/campaigns") is None
    assert table.match("GET", "/api/v4/campaigns/7/pause") is None
    created = table.match("POST", "/api/v4/tasks/webhooks")
    deleted = table.match("DELETE", "/api/v4/tasks/webhooks/9")
    assert created is not None
    assert created.required_scopes == ("tasks.webhooks.manage",)
    assert deleted is not None
    assert deleted.required_scopes == ("tasks.webhooks.manage",)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "api/v4/campaigns",
        "/api/v4/campaigns/",
        "/api/v4/campaigns//7/pause",
        "//api/v4/campaigns",
        "/api/v4//campaigns",
        "/api/v4/campaigns/7/pause/",
        "/api/v4/./campaigns",
        "/api/v4/campaigns/.",
        "/api/v4/campaigns/7/../8/pause",
        "/api/v4/x/../campaigns",
        "/api/v4/campaigns/%2e%2e/pause",
        "/api/v4/campaigns/%2E%2E/pause",
        "/api/v4/campaigns/%2e/pause",
        "/api/v4/campaigns/.%2e/pause",
        "/api/v4/campaigns/%252e%252e/pause",
        "/api/v4/campaigns/%25/pause",
        "/api/v4/campaigns/7%2fpause/pause",
        "/api/v4/campaigns/7%2Fx/pause",
        "/api/v4/campaigns/7%5cx/pause",
        "/api/v4/campaigns/7%5Cx/pause",
        "/api/v4/campaigns/7%3Bx/pause",
        "/api/v4/campaigns/7%3bx/pause",
        "/api/v4/campaigns/1%3F/pause",
        "/api/v4/campaigns/a%23/pause",
        "/api/v4/campaigns/7\\x/pause",
        "/api/v4\\campaigns",
        "/api/v4/campaigns/7%00/pause",
        "/api/v4/campaigns/7%0a/pause",
        "/api/v4/campaigns/7%0D%0A/pause",
        "/api/v4/campaigns/7%1f/pause",
        "/api/v4/campaigns/7%7f/pause",
        "/api/v4/campaigns/7\n/pause",
        "/api/v4/campaigns/7\r/pause",
        "/api/v4/campaigns/7\t/pause",
        "/api/v4/campaigns/7\x00/pause",
        "/api/v4/campaigns/7\x7f/pause",
        "/api/v4/campaigns\n",
        "/api/v4/campaigns/é/pause",
        "/api/v4/campaigns/%c3%a9/pause",
        "/api/v4/campaigns/%C3%A9/pause",
        "/api/v4/campaigns/%80/pause",
        "/api/v4/campaigns/%ff/pause",
        "/api/v4/campaigns#frag",
        "/api/v4/campaigns/7/pause#",
        "/api/v4/campaigns/7%zz/pause",
        "/api/v4/campaigns/7%4/pause",
        "/api/v4/campaigns/7%/pause",
        "/api/v4/campaigns/7/pause%",
        "/api/v4/campaigns/7 /pause",
        "/api/v4/campaigns/a b/pause",
        '/api/v4/campaigns/"7"/pause',
        "/api/v4/campaigns/<7>/pause",
        "/api/v4/campaigns/`7`/pause",
        "/api/v4/campaigns/{campaign_id}/pause",
        "/api/v4/campaigns/7|8/pause",
        "/api/v4/campaigns/^7/pause",
        "/api/v4/campaigns/[7]/pause",
        "/api/v4/campaigns/7;x/pause",
        "/api/v4/campaigns/7/pause;jsessionid=1",
        "/api/v4/campaigns/7/p%61use",
        "/api/v4/campaigns/7/%70ause",
        "/api/v4/campaigns/%37/pause",
        "/api/v4/campaigns/7%2D8/pause",
        "/api/v4/campaigns/7%7E/pause",
        "/api/v4/campaigns/" + "7" * 5000 + "/pause",
        "/api/v4/campaigns/"
        + "7" * (MAX_PATH_LENGTH - len("/api/v4/campaigns//pause") + 1)
        + "/pause",
    ],
)
def test_non_canonical_paths_match_nothing(table: RouteTable, path: str) -> None:
    assert table.match("POST", path) is None
    assert table.match("GET", path) is None


def test_longest_allowed_path_still_matches(table: RouteTable) -> None:
    filler = "7" * (MAX_PATH_LENGTH - len("/api/v4/campaigns//pause"))
    path = f"/api/v4/campaigns/{filler}/pause"
    assert len(path) == MAX_PATH_LENGTH
    assert table.match("POST", path) is not None


@pytest.mark.parametrize(
    "campaign_id",
    [
        "7",
        "a-b_c.d~e",
        "x!$&'()*+,=:@",
        "%20",
        "caf%21",
        "a%2a",
        "..x",
        ".x",
        "x..",
    ],
)
def test_parameters_take_any_canonical_segment(table: RouteTable, campaign_id: str) -> None:
    match = table.match("POST", f"/api/v4/campaigns/{campaign_id}/pause")
    assert match is not None
    assert match.route == "POST /api/v4/campaigns/{campaign_id}/pause"


def test_parameter_matches_exactly_one_non_empty_segment(table: RouteTable) -> None:
    assert table.match("POST", "/api/v4/campaigns/7/pause") is not None
    assert table.match("POST", "/api/v4/campaigns/7/8/pause") is None
    assert table.match("POST", "/api/v4/campaigns//pause") is None
    assert table.match("POST", "/api/v4/campaigns/pause") is None


def test_literal_beats_parameter(table: RouteTable) -> None:
    listing = table.match("GET", "/api/v4/tasks/webhook_failures")
    assert listing is not None
    assert listing.route == "GET /api/v4/tasks/webhook_failures"
    teams = table.match("GET", "/api/v4/users/teams")
    assert teams is not None
    assert teams.required_scopes == ("users.teams.read",)


def test_literal_first_then_parameter_whichever_order_the_file_has() -> None:
    text_param_first = (
        "GET /a/{x} users.read confirmed\n"
        "GET /a/b numbers.read confirmed\n"
        "GET /a/b/c billing.balance.read confirmed\n"
        "GET /a/{x}/d routing.skills.read confirmed\n"
    )
    lines = text_param_first.splitlines()
    for text in (text_param_first, "\n".join(reversed(lines))):
        table = small_table(text)
        assert _route(table, "GET", "/a/b") == "GET /a/b"
        assert _route(table, "GET", "/a/c") == "GET /a/{x}"
        assert _route(table, "GET", "/a/b/c") == "GET /a/b/c"
        # The literal branch dead-ends at "d", so the parameter branch answers.
        assert _route(table, "GET", "/a/b/d") == "GET /a/{x}/d"
        assert _route(table, "GET", "/a/z/d") == "GET /a/{x}/d"
        assert _route(table, "GET", "/a/z/c") is None


def test_a_path_deeper_than_any_route_matches_nothing() -> None:
    table = small_table("GET /a/{x} users.read confirmed\n")
    assert _route(table, "GET", "/a/b") == "GET /a/{x}"
    assert _route(table, "GET", "/a/b/c") is None
    assert _route(table, "GET", "/a" * 500) is None


def test_several_scopes_any_one_suffices() -> None:
    table = small_table("GET /a users.read,numbers.read unconfirmed\n")
    assert table.match("GET", "/a") == RouteMatch(
        route="GET /a", required_scopes=("users.read", "numbers.read"), confirmed=False
    )


def test_many_routes_compile_and_each_matches_its_own() -> None:
    lines = []
    for index in range(1250):
        lines += [
            f"GET /api/v4/r{index}/items users.read unconfirmed",
            f"GET /api/v4/r{index}/items/{{item_id}} numbers.read unconfirmed",
            f"DELETE /api/v4/r{index}/items/{{item_id}} billing.balance.read unconfirmed",
            f"GET /api/v4/r{index}/items/special routing.skills.read unconfirmed",
        ]
    table = small_table("\n".join(lines))
    assert len(table) == 5000
    for index in (0, 1, 617, 1249):
        assert _route(table, "GET", f"/api/v4/r{index}/items") == f"GET /api/v4/r{index}/items"
        assert (
            _route(table, "GET", f"/api/v4/r{index}/items/5")
            == f"GET /api/v4/r{index}/items/{{item_id}}"
        )
        assert (
            _route(table, "DELETE", f"/api/v4/r{index}/items/5")
            == f"DELETE /api/v4/r{index}/items/{{item_id}}"
        )
        assert (
            _route(table, "GET", f"/api/v4/r{index}/items/special")
            == f"GET /api/v4/r{index}/items/special"
        )
        assert _route(table, "DELETE", f"/api/v4/r{index}/items") is None
    assert _route(table, "GET", "/api/v4/r1250/items") is None


def _route(table: RouteTable, method: str, path: str) -> str | None:
    match = table.match(method, path)
    return None if match is None else match.route


# Loading


def test_load_reads_a_replacement_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.txt"
    path.write_text(
        "# custom table\n\n   # indented comment\nGET\t/v1/things\tusers.read\tconfirmed\r\n"
    )
    table = RouteTable.load(path, known_scopes=SCOPE_CATALOG)
    assert [route.route for route in table.routes] == ["GET /v1/things"]
    assert RouteTable.load(path, known_scopes={"users.read"}).match("GET", "/v1/things")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("GET /a users.read", "expected 4 fields"),
        ("GET /a users.read confirmed extra", "expected 4 fields"),
        ("GET /a users.read confirmed # note", "expected 4 fields"),
        ("get /a users.read confirmed", "method 'get' is not one of"),
        ("HEAD /a users.read confirmed", "HEAD follows GET"),
        ("OPTIONS /a users.read confirmed", "method 'OPTIONS' is not one of"),
        ("GET a/b users.read confirmed", "does not start with '/'"),
        ("GET / users.read confirmed", "empty segment"),
        ("GET /a//b users.read confirmed", "empty segment"),
        ("GET /a/ users.read confirmed", "empty segment"),
        ("GET /a/{x}y users.read confirmed", "a parameter is a whole segment"),
        ("GET /a/{1x} users.read confirmed", "a parameter is a whole segment"),
        ("GET /a/{} users.read confirmed", "a parameter is a whole segment"),
        ("GET /a/{x-y} users.read confirmed", "a parameter is a whole segment"),
        ("GET /a/{x/b users.read confirmed", "a parameter is a whole segment"),
        ("GET /a/{x}/{x} users.read confirmed", "repeats parameter {x}"),
        ("GET /a/../b users.read confirmed", "not canonical"),
        ("GET /a/%2e users.read confirmed", "not canonical"),
        ("GET /a/b;c users.read confirmed", "not canonical"),
        ("GET /a/b?c users.read confirmed", "not canonical"),
        ("GET /a/ü users.read confirmed", "not canonical"),
        ("GET /a nope.read confirmed", "unknown scope 'nope.read'"),
        ("GET /a users.read,nope.read confirmed", "unknown scope 'nope.read'"),
        ("GET /a , confirmed", "no scopes"),
        ("GET /a users.read,,numbers.read confirmed", "has an empty entry"),
        ("GET /a users.read, confirmed", "has an empty entry"),
        ("GET /a users.read,users.read confirmed", "repeats a scope"),
        ("GET /a users.read maybe", "status 'maybe'"),
        ("GET /a users.read Confirmed", "status 'Confirmed'"),
    ],
)
def test_load_errors_name_the_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "routes.txt"
    path.write_text(f"# header\nGET /ok users.read confirmed\n\n{line}\n", encoding="utf-8")
    with pytest.raises(RouteFileError) as caught:
        RouteTable.load(path, known_scopes=SCOPE_CATALOG)
    error = caught.value
    assert (error.path, error.line) == (str(path), 4)
    assert reason in error.reason
    assert str(error) == f"{path}:4: {error.reason}"
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("GET /a/{x} users.read confirmed", "GET /a/{x} users.read confirmed"),
        ("GET /a/{x} users.read confirmed", "GET /a/{y} numbers.read confirmed"),
        ("GET /a/{x}/b/{y} users.read confirmed", "GET /a/{p}/b/{q} users.read unconfirmed"),
        ("POST /a/b users.read confirmed", "POST /a/b numbers.read confirmed"),
    ],
)
def test_duplicate_routes_name_both_lines(tmp_path: Path, first: str, second: str) -> None:
    path = tmp_path / "routes.txt"
    path.write_text(f"{first}\n# between\n{second}\n")
    with pytest.raises(RouteFileError) as caught:
        RouteTable.load(path, known_scopes=SCOPE_CATALOG)
    assert caught.value.line == 3
    assert "matches the same paths as" in caught.value.reason
    assert "(line 1)" in caught.value.reason


def test_same_shape_with_literal_and_parameter_or_other_method_is_not_a_duplicate() -> None:
    table = small_table(
        "GET /a/{x} users.read confirmed\n"
        "GET /a/b users.read confirmed\n"
        "POST /a/{x} users.read confirmed\n"
        "GET /{y}/b users.read confirmed\n"
    )
    assert len(table) == 4
    assert _route(table, "GET", "/a/b") == "GET /a/b"
    assert _route(table, "GET", "/c/b") == "GET /{y}/b"


def test_load_of_a_missing_file_names_it_with_line_zero(tmp_path: Path) -> None:
    path = tmp_path / "missing.txt"
    with pytest.raises(RouteFileError) as caught:
        RouteTable.load(path, known_scopes=SCOPE_CATALOG)
    assert (caught.value.path, caught.value.line) == (str(path), 0)
    assert str(caught.value).startswith(f"{path}:0: cannot read")


def test_load_of_a_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(RouteFileError) as caught:
        RouteTable.load(tmp_path, known_scopes=SCOPE_CATALOG)
    assert caught.value.line == 0


def test_load_of_a_non_utf8_file_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "routes.txt"
    path.write_bytes(b"GET /a users.read confirmed\n\xff\xfe\n")
    with pytest.raises(RouteFileError, match="not UTF-8") as caught:
        RouteTable.load(path, known_scopes=SCOPE_CATALOG)
    assert caught.value.line == 0


def test_a_table_without_routes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "routes.txt"
    path.write_text("# nothing here\n\n")
    with pytest.raises(RouteFileError, match="no routes") as caught:
        RouteTable.load(path, known_scopes=SCOPE_CATALOG)
    assert caught.value.line == 0


def test_scopes_are_checked_against_the_given_catalog() -> None:
    with pytest.raises(RouteFileError, match=re.escape("unknown scope 'users.read'")) as caught:
        RouteTable.from_text(
            "GET /a numbers.read confirmed\nGET /b users.read confirmed\n",
            source="custom",
            known_scopes={"numbers.read"},
        )
    assert str(caught.value).startswith("custom:2: ")


def test_only_requests_that_could_match_are_remembered() -> None:
    table = RouteTable.load(known_scopes=SCOPE_CATALOG)
    for index in range(100):
        assert table.match(f"M{index}" + "X" * 10_000, "/api/v4/users") is None
        assert table.match("GET", "/" + "a" * (MAX_PATH_LENGTH + index)) is None
    assert table.match("GET", "/api/v4/users") == table.match("GET", "/api/v4/users")
    assert table.remembered == 1
