"""The hash-chained, append-only audit log (JSON Lines) and its offline verifier.

One record per line, in canonical JSON (keys sorted, no spaces, ASCII only)::

    {"decision":"deny","details":{...},"event":"enrollment","hash":"<hex>",
     "identity":"spiffe://...","prev":"<hex>","reason":"TOKEN_EXPIRED","seq":7,"ts_ms":...}

``hash`` is SHA-256 over the canonical JSON of the record without ``hash``;
``prev`` is the ``hash`` of the record before it, and ``seq`` counts up from 0.

Genesis: record 0 of every log is an ``audit.genesis`` record written when the
file is created. Its ``prev`` is 64 zeros and its details hold the format name
and a random 128-bit ``log_id``, so every log's chain starts from a value
unique to that file: records cannot be spliced in from another log, and no
chain can be precomputed before the log exists.

What the chain proves, and what it cannot: any edit, deletion, insertion or
reordering *inside* the log is detected and located by :func:`verify_audit_log`.
Removing records from the *end* of the log, or rewriting the whole log, leaves
a valid chain; to detect that, anchor the head hash somewhere the writer cannot
change (print it in reports, ship it to the SOC) and compare it with
``AuditVerification.head_hash``.

Several writers may share one log: threads of a process, and processes (the
``gridfort`` CLI next to a running control plane). Each append holds an
exclusive ``flock`` on the file while it writes its one line, and first
re-reads the tail if another writer appended since its own last record, so
the chain never forks.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from security.atomic_files import write_bytes_atomic
from security.clock import Clock
from security.identity import SpiffeId
from security.refusals import GridfortError, Refusal

GENESIS_PREV = "0" * 64
GENESIS_EVENT = "audit.genesis"
FORMAT = "gridfort-audit/1"
DECISIONS = frozenset({"allow", "deny", "info"})
MAX_DETAILS_DEPTH = 16
_FIELDS = frozenset(
    {"seq", "ts_ms", "event", "decision", "identity", "reason", "details", "prev", "hash"}
)
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_TAIL_BLOCK = 64 * 1024


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One record of the log, as written."""

    seq: int
    ts_ms: int
    event: str
    decision: str
    identity: str
    reason: str
    details: Mapping[str, object]
    prev: str
    hash: str

    def to_dict(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "ts_ms": self.ts_ms,
            "event": self.event,
            "decision": self.decision,
            "identity": self.identity,
            "reason": self.reason,
            "details": self.details,
            "prev": self.prev,
            "hash": self.hash,
        }


def canonical_json(value: object) -> bytes:
    """The one serialization hashed and written: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def record_hash(record: Mapping[str, object]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``record`` without its ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def coerce_details(details: Mapping[str, object] | None) -> dict[str, object]:
    """``details`` as plain JSON values: bytes become hex, enums their value, SPIFFE IDs URIs.

    Non-finite floats become strings. Anything else that is not a JSON scalar,
    mapping or sequence raises TypeError (an audit record must not guess).
    """
    if details is None:
        return {}
    coerced = _json_value(details, 0)
    assert isinstance(coerced, dict)
    return coerced


def _json_value(value: object, depth: int) -> object:
    if depth > MAX_DETAILS_DEPTH:
        raise ValueError(f"audit details are nested deeper than {MAX_DETAILS_DEPTH} levels")
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, SpiffeId):
        return value.uri
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"audit detail keys must be strings, got {type(key).__name__}")
            out[key] = _json_value(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_value(item, depth + 1) for item in value]
    if isinstance(value, set | frozenset):
        items = [_json_value(item, depth + 1) for item in value]
        return sorted(items, key=canonical_json)
    raise TypeError(f"audit details cannot hold a {type(value).__name__}")


# -- the writer ----------------------------------------------------------------------------------


class AuditLog:
    """Appends records to one hash-chained JSON Lines file; safe for many threads and processes."""

    def __init__(self, path: Path, clock: Clock, *, fsync: bool = False) -> None:
        self._path = Path(path)
        self._clock = clock
        self._fsync = fsync
        self._lock = threading.Lock()
        self._broken = False
        if not self._path.exists():
            _create(self._path, clock)
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            with _exclusive(fd):
                self._last_seq, self._last_hash = _resume(self._path)
                self._known_size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    @property
    def path(self) -> Path:
        return self._path

    @property
    def head_hash(self) -> str:
        """Hash of the newest record this writer knows: the value to anchor outside the log."""
        with self._lock:
            return self._last_hash

    def append(
        self,
        event: str,
        *,
        decision: str,
        identity: str = "",
        reason: str = "",
        details: Mapping[str, object] | None = None,
    ) -> AuditRecord:
        """Append one record and flush it to the OS (and to disk if ``fsync``)."""
        if not isinstance(event, str) or not event:
            raise ValueError("audit event must be a non-empty string")
        decision = str(decision.value if isinstance(decision, enum.Enum) else decision)
        if decision not in DECISIONS:
            raise ValueError(f"audit decision must be one of {sorted(DECISIONS)}, got {decision!r}")
        if not isinstance(identity, str) or not isinstance(reason, str):
            raise ValueError("audit identity and reason must be strings")
        details_ = coerce_details(details)
        with self._lock:
            if self._fd is None:
                raise GridfortError(f"audit log {self._path} is closed")
            if self._broken:
                raise GridfortError(
                    f"audit log {self._path} stopped accepting records after a failed write; "
                    "run `gridfort audit verify` and restart"
                )
            with _exclusive(self._fd):
                return self._append_locked(self._fd, event, decision, identity, reason, details_)

    def _append_locked(
        self,
        fd: int,
        event: str,
        decision: str,
        identity: str,
        reason: str,
        details: dict[str, object],
    ) -> AuditRecord:
        size = os.fstat(fd).st_size
        if size != self._known_size:  # another writer appended: continue from its record
            self._last_seq, self._last_hash = _resume(self._path)
        ts_ms = self._clock.now_ms()
        body: dict[str, object] = {
            "seq": self._last_seq + 1,
            "ts_ms": ts_ms,
            "event": event,
            "decision": decision,
            "identity": identity,
            "reason": reason,
            "details": details,
            "prev": self._last_hash,
        }
        digest = record_hash(body)
        line = canonical_json({**body, "hash": digest}) + b"\n"
        try:
            _write_all(fd, line)
            if self._fsync:
                os.fsync(fd)
        except OSError as e:
            # A partial line may be on disk: never append after it (fail closed).
            self._broken = True
            raise GridfortError(f"cannot write audit log {self._path}: {e.strerror}") from e
        record = AuditRecord(
            seq=self._last_seq + 1,
            ts_ms=ts_ms,
            event=event,
            decision=decision,
            identity=identity,
            reason=reason,
            details=details,
            prev=self._last_hash,
            hash=digest,
        )
        self._last_seq, self._last_hash = record.seq, digest
        self._known_size = size + len(line)
        return record

    def record_refusal(self, refusal: Refusal, *, event: str) -> AuditRecord:
        """The one way a refusal reaches the audit log: decision "deny", reason = its code."""
        return self.append(
            event,
            decision="deny",
            identity=refusal.identity,
            reason=refusal.reason.value,
            details={**refusal.details, "message": refusal.message},
        )

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def _exclusive(fd: int) -> Iterator[None]:
    """Hold the exclusive advisory lock on the log file (shared by all its writers)."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _create(path: Path, clock: Clock) -> None:
    """Create the log with its genesis record, atomically, mode 0600; never clobber."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body: dict[str, object] = {
        "seq": 0,
        "ts_ms": clock.now_ms(),
        "event": GENESIS_EVENT,
        "decision": "info",
        "identity": "",
        "reason": "",
        "details": {"format": FORMAT, "log_id": secrets.token_hex(16)},
        "prev": GENESIS_PREV,
    }
    line = canonical_json({**body, "hash": record_hash(body)}) + b"\n"
    # Linked into place, never renamed over: if another process created the log
    # first, keep its file (the flock then decides who may write).
    with contextlib.suppress(FileExistsError):
        write_bytes_atomic(path, line, 0o600, overwrite=False)


def _resume(path: Path) -> tuple[int, str]:
    """(seq, hash) of the last record, after checking the last two records are sound."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        pos, tail = size, b""
        while pos > 0 and tail.count(b"\n") < 3:
            step = min(_TAIL_BLOCK, pos)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail

    def refuse(why: str) -> GridfortError:
        return GridfortError(
            f"audit log {path} cannot be resumed: {why}; "
            f"run `gridfort audit verify {path}` to find out what happened"
        )

    if not tail:
        raise refuse("the file is empty (its genesis record is missing)")
    if not tail.endswith(b"\n"):
        raise refuse("the last line is truncated")
    lines = tail.split(b"\n")[:-1]
    if pos > 0:
        lines = lines[1:]  # the first piece may be a partial line
    parsed = [_parse_line(raw) for raw in lines[-2:]]
    for item in parsed:
        if isinstance(item, str):
            raise refuse(f"a record at the end is not valid ({item})")
        if not item.hash_ok or not item.canonical:
            raise refuse("a record at the end does not match its hash")
    last = parsed[-1]
    assert not isinstance(last, str)
    if len(parsed) == 2:
        before = parsed[0]
        assert not isinstance(before, str)
        if last.record.prev != before.record.hash or last.record.seq != before.record.seq + 1:
            raise refuse("the last two records do not chain")
    elif last.record.seq != 0 or last.record.prev != GENESIS_PREV:
        raise refuse("its only record is not a genesis record")
    return last.record.seq, last.record.hash


# -- the verifier --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """The answer of :func:`verify_audit_log`. ``records`` counts the records verified good."""

    ok: bool
    records: int
    first_bad_line: int | None
    first_bad_seq: int | None
    problem: str
    path: str = ""
    head_hash: str = ""


@dataclass(frozen=True, slots=True)
class _Parsed:
    record: AuditRecord
    hash_ok: bool
    canonical: bool


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


def _parse_line(raw: bytes) -> _Parsed | str:
    """A parsed record, or a short description of why the line is not one."""
    if not raw:
        return "empty line"
    try:
        obj = json.loads(
            raw.decode("ascii"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "not a JSON record"
    if not isinstance(obj, dict):
        return "not a JSON object"
    if set(obj) != _FIELDS:
        return "fields missing or unexpected"
    ints = (obj["seq"], obj["ts_ms"])
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or obj["seq"] < 0:
        return "seq/ts_ms are not integers"
    strings = (obj["event"], obj["decision"], obj["identity"], obj["reason"], obj["prev"])
    if not all(isinstance(v, str) for v in (*strings, obj["hash"])):
        return "a text field is not a string"
    if obj["decision"] not in DECISIONS or not isinstance(obj["details"], dict):
        return "bad decision or details"
    if not _HEX64_RE.fullmatch(obj["prev"]) or not _HEX64_RE.fullmatch(obj["hash"]):
        return "prev/hash are not SHA-256 hex"
    record = AuditRecord(**obj)
    return _Parsed(record, record_hash(obj) == obj["hash"], canonical_json(obj) == raw)


def verify_audit_log(path: Path) -> AuditVerification:
    """Check the whole chain offline; on failure, locate the FIRST tampered record.

    Line numbers are 1-based. Kinds of damage told apart: edited record (hash
    mismatch), edited record whose hash was recomputed (the next record's
    ``prev`` breaks), deleted records (seq gap), reordered records, inserted
    records, garbage lines and a truncated final line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        return AuditVerification(False, 0, None, None, f"cannot read: {e.strerror}", str(path))
    if not data:
        problem = "empty file: the genesis record is missing"
        return AuditVerification(False, 0, None, None, problem, str(path))
    raw_lines = data.split(b"\n")
    truncated = raw_lines[-1] != b""
    if not truncated:
        raw_lines.pop()
    parsed = [_parse_line(raw) for raw in raw_lines]
    expected_seq, prev_hash = 0, GENESIS_PREV
    for index, item in enumerate(parsed):
        if truncated and index == len(parsed) - 1:
            return _tampered(
                path, index, None, "truncated final line — the last write was cut short"
            )
        if isinstance(item, str):
            return _tampered(path, index, None, f"garbage line — {item}")
        rec = item.record
        if not item.hash_ok:
            return _tampered(path, index, rec.seq, "hash mismatch — record contents were modified")
        if not item.canonical:
            problem = "record is not in canonical form — the line was rewritten"
            return _tampered(path, index, rec.seq, problem)
        if rec.seq > expected_seq:
            return _seq_jumped(path, parsed, index, expected_seq)
        if rec.seq < expected_seq:
            return _seq_went_back(path, parsed, index, expected_seq)
        if rec.prev != prev_hash:
            return _chain_broken(path, parsed, index)
        if rec.seq == 0 and rec.event != GENESIS_EVENT:
            return _tampered(path, index, 0, "the first record is not the genesis record")
        prev_hash, expected_seq = rec.hash, expected_seq + 1
    return AuditVerification(True, len(parsed), None, None, "", str(path), prev_hash)


def _tampered(path: Path, index: int, seq: int | None, problem: str) -> AuditVerification:
    # Every line before the first bad one verified good.
    return AuditVerification(False, index, index + 1, seq, problem, str(path))


def _record_at(parsed: list[_Parsed | str], index: int) -> AuditRecord | None:
    item = parsed[index] if 0 <= index < len(parsed) else None
    return None if item is None or isinstance(item, str) else item.record


def _seq_jumped(
    path: Path, parsed: list[_Parsed | str], index: int, expected_seq: int
) -> AuditVerification:
    """A record's seq is ahead of the expected one: reordered if the expected one comes later."""
    rec = _record_at(parsed, index)
    assert rec is not None
    for later in range(index + 1, len(parsed)):
        other = _record_at(parsed, later)
        if other is not None and other.seq == expected_seq:
            problem = f"records reordered — seq {expected_seq} comes later, at line {later + 1}"
            return _tampered(path, index, rec.seq, problem)
    missing = (
        f"seq {expected_seq}"
        if rec.seq == expected_seq + 1
        else f"seqs {expected_seq}..{rec.seq - 1}"
    )
    return _tampered(path, index, expected_seq, f"seq gap: {missing} missing — record(s) deleted")


def _seq_went_back(
    path: Path, parsed: list[_Parsed | str], index: int, expected_seq: int
) -> AuditVerification:
    """A record's seq repeats or goes back: a duplicate, an insertion before it, or a reorder."""
    rec = _record_at(parsed, index)
    assert rec is not None
    twin_index = next(
        (i for i in range(index - 1, -1, -1) if (o := _record_at(parsed, i)) and o.seq == rec.seq),
        None,
    )
    if twin_index is not None:
        twin = _record_at(parsed, twin_index)
        assert twin is not None
        if twin.hash == rec.hash:
            problem = f"record duplicated — same as line {twin_index + 1}"
            return _tampered(path, index, rec.seq, problem)
        before = _record_at(parsed, twin_index - 1)
        before_hash = GENESIS_PREV if twin_index == 0 else (before.hash if before else None)
        if rec.prev == before_hash:
            # This record chains to the one before its twin: the twin was inserted.
            problem = f"record inserted — the genuine seq {rec.seq} is at line {index + 1}"
            return _tampered(path, twin_index, rec.seq, problem)
    problem = f"seq went back (expected {expected_seq}) — records reordered"
    return _tampered(path, index, rec.seq, problem)


def _chain_broken(path: Path, parsed: list[_Parsed | str], index: int) -> AuditVerification:
    """``prev`` of the record at ``index`` does not match the record before it; who is to blame?

    If the previous record was edited and its hash recomputed, this record is
    genuine and the next one still chains to it. If this record was forged,
    the next record does not chain to it. With no next record, the edited
    previous record is the likelier story (a forger would have copied ``prev``).
    """
    rec = _record_at(parsed, index)
    assert rec is not None
    nxt = parsed[index + 1] if index + 1 < len(parsed) else None
    next_chains = nxt is None or (
        not isinstance(nxt, str) and nxt.hash_ok and nxt.record.prev == rec.hash
    )
    previous = _record_at(parsed, index - 1)
    if next_chains and previous is not None:
        problem = (
            "record was modified and its hash recomputed — the next record's prev no longer matches"
        )
        return _tampered(path, index - 1, previous.seq, problem)
    problem = "hash chain broken — prev does not match the previous record (record replaced)"
    return _tampered(path, index, rec.seq, problem)


def format_verification(v: AuditVerification) -> str:
    """The one-line human answer."""
    if v.ok:
        return f"audit log {v.path}: OK — {v.records} records, chain intact, head {v.head_hash}"
    if v.first_bad_line is None:
        return f"audit log {v.path}: CANNOT VERIFY — {v.problem}"
    where = f"line {v.first_bad_line}"
    if v.first_bad_seq is not None:
        where += f" (seq {v.first_bad_seq})"
    return f"audit log {v.path}: TAMPERED at {where}: {v.problem}"
