"""Checks a candidate policy set in a child process, so a policy can never crash the caller.

The embedded engine aborts the whole process on some inputs it cannot compile (regopy
1.5.2: a test written OPA-style, ``... with input as base``, ends in ``terminate called``
or a segmentation fault). A policy update is untrusted until its tests pass, so the
loader runs the candidate's tests *and* compiles it in a fresh interpreter
(``python -m control_plane.markets.policy.check_child --engine NAME``, the policy
files as JSON on stdin, the verdict as JSON on stdout); only a set that survived both is
compiled again in the calling process. A child that dies, hangs past ``timeout_s`` or
answers nonsense is a refusal with that reason, never a crash.

A fresh interpreter rather than a fork: the caller has threads (and a fork server would
re-import the caller's ``__main__``, which with the CLI brings native libraries the
engine then crashes beside).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

from control_plane.markets.policy.engine import PolicyBackend
from control_plane.markets.policy.policy_set import PolicySet, RegoTest
from control_plane.markets.policy.policy_tests import RegoTestResult

DEFAULT_CHECK_TIMEOUT_S = 120.0
CHILD_MODULE = "control_plane.markets.policy.check_child"


def check_policy_set(policy: PolicySet, backend: PolicyBackend) -> tuple[str, list[RegoTestResult]]:
    """Run the set's tests with ``backend``; ("", results) if loadable, else (why, results).
    In-process: use :func:`check_isolated` for a candidate that is not trusted yet."""
    why = backend.unavailable_reason()
    if why is not None:
        return f"policy engine {backend.name} is unavailable: {why}", []
    results = backend.run_tests(policy)
    if not results:
        return "the policy set has no tests (test_* rules or cases) in *_test.rego files", results
    failed = [r for r in results if not r.passed]
    if failed:
        names = ", ".join(f"{r.test.label} ({r.detail})" for r in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        return f"{len(failed)} of {len(results)} policy tests failed: {names}{more}", results
    return "", results


def check_isolated(
    policy: PolicySet, backend: PolicyBackend, *, timeout_s: float = DEFAULT_CHECK_TIMEOUT_S
) -> tuple[str, list[RegoTestResult]]:
    """:func:`check_policy_set` plus compiling, in a child interpreter (module doc)."""
    request = json.dumps({"files": [list(f) for f in policy.files]})
    # A fixed command: this interpreter, this module, one of our engine names. The policy
    # files travel on stdin, never on the command line.
    cmd = [sys.executable, "-m", CHILD_MODULE, "--engine", backend.name]
    try:
        done = subprocess.run(  # noqa: S603
            cmd, input=request, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return f"the policy check did not finish within {timeout_s:g} s", []
    except OSError as e:
        return f"the policy check could not start: {e}", []
    if done.returncode != 0:
        how = _exit_text(done.returncode)
        return f"the policy check crashed the {backend.name} engine ({how})", []
    try:
        return _verdict(json.loads(done.stdout))
    except (ValueError, KeyError, TypeError):
        return "the policy check answered something that is not a verdict", []


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def _verdict(doc: Any) -> tuple[str, list[RegoTestResult]]:
    results = [
        RegoTestResult(
            RegoTest(str(r["file"]), str(r["package"]), str(r["name"]), bool(r["case"])),
            bool(r["passed"]),
            str(r["detail"]),
        )
        for r in doc["results"]
    ]
    return str(doc["why"]), results
