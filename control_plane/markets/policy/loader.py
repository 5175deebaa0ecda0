"""Loads policy files only when their own Rego tests pass; a bad update keeps the last good set.

``PolicyLoader.reload()`` reads the directory, runs the set's own tests (``test_*``
rules and ``cases`` tables of the ``*_test.rego`` files) through the configured
backend's engine, and only if all pass (and there is at least one) compiles the policy
with that backend and swaps it in. Otherwise the previous engine stays and the
:class:`LoadResult` says why. Every attempt is audited as ``policy.load``.

The candidate is tested and compiled in a child process first (``isolate=True``, see
:mod:`isolated_check`): a policy that crashes the engine is refused like one that fails
its tests, and the control plane keeps running on the last good set.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from control_plane.markets.policy.engine import PolicyBackend, PolicyEngine, PolicyEngineError
from control_plane.markets.policy.isolated_check import (
    DEFAULT_CHECK_TIMEOUT_S,
    check_isolated,
    check_policy_set,
)
from control_plane.markets.policy.policy_set import read_policy_dir
from control_plane.markets.policy.policy_tests import RegoTestResult
from control_plane.markets.policy.rego_engine import RegoBackend
from security.audit_log import AuditLog
from security.refusals import GridfortError

log = logging.getLogger(__name__)


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


class PolicyLoader:
    """Holds the active policy engine; :meth:`reload` swaps it only for a tested policy set."""

    def __init__(
        self,
        directory: Path,
        *,
        audit: AuditLog | None = None,
        backend: PolicyBackend | None = None,
        isolate: bool = True,
        check_timeout_s: float = DEFAULT_CHECK_TIMEOUT_S,
    ) -> None:
        self._directory = Path(directory)
        self._audit = audit
        self._backend = backend or RegoBackend()
        self._isolate = isolate
        self._check_timeout_s = check_timeout_s
        self._lock = threading.Lock()
        self._engine: PolicyEngine | None = None
        self._last_failure = "no policy load was attempted"

    @property
    def engine(self) -> PolicyEngine | None:
        """The engine of the last good policy set, or None if none was ever loaded."""
        return self._engine

    @property
    def engine_name(self) -> str:
        return self._backend.name

    def why_no_engine(self) -> str:
        """Why :attr:`engine` is None (the last refusal); for the gate's deny reason."""
        return self._last_failure

    def reload(self) -> LoadResult:
        with self._lock:
            result = self._reload_locked()
            if not result.loaded:
                self._last_failure = result.reason
        if self._audit is not None:
            self._audit.append(
                "policy.load",
                decision="allow" if result.loaded else "deny",
                reason="" if result.loaded else "POLICY_NOT_LOADED",
                details={
                    "engine": self._backend.name,
                    "directory": str(self._directory),
                    "candidate_version": result.candidate_version,
                    "active_version": result.active_version or "",
                    "tests_run": len(result.tests),
                    "tests_failed": [t.test.label for t in result.failed_tests],
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
        missing = self._backend.unavailable_reason()
        if missing is not None:
            why = f"policy engine {self._backend.name} is unavailable: {missing}"
            return LoadResult(False, version, active, why)
        if self._isolate:
            why, tests = check_isolated(policy, self._backend, timeout_s=self._check_timeout_s)
        else:
            why, tests = check_policy_set(policy, self._backend)
        if why:
            return LoadResult(False, version, active, why, tests)
        try:
            engine = self._backend.compile(policy)
        except PolicyEngineError as e:
            return LoadResult(False, version, active, str(e), tests)
        self._engine = engine
        return LoadResult(True, version, version, "all policy tests passed", tests)


__all__ = ["LoadResult", "PolicyLoader", "check_policy_set"]
