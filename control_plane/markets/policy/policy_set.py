"""A set of policy files, read once, with its version: SHA-256 over the sorted files."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from security.refusals import GridfortError

MAX_POLICY_FILE_BYTES = 1 << 20
_PACKAGE_RE = re.compile(r"^package\s+([A-Za-z_][A-Za-z0-9_.]*)\s*$", re.MULTILINE)
_TEST_RULE_RE = re.compile(r"^(test_[A-Za-z0-9_]+)\b", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class RegoTest:
    """One ``test_*`` rule: its package and name (``data.<package>.<name>`` must be true)."""

    file: str
    package: str
    name: str

    @property
    def ref(self) -> str:
        return f"data.{self.package}.{self.name}"

    @property
    def entrypoint(self) -> str:
        return f"{self.package.replace('.', '/')}/{self.name}"


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
    def policy_files(self) -> tuple[tuple[str, str], ...]:
        return tuple(f for f in self.files if not f[0].endswith("_test.rego"))

    def tests(self) -> list[RegoTest]:
        """Every ``test_*`` rule of the ``*_test.rego`` files, found in the source text."""
        found: list[RegoTest] = []
        for name, source in self.files:
            if not name.endswith("_test.rego"):
                continue
            package = _PACKAGE_RE.search(source)
            if package is None:
                continue
            seen: set[str] = set()
            for m in _TEST_RULE_RE.finditer(source):
                if m.group(1) not in seen:
                    seen.add(m.group(1))
                    found.append(RegoTest(name, package.group(1), m.group(1)))
        return found


def read_policy_dir(directory: Path) -> PolicySet:
    """All ``*.rego`` files directly in ``directory``; GridfortError if there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise GridfortError(f"policy directory {directory} does not exist")
    files: list[tuple[str, str]] = []
    for path in sorted(directory.glob("*.rego")):
        data = path.read_bytes()
        if len(data) > MAX_POLICY_FILE_BYTES:
            raise GridfortError(f"policy file {path.name} is larger than {MAX_POLICY_FILE_BYTES} B")
        try:
            files.append((path.name, data.decode("utf-8")))
        except UnicodeDecodeError:
            raise GridfortError(f"policy file {path.name} is not UTF-8") from None
    if not files:
        raise GridfortError(f"no .rego files in {directory}")
    return PolicySet(tuple(files))
