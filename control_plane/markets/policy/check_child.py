"""The child process of :mod:`isolated_check`: tests and compiles one policy set.

``python -m control_plane.markets.policy.check_child --engine NAME`` reads
``{"files": [[name, source], ...]}`` on stdin and prints ``{"why": "", "results": [...]}``
on stdout; it exits 0 whenever it could answer. If the engine crashes the process, the
parent sees the signal and refuses the set.
"""

from __future__ import annotations

import argparse
import json
import sys

from control_plane.markets.policy.backends import backend_for
from control_plane.markets.policy.isolated_check import check_policy_set
from control_plane.markets.policy.policy_set import PolicySet


def main(engine: str) -> int:
    """Read the files, test and compile, print the verdict. Exit 0 whenever it answered."""
    files = json.load(sys.stdin)["files"]
    policy = PolicySet(tuple((str(name), str(source)) for name, source in files))
    backend = backend_for(engine)
    try:
        why, results = check_policy_set(policy, backend)
        if not why:
            backend.compile(policy)  # the engine must build too, here and not in the caller
    except Exception as e:
        why, results = f"the policy check failed: {type(e).__name__}: {e}", []
    out = {
        "why": why,
        "results": [
            {
                "file": r.test.file,
                "package": r.test.package,
                "name": r.test.name,
                "case": r.test.case,
                "passed": r.passed,
                "detail": r.detail,
            }
            for r in results
        ],
    }
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="check a policy set (internal)")
    parser.add_argument("--engine", required=True)
    sys.exit(main(parser.parse_args().engine))
