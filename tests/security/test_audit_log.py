"""The hash-chained audit log: writing, resuming, and pinpointing tampering."""

from __future__ import annotations

import json
import multiprocessing
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from security.audit_log import (
    GENESIS_EVENT,
    GENESIS_PREV,
    AuditLog,
    canonical_json,
    format_verification,
    record_hash,
    verify_audit_log,
)
from security.clock import ManualClock
from security.identity import Role, SpiffeId
from security.refusals import GridfortError, Reason, Refusal

T0_MS = 1_900_000_000_000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0_MS)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.jsonl"


def _write_log(path: Path, clock: ManualClock, n: int) -> None:
    with AuditLog(path, clock) as log:
        for i in range(n):
            clock.advance(1)
            log.append("test", decision="deny" if i % 2 else "allow", details={"i": i})


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def _store(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_new_log_starts_with_a_genesis_record(log_path: Path, clock: ManualClock) -> None:
    AuditLog(log_path, clock).close()
    (genesis,) = [json.loads(line) for line in _lines(log_path)]
    assert genesis["seq"] == 0 and genesis["prev"] == GENESIS_PREV
    assert genesis["event"] == GENESIS_EVENT and genesis["decision"] == "info"
    assert genesis["details"]["format"] == "gridfort-audit/1"
    assert len(genesis["details"]["log_id"]) == 32
    assert genesis["hash"] == record_hash(genesis)
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600


def test_records_are_chained_canonical_json(log_path: Path, clock: ManualClock) -> None:
    with AuditLog(log_path, clock) as log:
        rec = log.append(
            "enrollment",
            decision="allow",
            identity="spiffe://grid.example/edge/s1",
            reason="",
            details={"z": 1, "a": [1, "x"]},
        )
        assert log.head_hash == rec.hash
    lines = _lines(log_path)
    genesis, record = json.loads(lines[0]), json.loads(lines[1])
    assert lines[1] == canonical_json(record)
    assert record == rec.to_dict()
    assert record["seq"] == 1 and record["prev"] == genesis["hash"]
    assert record["ts_ms"] == T0_MS
    assert record["hash"] == record_hash(record)
    assert set(record) == {
        "seq", "ts_ms", "event", "decision", "identity", "reason", "details", "prev", "hash"
    }  # fmt: skip


def test_reopening_resumes_the_chain(log_path: Path, clock: ManualClock) -> None:
    _write_log(log_path, clock, 3)
    with AuditLog(log_path, clock) as log:
        rec = log.append("again", decision="info")
    assert rec.seq == 4
    v = verify_audit_log(log_path)
    assert v.ok and v.records == 5 and v.head_hash == rec.hash
    assert format_verification(v) == (
        f"audit log {log_path}: OK — 5 records, chain intact, head {rec.hash}"
    )


def test_details_are_coerced_to_json(log_path: Path, clock: ManualClock) -> None:
    with AuditLog(log_path, clock) as log:
        rec = log.append(
            "x",
            decision="info",
            details={
                "raw": b"\x00\xff",
                "reason": Reason.BAD_SIGNATURE,
                "who": SpiffeId("grid.example", Role.EDGE, "s1"),
                "nan": float("nan"),
                "nested": {"t": (1, 2), "s": {"b", "a"}},
                "text": "Zürich \u2603",
            },
        )
    assert rec.details == {
        "raw": "00ff",
        "reason": "BAD_SIGNATURE",
        "who": "spiffe://grid.example/edge/s1",
        "nan": "nan",
        "nested": {"t": [1, 2], "s": ["a", "b"]},
        "text": "Zürich \u2603",
    }
    assert verify_audit_log(log_path).ok
    assert log_path.read_bytes().isascii()


@pytest.mark.parametrize(
    "details", [{"x": object()}, {1: "x"}, {"deep": json.loads("[" * 40 + "]" * 40)}]
)
def test_unserializable_details_are_refused(
    log_path: Path, clock: ManualClock, details: dict[object, object]
) -> None:
    with AuditLog(log_path, clock) as log, pytest.raises((TypeError, ValueError)):
        log.append("x", decision="info", details=details)  # type: ignore[arg-type]
    assert verify_audit_log(log_path).records == 1


@pytest.mark.parametrize("decision", ["ALLOW", "maybe", ""])
def test_decision_must_be_known(log_path: Path, clock: ManualClock, decision: str) -> None:
    with AuditLog(log_path, clock) as log, pytest.raises(ValueError, match="decision"):
        log.append("x", decision=decision)


def test_record_refusal(log_path: Path, clock: ManualClock) -> None:
    refusal = Refusal(
        Reason.TOKEN_EXPIRED,
        "token has expired",
        identity="spiffe://grid.example/edge/s1",
        details={"site_id": "s1"},
    )
    with AuditLog(log_path, clock) as log:
        rec = log.record_refusal(refusal, event="enrollment")
    assert (rec.event, rec.decision, rec.reason, rec.identity) == (
        "enrollment",
        "deny",
        "TOKEN_EXPIRED",
        "spiffe://grid.example/edge/s1",
    )
    assert rec.details == {"site_id": "s1", "message": "token has expired"}


def test_appends_from_many_threads_keep_one_chain(log_path: Path, clock: ManualClock) -> None:
    with AuditLog(log_path, clock, fsync=True) as log:

        def work(t: int) -> None:
            for i in range(25):
                log.append("t", decision="info", details={"t": t, "i": i})

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    v = verify_audit_log(log_path)
    assert v.ok, format_verification(v)
    assert v.records == 1 + 8 * 25


def test_two_writers_share_one_chain(log_path: Path, clock: ManualClock) -> None:
    """E.g. the CLI revoking an identity while the control plane is running."""
    with AuditLog(log_path, clock) as first, AuditLog(log_path, clock) as second:
        a = first.append("a", decision="info")
        b = second.append("b", decision="info")
        c = first.append("c", decision="info")
    assert (a.seq, b.seq, c.seq) == (1, 2, 3)
    assert b.prev == a.hash and c.prev == b.hash
    assert verify_audit_log(log_path).ok


def _append_in_process(path: str, n: int, barrier: object) -> None:
    with AuditLog(Path(path), ManualClock(T0_MS)) as log:
        barrier.wait()  # type: ignore[attr-defined]
        for i in range(n):
            log.append("child", decision="info", details={"i": i})


def test_writers_in_two_processes_keep_one_chain(log_path: Path, clock: ManualClock) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    with AuditLog(log_path, clock) as log:
        child = ctx.Process(target=_append_in_process, args=(str(log_path), 1000, barrier))
        child.start()
        barrier.wait(timeout=60)
        for i in range(1000):
            log.append("parent", decision="info", details={"i": i})
        child.join(timeout=60)
        assert child.exitcode == 0
    v = verify_audit_log(log_path)
    assert v.ok, format_verification(v)
    assert v.records == 2001


def test_closed_log_refuses_appends(log_path: Path, clock: ManualClock) -> None:
    log = AuditLog(log_path, clock)
    log.close()
    log.close()
    with pytest.raises(GridfortError, match="closed"):
        log.append("x", decision="info")


@pytest.mark.parametrize(
    "damage",
    [
        lambda lines: [*lines[:-1], lines[-1][:-10]],  # truncated (no newline written back)
        lambda lines: [*lines, b"garbage"],
        lambda lines: [*lines[:-1], lines[-1].replace(b'"i":2', b'"i":3')],
        lambda lines: [*lines[:-2], lines[-1]],  # second-to-last deleted: no longer chains
        lambda lines: [],
    ],
    ids=["truncated", "garbage", "edited", "unchained", "empty"],
)
def test_corrupt_tail_refuses_to_open(
    log_path: Path, clock: ManualClock, damage: Callable[[list[bytes]], list[bytes]]
) -> None:
    _write_log(log_path, clock, 3)
    damaged = damage(_lines(log_path))
    data = b"".join(line + b"\n" for line in damaged)
    if damaged and not damaged[-1].endswith(b"}"):
        data = data[:-1]
    log_path.write_bytes(data)
    with pytest.raises(GridfortError, match="gridfort audit verify"):
        AuditLog(log_path, clock)


# -- tampering -----------------------------------------------------------------------------------

N_RECORDS = 10  # + genesis: seq 0..10 on lines 1..11
VICTIM_SEQ = 5  # on line 6


def _edit(line: bytes, rehash: bool) -> bytes:
    record = json.loads(line)
    record["decision"] = "allow" if record["decision"] == "deny" else "deny"
    if rehash:
        record["hash"] = record_hash(record)
    return canonical_json(record)


def _forge_after(previous: bytes) -> bytes:
    prev = json.loads(previous)
    forged = {
        "seq": prev["seq"] + 1,
        "ts_ms": prev["ts_ms"],
        "event": "test",
        "decision": "allow",
        "identity": "spiffe://grid.example/operator/mallory",
        "reason": "",
        "details": {},
        "prev": prev["hash"],
    }
    return canonical_json({**forged, "hash": record_hash(forged)})


def _tamper(kind: str, lines: list[bytes]) -> bytes:
    v = VICTIM_SEQ  # index of the victim line
    if kind == "edited_field":
        lines[v] = _edit(lines[v], rehash=False)
    elif kind == "recomputed_hash":
        lines[v] = _edit(lines[v], rehash=True)
    elif kind == "deleted_record":
        del lines[v]
    elif kind == "deleted_first_record":
        del lines[0]
    elif kind == "reordered_records":
        lines[v], lines[v + 1] = lines[v + 1], lines[v]
    elif kind == "inserted_record":
        lines.insert(v, _forge_after(lines[v - 1]))
    elif kind == "duplicated_record":
        lines.insert(v + 1, lines[v])
    elif kind == "replaced_record":
        forged = json.loads(_forge_after(lines[v - 1]))
        forged["prev"] = "ab" * 32
        forged["hash"] = record_hash(forged)
        lines[v] = canonical_json(forged)
    elif kind == "garbage_line":
        lines.insert(v, b"this is not json")
    elif kind == "blank_line":
        lines.insert(v, b"")
    elif kind == "reformatted_line":
        lines[v] = json.dumps(json.loads(lines[v]), indent=None).encode()
    elif kind == "truncated_final_line":
        return b"".join(line + b"\n" for line in lines) [:-20]  # fmt: skip
    else:
        raise AssertionError(kind)
    return b"".join(line + b"\n" for line in lines)


@pytest.mark.parametrize(
    ("kind", "line", "seq", "problem"),
    [
        ("edited_field", 6, 5, "hash mismatch — record contents were modified"),
        ("recomputed_hash", 6, 5, "modified and its hash recomputed"),
        ("deleted_record", 6, 5, "seq gap: seq 5 missing — record(s) deleted"),
        ("deleted_first_record", 1, 0, "seq gap: seq 0 missing"),
        ("reordered_records", 6, 6, "records reordered — seq 5 comes later, at line 7"),
        ("inserted_record", 6, 5, "record inserted — the genuine seq 5 is at line 7"),
        ("duplicated_record", 7, 5, "record duplicated — same as line 6"),
        ("replaced_record", 6, 5, "hash chain broken"),
        ("garbage_line", 6, None, "garbage line — not a JSON record"),
        ("blank_line", 6, None, "garbage line — empty line"),
        ("reformatted_line", 6, 5, "not in canonical form"),
        ("truncated_final_line", 11, None, "truncated final line"),
    ],
)
def test_tampered_audit_record_is_pinpointed(
    log_path: Path,
    clock: ManualClock,
    kind: str,
    line: int,
    seq: int | None,
    problem: str,
) -> None:
    _write_log(log_path, clock, N_RECORDS)
    assert verify_audit_log(log_path).ok
    log_path.write_bytes(_tamper(kind, _lines(log_path)))

    v = verify_audit_log(log_path)
    assert not v.ok
    assert (v.first_bad_line, v.first_bad_seq) == (line, seq), v.problem
    assert problem in v.problem
    assert v.records == line - 1
    where = f"line {line}" + (f" (seq {seq})" if seq is not None else "")
    assert format_verification(v) == f"audit log {log_path}: TAMPERED at {where}: {v.problem}"


def test_example_message_shape(log_path: Path, clock: ManualClock) -> None:
    _write_log(log_path, clock, 20)
    lines = _lines(log_path)
    lines[16] = _edit(lines[16], rehash=False)
    _store(log_path, lines)
    assert format_verification(verify_audit_log(log_path)) == (
        f"audit log {log_path}: TAMPERED at line 17 (seq 16): "
        "hash mismatch — record contents were modified"
    )


def test_cutting_whole_records_off_the_end_needs_an_anchor(
    log_path: Path, clock: ManualClock
) -> None:
    """The chain alone cannot see records removed from the end; the anchored head hash can."""
    _write_log(log_path, clock, 5)
    anchored = verify_audit_log(log_path).head_hash
    _store(log_path, _lines(log_path)[:-2])
    v = verify_audit_log(log_path)
    assert v.ok
    assert v.head_hash != anchored


def test_missing_and_empty_files(tmp_path: Path) -> None:
    missing = verify_audit_log(tmp_path / "nope.jsonl")
    assert not missing.ok and missing.first_bad_line is None
    assert "CANNOT VERIFY" in format_verification(missing)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    empty = verify_audit_log(tmp_path / "empty.jsonl")
    assert not empty.ok and "genesis record is missing" in empty.problem


def test_logs_cannot_be_spliced(tmp_path: Path, clock: ManualClock) -> None:
    """Each log has its own genesis, so records copied from another log do not chain."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write_log(a, clock, 3)
    clock.set(T0_MS)
    _write_log(b, clock, 3)
    _store(a, _lines(a)[:2] + _lines(b)[2:])
    v = verify_audit_log(a)
    assert not v.ok and v.first_bad_line is not None and v.first_bad_line <= 3
