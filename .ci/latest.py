"""The newest-release tier's report: run pytest, then one line per family (and per shared test file).

Run by `make test-latest` inside .venv-latest, where every upstream is at the newest release the
registry has. pytest's own output comes first (the failures in full); then the releases under test
and one line per family of the conformance suite: `ok` or `DRIFT` with the failing tests. A test
belongs to the family whose adapter name its id carries (the longest one, so `llava_next` is not
`llava`); tests naming no family are reported by file. Exit status: 0 when nothing drifts, 1 when
anything does, pytest's own when it could not run the tests at all.

    python .ci/latest.py --out reports/latest.xml -- tests/architectures tests/test_compat.py
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPSTREAMS = ("transformers", "nnsight", "torch", "transformer-lens", "accelerate", "huggingface-hub")
# the warning hooked_mllm gives on an untested release is the point of this tier, not a failure
PYTEST = ["-q", "-p", "no:cacheprovider", "-W", "ignore:hooked_mllm was tested with"]


def families() -> list[str]:
    """The adapter names of the conformance suite's families, longest first."""
    sys.path.insert(0, str(ROOT))
    from tests.architectures.families import FAMILIES

    return sorted({family.adapter for family in FAMILIES}, key=len, reverse=True)


def owner(case: ET.Element, names: list[str]) -> str:
    """The family a test case belongs to, or its file when it names none."""
    test = case.get("name", "")
    for name in names:
        if re.search(rf"(\[|-|_){re.escape(name)}(\]|-|_|$)", test):
            return name
    return case.get("classname", "?").rsplit(".", 1)[-1]


def report(xml: Path, names: list[str]) -> dict[str, tuple[int, list[str]]]:
    """Per family or file: (tests passed, failing test names)."""
    passed: dict[str, int] = defaultdict(int)
    failed: dict[str, list[str]] = defaultdict(list)
    for case in ET.parse(xml).getroot().iter("testcase"):
        who = owner(case, names)
        if case.find("failure") is not None or case.find("error") is not None:
            failed[who].append(case.get("name", "?"))
        elif case.find("skipped") is None:
            passed[who] += 1
    return {who: (passed[who], failed[who]) for who in sorted(set(passed) | set(failed))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where pytest writes its JUnit XML")
    parser.add_argument("tests", nargs="+", help="test paths, after --")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    code = subprocess.call([sys.executable, "-m", "pytest", *PYTEST, f"--junitxml={args.out}", *args.tests])
    if not args.out.is_file():
        print(f"newest-release tier: pytest wrote no report (exit {code})")
        return code or 1
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in UPSTREAMS)
    print(f"\nnewest-release tier on {versions}:")
    rows = report(args.out, families())
    drift = False
    for who, (n_passed, failures) in rows.items():
        if failures:
            drift = True
            shown = ", ".join(failures[:4]) + (f" and {len(failures) - 4} more" if len(failures) > 4 else "")
            print(f"  DRIFT {who}: {len(failures)} failed, {n_passed} passed ({shown})")
        else:
            print(f"  ok    {who}: {n_passed} passed")
    if code not in (0, 1):  # interrupted, internal error, usage error: say so even if the cases passed
        print(f"newest-release tier: pytest exited {code}")
        return code
    print("newest-release tier: " + ("DRIFT: see the lines above" if drift else "no drift"))
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())
