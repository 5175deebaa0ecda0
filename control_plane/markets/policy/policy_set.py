"""A set of policy files, read once, with its version: SHA-256 over the sorted files.

``*.rego`` files are modules; ``*.json`` files are data documents, each a JSON object
merged into the root of ``data`` (the policy's parameters: ``policies/market_params.json``
becomes ``data.gridfort.market_params``). Data is part of the version like the modules.

A policy set's own tests live in its ``*_test.rego`` files, in two forms: ``test_*`` rules
(true when the test passes) and a ``cases`` table of input documents with the expected
decision (see ``policies/market_test.rego``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from security.refusals import GridfortError

MAX_POLICY_FILE_BYTES = 1 << 20
_PACKAGE_RE = re.compile(r"^package\s+([A-Za-z_][A-Za-z0-9_.]*)\s*$", re.MULTILINE)
_TEST_RULE_RE = re.compile(r"^(test_[A-Za-z0-9_]+)\b", re.MULTILINE)
_CASES_RE = re.compile(r"^cases\s*:=", re.MULTILINE)
CASES_RULE = "cases"


@dataclass(frozen=True, slots=True)
class RegoTest:
    """One test: a ``test_*`` rule (``data.<package>.<name>`` must be true), or, with
    ``case=True``, one entry ``name`` of the package's ``cases`` table."""

    file: str
    package: str
    name: str
    case: bool = False

    @property
    def label(self) -> str:
        """``<package>.<rule>`` or ``<package>.cases.<name>``, as reports print it."""
        if self.case:
            return f"{self.package}.{CASES_RULE}.{self.name}"
        return f"{self.package}.{self.name}"

    @property
    def ref(self) -> str:
        """The rule to evaluate: the test rule, or the whole ``cases`` table."""
        return f"data.{self.package}.{CASES_RULE if self.case else self.name}"


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Policy files as ``(name, source)`` pairs sorted by name, and their version."""

    files: tuple[tuple[str, str], ...]

    @property
    def version(self) -> str:
        """SHA-256 (hex) over each file's name and contents, in name order."""
        h = hashlib.sha256()
        for name, source in self.files:
            h.update(name.encode() + b"\0" + source.encode() + b"\0")
        return h.hexdigest()

    @property
    def modules(self) -> tuple[tuple[str, str], ...]:
        """Every ``.rego`` file, tests included."""
        return tuple(f for f in self.files if f[0].endswith(".rego"))

    @property
    def policy_files(self) -> tuple[tuple[str, str], ...]:
        """The ``.rego`` modules that decide (not the tests)."""
        return tuple(f for f in self.modules if not f[0].endswith("_test.rego"))

    def data_documents(self) -> list[tuple[str, dict[str, Any]]]:
        """``(file, object)`` of every ``.json`` data file, parsed (checked when read)."""
        return [(name, json.loads(src)) for name, src in self.files if name.endswith(".json")]

    def tests(self) -> list[RegoTest]:
        """Every ``test_*`` rule of the ``*_test.rego`` files, found in the source text."""
        found: list[RegoTest] = []
        for name, package, source in self._test_files():
            seen: set[str] = set()
            for m in _TEST_RULE_RE.finditer(source):
                if m.group(1) not in seen:
                    seen.add(m.group(1))
                    found.append(RegoTest(name, package, m.group(1)))
        return found

    def case_tables(self) -> list[tuple[str, str]]:
        """``(file, package)`` of every ``*_test.rego`` file that defines a ``cases`` table."""
        return [(name, pkg) for name, pkg, source in self._test_files() if _CASES_RE.search(source)]

    def _test_files(self) -> list[tuple[str, str, str]]:
        found: list[tuple[str, str, str]] = []
        for name, source in self.files:
            if not name.endswith("_test.rego"):
                continue
            package = _PACKAGE_RE.search(source)
            if package is not None:
                found.append((name, package.group(1), source))
        return found


def read_policy_dir(directory: Path) -> PolicySet:
    """All ``*.rego`` and ``*.json`` files directly in ``directory``; GridfortError if there
    is no ``.rego`` file, or a ``.json`` file is not one JSON object."""
    directory = Path(directory)
    if not directory.is_dir():
        raise GridfortError(f"policy directory {directory} does not exist")
    files: list[tuple[str, str]] = []
    for path in sorted([*directory.glob("*.rego"), *directory.glob("*.json")]):
        data = path.read_bytes()
        if len(data) > MAX_POLICY_FILE_BYTES:
            raise GridfortError(f"policy file {path.name} is larger than {MAX_POLICY_FILE_BYTES} B")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise GridfortError(f"policy file {path.name} is not UTF-8") from None
        if path.suffix == ".json":
            try:
                doc = json.loads(text)
            except ValueError as e:
                raise GridfortError(f"data file {path.name} is not JSON: {e}") from None
            if not isinstance(doc, dict):
                raise GridfortError(f"data file {path.name} is not a JSON object")
        files.append((path.name, text))
    if not any(name.endswith(".rego") for name, _ in files):
        raise GridfortError(f"no .rego files in {directory}")
    return PolicySet(tuple(files))
