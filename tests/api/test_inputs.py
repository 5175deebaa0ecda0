"""Bodies: one small JSON object with known keys; the analyst never comes from the body."""

from __future__ import annotations

import pytest

from control_plane.api.inputs import MAX_NOTE_LEN, AckRequest, is_id, parse_ack_body
from control_plane.api.problems import ApiRefusal
from security.refusals import Reason

JSON = "application/json"


def test_empty_body_and_a_note_are_accepted() -> None:
    assert parse_ack_body(None, b"") == AckRequest()
    assert parse_ack_body(JSON, b"{}") == AckRequest()
    assert parse_ack_body(JSON, b'{"note": "false positive: sensor swap"}') == AckRequest(
        "false positive: sensor swap"
    )
    assert parse_ack_body("application/json; charset=utf-8", b'{"note": "x"}') == AckRequest("x")


@pytest.mark.parametrize(
    "body",
    [
        b'{"analyst": "spiffe://gridfort.test/soc/mallory"}',
        b'{"note": "x", "acknowledged_by": "mallory"}',
        b'{"note": 1}',
        b'{"note": null}',
        b'{"note": "a", "note": "b"}',
        b'{"note": NaN}',
        b"[]",
        b'"note"',
        b"{",
        b"\xff\xfe{}",
        b"[" * 5000 + b"]" * 5000,
        b'{"note": "' + b"a" * (MAX_NOTE_LEN + 1) + b'"}',
        b'{"note": "line\\nbreak"}',
        b'{"note": "bidi \\u202e override"}',
    ],
)
def test_malformed_or_identity_bearing_bodies_are_refused(body: bytes) -> None:
    result = parse_ack_body(JSON, body)
    assert isinstance(result, ApiRefusal) and result.reason is Reason.MALFORMED_REQUEST


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=latin-1", "application/jsonx"])  # fmt: skip
def test_a_body_that_is_not_json_is_unsupported(content_type: str | None) -> None:
    result = parse_ack_body(content_type, b'{"note": "x"}')
    assert isinstance(result, ApiRefusal) and result.status == 415


def test_ids_are_matched_whole() -> None:
    assert is_id("s1-bat") and is_id("cigre_mv.bus1") and is_id("a" * 64)
    for bad in ("", "a" * 65, "-a", ".a", "a\n", "a/b", "a b", "é"):
        assert not is_id(bad), bad
