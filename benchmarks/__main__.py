"""Fetch benchmark: the nixos_image role's fetch, end to end, against scp + sha256sum.

    python -m benchmarks [--size-mib 1024] [--rounds 3] [--methods ssh,rsync] [--check]
    (make benchmark; it then runs the B2 upload benchmark, benchmarks/b2_upload.py, twice)

Boots one host in the sandbox (instance NIXFORGE_SANDBOX_INSTANCE, brought up if it is
down and taken down again if this run started it), writes a file of random bytes there,
then fetches it to the controller, in alternating order each round:

- with plain `scp` over the same ssh config (pinned known_hosts, the per-run key),
  followed by `sha256sum` of the copy: what a user does to get verified bytes;
- with the role: `include_role: nixforge.images.nixos_image, tasks_from: fetch`
  through ansible-playbook, for each method asked (default: the role's default `ssh`,
  and `rsync`), without a known sha256, so the builder-side sha256 is part of it.

The role's time is the fetch task end to end, as a small callback plugin
(benchmarks/callback) times it: from the task's start to a verified file in place on
the controller, the sha256 on both ends included. The whole ansible-playbook run (its
start-up included) is reported beside it. The ratio is (scp + sha256sum seconds) /
role seconds: above 1 the role is faster; the target is 1.0 or better. Medians over the
rounds; every sample is printed. Not a test: the machine's load moves the numbers, so
only --check turns a missed target into a failing exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "sandbox"))

from nfsandbox.testing import (  # noqa: E402
    VENV_BIN,
    ssh_keypair,
    write_inventory,
)

from benchmarks._sandbox import sandbox_up  # noqa: E402

SRC = "/var/tmp/nixforge-benchmark.bin"

FETCH_PLAYBOOK = """\
- name: Fetch with the nixos_image role
  hosts: builders
  gather_facts: false
  tasks:
    - name: Run the fetch entry point
      ansible.builtin.include_role:
        name: nixforge.images.nixos_image
        tasks_from: fetch
    - name: Save the result
      # A second task, so that the fetch task's end is timed apart from it.
      ansible.builtin.copy:
        content: "{{ nixos_image_fetch_result | to_json }}"
        dest: "{{ result_file }}"
        mode: "0644"
      delegate_to: localhost
"""


def log(message: str) -> None:
    print(message, flush=True)


def ssh(inv, host, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["ssh", "-F", str(inv.ssh_config), f"admin@{host['ip']}", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"on {host['name']}: {command!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def time_scp(inv, host, dest: Path, sha256: str) -> tuple[float, float]:
    """scp, then sha256sum of the copy: (total seconds, of which scp)."""
    started = time.monotonic()
    subprocess.run(
        ["scp", "-q", "-F", str(inv.ssh_config), f"admin@{host['ip']}:{SRC}", str(dest)],
        check=True,
        timeout=1800,
    )
    copied = time.monotonic()
    out = subprocess.run(["sha256sum", str(dest)], check=True, capture_output=True, text=True, timeout=1800)
    total = time.monotonic() - started
    if out.stdout.split()[0] != sha256:
        raise SystemExit(f"scp's copy has another sha256: {out.stdout}")
    return total, copied - started


def time_role(inv, playbook: Path, dest_dir: Path, method: str, sha256: str, work: Path) -> tuple[float, float]:
    result_file = work / f"result-{method}.json"
    extra = {
        "nixos_image_fetch_src": SRC,
        "nixos_image_dest_dir": str(dest_dir),
        "nixos_image_fetch_method": method,
        "result_file": str(result_file),
    }
    timing = work / "timing.jsonl"
    timing.unlink(missing_ok=True)
    env = dict(
        inv.env,
        ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "benchmarks" / "callback"),
        ANSIBLE_CALLBACKS_ENABLED="nixforge_timing",
        NIXFORGE_TIMING_FILE=str(timing),
    )
    started = time.monotonic()
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inv.path), str(playbook), "-e", json.dumps(extra)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"the role's fetch failed:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(result_file.read_text())
    if result["sha256"] != sha256 or result["already_there"]:
        raise SystemExit(f"unexpected fetch result: {result}")
    tasks = [json.loads(line) for line in timing.read_text().splitlines() if line.strip()]
    fetch = [t for t in tasks if t["action"] == "nixforge.images.fetch_artifact"]
    if len(fetch) != 1:
        raise SystemExit(f"expected one fetch_artifact task, timed: {[t['name'] for t in tasks]}")
    return fetch[0]["end"] - fetch[0]["start"], wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nixos_image fetch vs scp + sha256sum")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="ssh,rsync", help="role fetch methods to measure")
    parser.add_argument("--check", action="store_true", help="exit 1 when the default method misses 1.0x")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]

    if os.geteuid() != 0:
        log("the benchmark needs the sandbox, which needs root")
        return 2
    up = contextlib.ExitStack()
    sandbox = up.enter_context(sandbox_up())
    work = Path(tempfile.mkdtemp(prefix="nfbench-", dir="/tmp"))
    host = None
    try:
        key, pubkey = ssh_keypair(work / "keys")
        host = sandbox.boot_host(f"#cloud-config\nssh_authorized_keys:\n  - {pubkey}\n", owner="benchmark-fetch")
        inv = write_inventory(work / "inv", {"builder": host}, key)
        playbook = work / "fetch.yml"
        playbook.write_text(FETCH_PLAYBOOK)
        log(f"host {host['name']} ({host['ip']}): writing {args.size_mib} MiB of random bytes to {SRC}")
        sha256 = ssh(inv, host, f"head -c {args.size_mib}M /dev/urandom > {SRC} && sha256sum {SRC}").stdout.split()[0]
        if "rsync" in methods:
            install = "{ sudo apt-get update -qq && sudo apt-get install -y -qq rsync; } >/dev/null"
            ssh(inv, host, f"command -v rsync >/dev/null || {install}")

        samples: dict[str, list[float]] = {"scp": [], **{m: [] for m in methods}}
        scp_only: list[float] = []
        walls: dict[str, list[float]] = {m: [] for m in methods}
        order = ["scp", *methods]
        for round_no in range(args.rounds):
            for name in order if round_no % 2 == 0 else list(reversed(order)):
                dest_dir = work / "dest"
                subprocess.run(["rm", "-rf", str(dest_dir)], check=True)
                dest_dir.mkdir()
                subprocess.run(["sync"], check=True)
                if name == "scp":
                    seconds, copy_seconds = time_scp(inv, host, dest_dir / "image.bin", sha256)
                    scp_only.append(copy_seconds)
                else:
                    seconds, wall = time_role(inv, playbook, dest_dir, name, sha256, work)
                    walls[name].append(wall)
                samples[name].append(seconds)
                log(f"round {round_no + 1}: {name:5s} {seconds:7.2f} s  {args.size_mib / seconds:7.1f} MiB/s")

        scp = statistics.median(samples["scp"])
        report = {
            "size_mib": args.size_mib,
            "rounds": args.rounds,
            "scp_sha256sum_seconds": samples["scp"],
            "scp_only_seconds": scp_only,
            "methods": {},
        }
        log("")
        log(f"scp alone: median {statistics.median(scp_only):.2f} s; scp + sha256sum: median {scp:.2f} s")
        log(f"{'method':12s} {'median s':>9s} {'MiB/s':>8s} {'vs scp+sha':>11s} {'playbook wall s':>16s}")
        log(f"{'scp+sha256':12s} {scp:9.2f} {args.size_mib / scp:8.1f} {1.0:11.2f}")
        for method in methods:
            median = statistics.median(samples[method])
            ratio = scp / median
            report["methods"][method] = {
                "seconds": samples[method],
                "median_seconds": median,
                "ratio_vs_scp": round(ratio, 3),
                "playbook_wall_seconds": walls[method],
            }
            log(
                f"{method:12s} {median:9.2f} {args.size_mib / median:8.1f} {ratio:11.2f}"
                f" {statistics.median(walls[method]):16.1f}"
            )
        default_ratio = report["methods"].get("ssh", {}).get("ratio_vs_scp")
        log("")
        if default_ratio is not None:
            verdict = "met" if default_ratio >= 1.0 else "MISSED"
            log(f"role fetch (ssh), end to end, at {default_ratio:.2f}x of scp + sha256sum: target 1.0x {verdict}")
        log("BENCHMARK " + json.dumps(report))
        return 1 if args.check and default_ratio is not None and default_ratio < 1.0 else 0
    finally:
        if host is not None:
            sandbox.stop_host(host["name"])
        subprocess.run(["rm", "-rf", str(work)], check=False)
        up.close()


def run_all(argv: list[str] | None = None) -> int:
    """`make benchmark`: this fetch benchmark, then the B2 upload one (benchmarks/b2_upload.py)
    on loopback and with each upload request limited to 100 MB/s."""
    from benchmarks import b2_upload

    argv = sys.argv[1:] if argv is None else argv
    fetch = main(argv)
    check = ["--check"] if "--check" in argv else []
    loopback = b2_upload.main(check)
    limited = b2_upload.main([*check, "--upload-rate", "100"])
    return fetch or loopback or limited


if __name__ == "__main__":
    sys.exit(run_all())
