"""The client's copy of the key format agrees with the server's, key by key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients._keys import KEY_LENGTH, KEY_PREFIX, is_well_formed, well_formed_key
from server.domain import keys as server_keys

BASE62 = st.sampled_from("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def test_the_format_constants_are_the_servers() -> None:
    assert (KEY_PREFIX, KEY_LENGTH) == (server_keys.KEY_PREFIX, server_keys.KEY_LENGTH)


def test_keys_the_server_issues_are_well_formed_and_random_ones_pass_the_servers_check() -> None:
    for _ in range(200):
        assert is_well_formed(server_keys.generate_key())
        assert server_keys.is_well_formed(well_formed_key())


def test_every_single_character_change_of_a_key_is_refused_as_the_server_refuses_it() -> None:
    key = server_keys.generate_key()
    for position in range(len(key)):
        for replacement in ("0", "z", "_", "é", ""):
            changed = key[:position] + replacement + key[position + 1 :]
            assert is_well_formed(changed) is server_keys.is_well_formed(changed), changed


@pytest.mark.parametrize(
    "text",
    ["", "vsk_short", "not-a-key", KEY_PREFIX + "A" * 49, "Bearer " + "x" * 46, "vsk_" + "é" * 49],
)
def test_look_alikes_are_refused(text: str) -> None:
    assert not is_well_formed(text)
    assert not server_keys.is_well_formed(text)


@given(st.text(BASE62, min_size=49, max_size=49))
def test_any_string_of_the_right_shape_is_judged_as_the_server_judges_it(tail: str) -> None:
    key = KEY_PREFIX + tail
    assert is_well_formed(key) is server_keys.is_well_formed(key)


@given(st.text(max_size=60))
def test_any_text_at_all_is_judged_as_the_server_judges_it(text: str) -> None:
    assert is_well_formed(text) is server_keys.is_well_formed(text)
