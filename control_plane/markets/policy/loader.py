"""Loads policy files only when their own Rego tests pass; a bad update keeps the last good set.

``PolicyLoader.reload()`` reads the directory, runs every ``test_*`` rule of the
``*_test.rego`` files through the engine, and only if all pass (and there is at least
one) compiles the policy and swaps it in. Otherwise the previous engine stays and the
:class:`LoadResult` says why. Every attempt is audited as ``policy.load``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from control_plane.markets.policy.engine import PolicyEngine, PolicyEngineError
from control_plane.markets.policy.policy_set import PolicySet, read_policy_dir
from control_plane.markets.policy.rego_engine import RegoEngine, RegoTestResult, run_rego_tests
from security.audit_log import AuditLog
from security.refusals import GridfortError

log = logging.getLogger(__name__)

EngineFactory = Callable[[PolicySet], PolicyEngine]


@dataclass(frozen=True, slots=True)
class LoadResult:
    """The outcome of one load attempt. ``active_version`` is what decides from now on."""

    loaded: bool
    candidate_version: str
    active_version: str | None
    reason: str
    tests: list[RegoTestResult] = field(default_factory=list)

    @property
    def failed_tests(self) -> list[RegoTestResult]:
        return [t for t in self.tests if not t.passed]


def check_policy_set(policy: PolicySet) -> tuple[str, list[RegoTestResult]]:
    """Run the set's tests; return ("", results) if loadable, else (why not, results)."""
    results = run_rego_tests(policy)
    if not results:
        return "the policy set has no test_* rules in *_test.rego files", results
    failed = [r for r in results if not r.passed]
    if failed:
        names = ", ".join(f"{r.test.name} ({r.detail})" for r in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        return f"{len(failed)} of {len(results)} policy tests failed: {names}{more}", results
    return "", results


class PolicyLoader:
    """Holds the active policy engine; :meth:`reload` swaps it only for a tested policy set."""

    def __init__(
        self,
        directory: Path,
        *,
        audit: AuditLog | None = None,
        engine_factory: EngineFactory = RegoEngine,
    ) -> None:
        self._directory = Path(directory)
        self._audit = audit
        self._factory = engine_factory
        self._lock = threading.Lock()
        self._engine: PolicyEngine | None = None

    @property
    def engine(self) -> PolicyEngine | None:
        """The engine of the last good policy set, or None if none was ever loaded."""
        return self._engine

    def reload(self) -> LoadResult:
        with self._lock:
            result = self._reload_locked()
        if self._audit is not None:
            self._audit.append(
                "policy.load",
                decision="allow" if result.loaded else "deny",
                reason="" if result.loaded else "POLICY_NOT_LOADED",
                details={
                    "directory": str(self._directory),
                    "candidate_version": result.candidate_version,
                    "active_version": result.active_version or "",
                    "tests_run": len(result.tests),
                    "tests_failed": [t.test.name for t in result.failed_tests],
                    "message": result.reason,
                },
            )
        if result.loaded:
            log.info("policy %s loaded (%d tests passed)", result.active_version, len(result.tests))
        else:
            log.warning(
                "policy update refused, keeping %s: %s", result.active_version, result.reason
            )
        return result

    def _reload_locked(self) -> LoadResult:
        active = self._engine.policy_version if self._engine is not None else None
        try:
            policy = read_policy_dir(self._directory)
        except (GridfortError, OSError) as e:
            return LoadResult(False, "", active, f"cannot read policies: {e}")
        version = policy.version
        if active == version:
            return LoadResult(True, version, active, "policy unchanged")
        why, tests = check_policy_set(policy)
        if why:
            return LoadResult(False, version, active, why, tests)
        try:
            engine = self._factory(policy)
        except PolicyEngineError as e:
            return LoadResult(False, version, active, str(e), tests)
        self._engine = engine
        return LoadResult(True, version, version, "all policy tests passed", tests)
