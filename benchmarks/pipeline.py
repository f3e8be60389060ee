"""Pipeline benchmark: one SD (or DigitalOcean) build in the sandbox, timed task by task.

    python -m benchmarks.pipeline [--repo DIR] [--playbook sd|do] [--boot-check] [--json FILE]
    (make benchmark runs it after the fetch benchmark)

Runs playbooks/build-sd-aarch64.yml against inventories/sandbox as scripts/demo.sh does
(EC2 spot builder in moto, a real sandbox host, real Nix, the sandbox image definition),
on instance NIXFORGE_SANDBOX_INSTANCE (brought up if it is down, and down again if this
run brought it up). A small callback (benchmarks/callback/nixforge_timing.py) records
every task; the report gives:

- total wall time of ansible-playbook, and the number of tasks that ran (not skipped);
- time per stage: provision (play 1), bootstrap (nix_bootstrap), build (nixos_image
  up to the fetch), fetch (the transfer), teardown (the last play), publish (DO: the
  B2 upload and the import), and Ansible's own start-up and the gaps between tasks;
- package installation (apt tasks, and the apt time nix_bootstrap_plan reports) and the Nix
  build (build_seconds of the role's result) apart from "our overhead", which is everything else.

--repo points at another checkout (e.g. an export of main) to measure it with the same
sandbox and the same machine load: the collection is linked from a temporary directory.
Not a test: the machine's load moves the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "sandbox"))

from nfsandbox.testing import VENV_BIN, SandboxHandle  # noqa: E402

from benchmarks import ec2_floor  # noqa: E402
from benchmarks._sandbox import sandbox_up  # noqa: E402

PLAYBOOKS = {"sd": "playbooks/build-sd-aarch64.yml", "do": "playbooks/build-do-image.yml"}
STAGES = ("provision", "bootstrap", "build", "fetch", "teardown", "publish", "other")
# issue 19's targets (own overhead in seconds, tasks run), each at most; the DigitalOcean pipeline's
# without the boot check (--boot-check adds it, outside the target)
TARGETS = {"sd": (6.0, 25), "do": (10.0, 35)}
PACKAGE_ACTIONS = {"apt", "ansible.builtin.apt", "package", "ansible.builtin.package"}


def log(message: str) -> None:
    print(message, flush=True)


def stage_of(task: dict[str, Any]) -> str:
    """Which stage a task belongs to, from its play, role and file."""
    play = task["play"].lower()
    if play.startswith(("provision", "check the input")):
        return "provision"
    if task["role"] == "do_image_publish":
        return "publish"
    if play.startswith("tear down"):
        return "teardown"
    if task["role"] == "nix_bootstrap":
        return "bootstrap"
    if task["role"] == "nixos_image":
        path = task["path"]
        if "/fetch" in path or "fetch" in task["action"]:
            return "fetch"
        return "build"
    return "other"


def analyse(tasks: list[dict[str, Any]], total: float) -> dict[str, Any]:
    stages = {name: {"seconds": 0.0, "tasks": 0} for name in STAGES}
    packages = 0.0
    nix_build = 0.0
    fetch_transfer = 0.0
    ran = 0
    for task in tasks:
        seconds = task["end"] - task["start"]
        statuses = set(task["hosts"].values())
        executed = bool(statuses - {"skipped"})
        stage = stage_of(task)
        stages[stage]["seconds"] += seconds
        if executed:
            stages[stage]["tasks"] += 1
            ran += 1
            if task["action"] in PACKAGE_ACTIONS:
                packages += seconds
            packages += task.get("install_seconds", 0.0)
        result = task["facts"].get("nixos_image_result")
        if result:
            nix_build = float(result.get("build_seconds") or 0.0)
            fetch_transfer = float(result.get("fetch_seconds") or 0.0)
    in_tasks = sum(s["seconds"] for s in stages.values())
    return {
        "total_seconds": round(total, 1),
        "tasks_run": ran,
        "task_starts": len(tasks),
        "stages": {k: {"seconds": round(v["seconds"], 1), "tasks": v["tasks"]} for k, v in stages.items()},
        "ansible_startup_and_gaps_seconds": round(total - in_tasks, 1),
        "package_install_seconds": round(packages, 1),
        "nix_build_seconds": round(nix_build, 1),
        "fetch_transfer_seconds": round(fetch_transfer, 2),
        "overhead_seconds": round(total - packages - nix_build, 1),
    }


def print_report(label: str, report: dict[str, Any], slowest: list[dict[str, Any]], playbook: str = "sd") -> None:
    log("")
    log(
        f"== {label}: {report['total_seconds']} s wall,"
        f" {report['tasks_run']} tasks run ({report['task_starts']} started)"
    )
    log(f"{'stage':12s} {'seconds':>8s} {'tasks':>6s}")
    for name, stage in report["stages"].items():
        log(f"{name:12s} {stage['seconds']:8.1f} {stage['tasks']:6d}")
    log(f"{'start/gaps':12s} {report['ansible_startup_and_gaps_seconds']:8.1f}")
    log(f"package installation: {report['package_install_seconds']} s")
    log(f"Nix build:            {report['nix_build_seconds']} s")
    log(f"transfer:             {report['fetch_transfer_seconds']} s")
    max_overhead, max_tasks = TARGETS[playbook]
    verdict = "met" if report["overhead_seconds"] <= max_overhead else "MISSED"
    tasks_verdict = "met" if report["tasks_run"] <= max_tasks else "MISSED"
    log(f"our overhead:         {report['overhead_seconds']} s (target at most {max_overhead:g} s: {verdict})")
    if "ec2_floor_seconds" in report:
        # the baseline of the same run: what the cloud itself takes for the builder, without Ansible
        above = report["above_floor_seconds"]
        log(
            f"EC2 floor:            {report['ec2_floor_seconds']} s (baseline); our overhead is"
            f" {report['overhead_seconds'] / max(report['ec2_floor_seconds'], 0.1):.2f}x the floor,"
            f" {above} s above it (target {max_overhead:g} s: {'met' if above <= max_overhead else 'MISSED'})"
        )
    log(f"tasks run:            {report['tasks_run']} (target at most {max_tasks}: {tasks_verdict})")
    log(f"output lines:         {report['output_lines']}")
    log("slowest tasks:")
    for task in slowest:
        log(f"  {task['end'] - task['start']:6.2f} s  [{stage_of(task)}] {task['name']}")


def delete_do_image(env: dict[str, str], image_id: int) -> None:
    """DELETE /v2/images/ID on the sandbox's DigitalOcean, with the token it exported."""
    req = urllib.request.Request(  # noqa: S310 - the sandbox's loopback endpoint
        env["DIGITALOCEAN_API_URL"].rstrip("/") + f"/images/{image_id}",
        method="DELETE",
        headers={"Authorization": "Bearer " + env["DIGITALOCEAN_TOKEN"]},
    )
    # the sandbox's TLS endpoints have a certificate from its own CA (REQUESTS_CA_BUNDLE)
    context = ssl.create_default_context(cafile=env.get("REQUESTS_CA_BUNDLE") or None)
    with urllib.request.urlopen(req, timeout=60, context=context):  # noqa: S310 - loopback
        pass


def run_pipeline(
    repo: Path,
    playbook: str,
    sandbox: SandboxHandle,
    work: Path,
    slowest: int = 8,
    extra_vars: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list]:
    collections = work / "collections" / "ansible_collections" / "nixforge"
    collections.mkdir(parents=True)
    (collections / "images").symlink_to(repo)
    home = work / "ansible-home"
    (home / "tmp").mkdir(parents=True)
    timing = work / "timing.jsonl"
    build_id = "bench-" + time.strftime("%H%M%S", time.gmtime())
    env = dict(os.environ)
    env.update(sandbox.env())
    env.update(
        {
            "ANSIBLE_CONFIG": str(repo / "ansible.cfg"),
            "ANSIBLE_COLLECTIONS_PATH": str(work / "collections"),
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": tempfile.mkdtemp(prefix="nfb-cp-", dir="/tmp"),
            "ANSIBLE_CALLBACK_PLUGINS": str(ROOT / "benchmarks" / "callback"),
            "ANSIBLE_CALLBACKS_ENABLED": "nixforge_timing",
            "ANSIBLE_NOCOLOR": "1",
            "NIXFORGE_TIMING_FILE": str(timing),
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    argv = [
        str(VENV_BIN / "ansible-playbook"),
        "-i",
        str(repo / "inventories" / "sandbox"),
        str(repo / playbook),
        "-e",
        json.dumps(
            {"nixforge_build_id": build_id, "nixforge_output_dir": str(work / "artifacts"), **(extra_vars or {})}
        ),
    ]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=1800, check=False)
    total = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"the pipeline failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    tasks = [json.loads(line) for line in timing.read_text().splitlines() if line.strip()]
    report = analyse(tasks, total)
    report["output_lines"] = len(proc.stdout.splitlines())
    report["build_id"] = build_id
    # The build's DigitalOcean image is the DO pipeline's product: removed here, not a leak.
    mine = [r for r in sandbox.resources() if build_id in json.dumps(r)]
    for image in [r for r in mine if r.get("type") == "do_image"]:
        delete_do_image(env, image["id"])
    leftovers = [r for r in sandbox.resources() if build_id in json.dumps(r)]
    report["leftover_resources"] = len(leftovers)
    if leftovers:
        raise SystemExit(f"the pipeline left resources behind: {leftovers}")
    return report, sorted(tasks, key=lambda t: t["start"] - t["end"])[:slowest]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="time the SD pipeline in the sandbox, stage by stage")
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    parser.add_argument("--playbook", choices=sorted(PLAYBOOKS), default="sd")
    parser.add_argument("--label", default="")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--slowest", type=int, default=8, help="how many of the slowest tasks to list")
    parser.add_argument(
        "--boot-check", action="store_true", help="do: boot the image once (outside the target; off by default)"
    )
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    playbook = PLAYBOOKS[args.playbook]
    if not (repo / playbook).exists():
        log(f"{repo / playbook} does not exist (yet): nothing to measure for the {args.playbook} pipeline")
        return 0
    if os.geteuid() != 0:
        log("the benchmark needs the sandbox, which needs root")
        return 2
    work = Path(tempfile.mkdtemp(prefix="nfbench-pipe-", dir="/tmp"))
    try:
        with sandbox_up() as sandbox:
            log(f"the EC2 floor of the {args.playbook} pipeline's builder (the baseline, same sandbox, just before)")
            floor = ec2_floor.measure(sandbox, args.playbook)
            ec2_floor.print_floor(floor)
            log(f"running {playbook} from {repo} on sandbox instance {sandbox.instance.number}")
            extra = {"do_image_publish_boot_check": False} if args.playbook == "do" and not args.boot_check else {}
            report, slowest = run_pipeline(repo, playbook, sandbox, work, args.slowest, extra)
        report["ec2_floor_seconds"] = floor["total"]
        report["above_floor_seconds"] = round(report["overhead_seconds"] - floor["total"], 1)
        print_report(args.label or f"{args.playbook} pipeline ({repo})", report, slowest, args.playbook)
        log("PIPELINE " + json.dumps(report))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    sys.exit(main())
