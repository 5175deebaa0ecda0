"""``gridfort audit verify`` on a real audit log written by a running control plane.

The control plane refuses a forged batch and a wrong-role client, then stops;
the real CLI (a subprocess) must accept the intact log and, after one record
is tampered with, exit 1 naming the first bad line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.embedded import EmbeddedSystem
from edge_node.credentials import EdgeCredentials
from security.audit_log import canonical_json, record_hash
from security.envelope import EnvelopeSigner
from security.identity import Role, SpiffeId
from tests.conftest import TRUST_DOMAIN
from tests.e2e.raw_link import RawLink, make_batch, sign_batch

EnrollSite = Callable[[str], Awaitable[EdgeCredentials]]

GRIDFORT = Path(sys.executable).with_name("gridfort")


def run_cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRIDFORT), "audit", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
async def refused_log(system: EmbeddedSystem, enroll_site: EnrollSite) -> Path:
    """The audit log of a control plane that refused things, closed by a clean stop."""
    creds = await enroll_site("s1")
    now = system.clock.now_ms()
    link = RawLink.for_edge(system.link_endpoints[0], creds)
    try:
        forger = EnvelopeSigner(Ed25519PrivateKey.generate(), str(creds.spiffe_id))
        forged = sign_batch(forger, make_batch("s1", 1, now), now)
        forged.key_id = creds.signer.key_id
        await link.send_envelope(forged)
        assert (await link.recv_receipt()).reason == "BAD_SIGNATURE"
        await link.send_envelope(sign_batch(creds.signer, make_batch("s1", 1, now), now))
        assert (await link.recv_receipt()).committed == 1
    finally:
        await link.close()
    key_pem, issued = system.control_plane.ca.issue_with_new_key(
        SpiffeId(TRUST_DOMAIN, Role.OPERATOR, "mallory")
    )
    intruder = RawLink(
        system.link_endpoints[0],
        key_pem=key_pem,
        chain_pem=issued.chain_pem,
        bundle_pem=system.control_plane.ca.trust_bundle_pem(),
        target_name=creds.target_name(),
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await intruder.recv()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await intruder.close()
    path = system.control_plane.audit.path
    await system.stop()  # the writer is closed: nothing appends while we tamper
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def deny_line(lines: list[bytes], reason: str) -> int:
    """0-based index of the first deny record with ``reason``."""
    for i, raw in enumerate(lines):
        record = json.loads(raw)
        if record["decision"] == "deny" and record["reason"] == reason:
            return i
    raise AssertionError(f"no deny record with reason {reason}")


def test_intact_log_of_a_refusing_control_plane_verifies(refused_log: Path) -> None:
    records = [json.loads(raw) for raw in lines_of(refused_log)]
    reasons = {r["reason"] for r in records if r["decision"] == "deny"}
    assert {"BAD_SIGNATURE", "ROLE_NOT_ALLOWED"} <= reasons
    done = run_cli(refused_log)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"OK — {len(records)} records, chain intact" in done.stdout
    assert records[-1]["hash"] in done.stdout  # the head hash, to anchor elsewhere


def test_refusal_rewritten_as_allow_is_detected_and_located(refused_log: Path) -> None:
    lines = lines_of(refused_log)
    i = deny_line(lines, "BAD_SIGNATURE")
    record = json.loads(lines[i])
    record.update(decision="allow", reason="")  # cover up the forged batch
    lines[i] = canonical_json(record) + b"\n"
    refused_log.write_bytes(b"".join(lines))
    done = run_cli(refused_log)
    assert done.returncode == 1, done.stdout
    assert f"TAMPERED at line {i + 1} (seq {record['seq']}): hash mismatch" in done.stdout


def test_edited_record_with_recomputed_hash_is_located(refused_log: Path) -> None:
    lines = lines_of(refused_log)
    i = deny_line(lines, "BAD_SIGNATURE")
    assert i + 1 < len(lines)  # later records chain to the genuine hash
    record = json.loads(lines[i])
    record["identity"] = "spiffe://gridfort.test/operator/alice"  # blame someone else
    record["hash"] = record_hash(record)
    lines[i] = canonical_json(record) + b"\n"
    refused_log.write_bytes(b"".join(lines))
    done = run_cli(refused_log)
    assert done.returncode == 1, done.stdout
    assert f"TAMPERED at line {i + 1} (seq {record['seq']})" in done.stdout
    assert "hash recomputed" in done.stdout


def test_deleted_refusal_is_detected_and_located(refused_log: Path) -> None:
    lines = lines_of(refused_log)
    i = deny_line(lines, "BAD_SIGNATURE")
    seq = json.loads(lines[i])["seq"]
    del lines[i]
    refused_log.write_bytes(b"".join(lines))
    done = run_cli(refused_log)
    assert done.returncode == 1, done.stdout
    assert f"TAMPERED at line {i + 1} (seq {seq}): seq gap: seq {seq} missing" in done.stdout


def test_truncated_last_record_is_detected(refused_log: Path) -> None:
    data = refused_log.read_bytes()
    refused_log.write_bytes(data[:-20])
    done = run_cli(refused_log)
    assert done.returncode == 1, done.stdout
    assert f"TAMPERED at line {len(data.splitlines())}" in done.stdout
    assert "truncated final line" in done.stdout
