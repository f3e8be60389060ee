"""make test-matrix: for each ansible-core version, ansible-test sanity, the unit tests, the
real-awx.awx check and the installed collection's SD pipeline in the sandbox (with
`ansible-builder create`), then one summary line per version.

2.19 runs in the project's virtualenv (Python 3.11); 2.20 and 2.21 in the Python 3.13 root
(tests/matrix/pyroot.py). Each step's output goes to .build/matrix/VERSION/STEP.log; a failing
step prints its tail.

Usage: run.py [--steps sanity,unit,e2e] VERSION...
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyroot  # noqa: E402

STEPS = ("sanity", "unit", "e2e")
VENV_BIN = REPO / ".venv" / "bin"
SANDBOXCTL = REPO / "tests" / "sandbox" / "sandboxctl"


def bin_dir(version: str) -> Path:
    return VENV_BIN if version == "2.19" else pyroot.ensure(version)


def command(step: str, bindir: Path) -> list[str]:
    make = ["make", "--no-print-directory", "-C", str(REPO)]
    if step == "sanity":
        # a version's first run also installs ansible-test's tool virtualenvs for its Python
        return [*make, "sanity", f"BIN={bindir}", "SANITY_TIMEOUT=3600"]
    if step == "unit":
        return [*make, "unit", f"BIN={bindir}", "PYTEST_ARGS=-q -p no:cacheprovider"]
    tests = ["tests/integration/test_awx_real_modules.py", "tests/matrix/test_installed_pipeline.py"]
    return [str(VENV_BIN / "pytest"), "-p", "no:xdist", "-p", "no:cacheprovider", "-q", *tests]


def outcome(step: str, log: str, rc: int) -> str:
    """'ok' or 'FAILED', with pytest's counts where there are some."""
    counts = re.findall(
        r"(\d+ (?:passed|failed|xfailed|xpassed|error|errors|skipped))", log.splitlines()[-1] if log else ""
    )
    word = "ok" if rc == 0 else "FAILED"
    return f"{word} ({', '.join(counts)})" if counts and step != "sanity" else word


def run_step(version: str, step: str, bindir: Path) -> tuple[str, float]:
    logdir = REPO / ".build" / "matrix" / version
    logdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NIXFORGE_ANSIBLE_BIN": str(bindir)}
    started = time.monotonic()
    proc = subprocess.run(command(step, bindir), cwd=REPO, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    log = proc.stdout + proc.stderr
    (logdir / f"{step}.log").write_text(log)
    result = outcome(step, proc.stdout.strip(), proc.returncode)
    print(f"   {version} {step}: {result} in {elapsed:.0f} s (log: {logdir / f'{step}.log'})", flush=True)
    if proc.returncode:
        print("\n".join(log.splitlines()[-40:]), flush=True)
    return result, elapsed


def core_version(bindir: Path) -> str:
    code = "import sys, ansible.release as r; print(r.__version__, '%d.%d.%d' % sys.version_info[:3])"
    out = subprocess.run([str(bindir / "python"), "-c", code], capture_output=True, text=True, check=True).stdout
    core, python = out.split()
    return f"ansible-core {core} (Python {python})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("versions", nargs="+", choices=("2.19", *pyroot.VERSIONS))
    args = parser.parse_args()
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    started_sandbox = False
    if "e2e" in steps and subprocess.run([str(SANDBOXCTL), "env"], capture_output=True, check=False).returncode:
        subprocess.run([str(SANDBOXCTL), "up"], check=True)
        started_sandbox = True
    summary, failed = [], False
    try:
        for version in args.versions:
            started = time.monotonic()
            print(f"== ansible-core {version}", flush=True)
            bindir = bin_dir(version)
            parts = []
            for step in steps:
                result, elapsed = run_step(version, step, bindir)
                failed |= not result.startswith("ok")
                parts.append(f"{step} {result} {elapsed:.0f}s")
            total = time.monotonic() - started
            summary.append(f"{core_version(bindir)}: {'; '.join(parts)} [{total:.0f}s]")
    finally:
        if started_sandbox:
            subprocess.run([str(SANDBOXCTL), "down"], check=False)
    print("== test-matrix summary")
    print("\n".join(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
