"""sandboxctl: up | down | status | resources [--json] | env | boot | gc.

The instance is chosen with NIXFORGE_SANDBOX_INSTANCE (default 0) or --instance.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import cleanup, client, procs
from .config import INSTANCE_ENV, Instance, instance_from_env
from .hosts import rootfs
from .hosts.aptproxy import machine_mirrors

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # tests/sandbox, for PYTHONPATH
UP_TIMEOUT = float(os.environ.get("NIXFORGE_SANDBOX_UP_TIMEOUT", "1200"))


def require_root(action: str) -> None:
    if os.geteuid() != 0:
        sys.exit(
            f"sandboxctl {action}: needs root (it creates network namespaces, a bridge, mounts and "
            "containers); run it as root, e.g. `sudo make sandbox-up`"
        )


@contextlib.contextmanager
def instance_lock(inst: Instance):
    """One `up`/`down` at a time per instance (two test sessions may race for it)."""
    inst.state_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(inst.state_dir.parent / f"{inst.number}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _follow(path: Path, pos: int) -> int:
    """Print what was appended to the daemon log since `pos`; return the new position."""
    try:
        with open(path, "rb") as fh:
            fh.seek(pos)
            chunk = fh.read()
    except OSError:
        return pos
    for line in chunk.decode(errors="replace").splitlines():
        print(f"  | {line}", flush=True)
    return pos + len(chunk)


def up(inst: Instance) -> int:
    require_root("up")
    state = client.read_state(inst)
    if client.daemon_alive(inst) and state and state.get("status") == "ready":
        print(f"sandbox instance {inst.number} is already up ({inst.control_url})")
        return 0
    if not client.daemon_alive(inst):
        left = cleanup.teardown(inst)  # leftovers of a killed run must not get in the way
        if any(left.values()):
            print(f"sandbox instance {inst.number}: could not clean up a previous run: {left}", file=sys.stderr)
            return 1
        inst.state_dir.mkdir(parents=True, exist_ok=True)
        log_pos = inst.log_file.stat().st_size if inst.log_file.exists() else 0
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
        }
        with open(inst.state_dir / "daemon.out", "ab") as out:
            subprocess.Popen(
                [sys.executable, "-m", "nfsandbox.daemon", "--instance", str(inst.number)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd="/",
                env=env,
                start_new_session=True,
            )
        print(f"starting sandbox instance {inst.number} (log {inst.log_file})", flush=True)
    else:
        log_pos = 0
        print(f"sandbox instance {inst.number} is starting; waiting for it", flush=True)
    started = time.monotonic()
    seen_daemon = False
    while time.monotonic() - started < UP_TIMEOUT:
        time.sleep(0.3)
        log_pos = _follow(inst.log_file, log_pos)
        state = client.read_state(inst) or {}
        alive = client.daemon_alive(inst)
        seen_daemon = seen_daemon or alive
        if state.get("status") == "ready" and alive:
            print(f"sandbox instance {inst.number} is up in {time.monotonic() - started:.1f}s: {inst.control_url}")
            return 0
        if (
            state.get("status") in ("failed", "stopping")
            or (seen_daemon and not alive)
            or (not seen_daemon and time.monotonic() - started > 30)
        ):
            break
    print(f"sandbox instance {inst.number} failed to start: {state.get('error') or 'see the log'}", file=sys.stderr)
    out = inst.state_dir / "daemon.out"
    if out.exists() and out.stat().st_size:
        print(out.read_text(errors="replace")[-3000:], file=sys.stderr)
    down(inst, quiet=True)
    return 1


def down(inst: Instance, quiet: bool = False) -> int:
    require_root("down")
    if client.daemon_alive(inst):
        try:
            client.call(inst, "POST", "/shutdown", timeout=10)
        except (client.NotUp, RuntimeError) as exc:
            print(f"asking the daemon to stop failed ({exc}); killing it", file=sys.stderr)
        deadline = time.monotonic() + 90
        while client.daemon_alive(inst) and time.monotonic() < deadline:
            time.sleep(0.2)
    left = cleanup.teardown(inst)
    if any(left.values()):
        print(f"sandbox instance {inst.number}: still present after down: {json.dumps(left)}", file=sys.stderr)
        return 1
    if not quiet:
        print(f"sandbox instance {inst.number} is down (no process, namespace, mount or link left)")
    return 0


def status(inst: Instance, as_json: bool) -> int:
    state = client.read_state(inst)
    alive = client.daemon_alive(inst)
    if alive:
        try:
            state = client.call(inst, "GET", "/status", timeout=10)
        except (client.NotUp, RuntimeError):
            pass
    if as_json:
        print(json.dumps({"up": bool(alive and state), **(state or {})}, indent=1, sort_keys=True))
        return 0 if alive else 3
    if not alive:
        print(f"sandbox instance {inst.number} is down")
        return 3
    state = state or {}
    print(f"sandbox instance {inst.number}: {state.get('status')} (pid {state.get('pid')}, {inst.control_url})")
    print(f"  network {state.get('network')} on {state.get('bridge')}, apt proxy {state.get('apt_proxy_url')}")
    for name, st in sorted((state.get("providers") or {}).items()):
        print(f"  provider {name}: {st}")
    for key, value in sorted((state.get("endpoints") or {}).items()):
        print(f"  {key} = {value}")
    for host in state.get("hosts") or []:
        print(f"  host {host['name']} {host['ip']} {host['state']} owner={host['owner']}")
    _print_droplets(inst)
    return 0


def _print_droplets(inst: Instance) -> None:
    """Droplets of the DigitalOcean emulator that run QEMU, with their serial console log."""
    try:
        found = client.call(inst, "GET", "/resources", timeout=60)["resources"]
    except (client.NotUp, RuntimeError):
        return
    for r in found:
        if r.get("type") == "do_droplet" and r.get("console"):
            print(f"  droplet {r['id']} {r.get('address')} {r['status']} console={r['console']}")


def resources(inst: Instance, as_json: bool) -> int:
    try:
        found = client.call(inst, "GET", "/resources", timeout=60)["resources"]
    except client.NotUp as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps({"resources": found}, indent=1, sort_keys=True))
    else:
        for r in found:
            extra = {k: v for k, v in r.items() if k not in ("provider", "type", "id")}
            print(f"{r.get('provider')}\t{r.get('type')}\t{r.get('id')}\t{json.dumps(extra, sort_keys=True)}")
        print(f"{len(found)} live resource(s)")
    return 0


def env_lines(state: dict[str, Any]) -> list[tuple[str, str]]:
    """Environment for clients of the sandbox (boto3, packet-python, ...) from state.json.

    Providers publish endpoints from start(): UPPER_CASE keys are taken as variables
    as they are, `ec2_endpoint` becomes AWS_ENDPOINT_URL, any other key `foo` is
    exported as NIXFORGE_SANDBOX_FOO.
    """
    out = [
        (INSTANCE_ENV, str(state["instance"])),
        ("NIXFORGE_SANDBOX_CONTROL_URL", state["control_url"]),
        ("NIXFORGE_SANDBOX_STATE", str(Path(state["state_dir"]) / "state.json")),
        ("NIXFORGE_SANDBOX_APT_PROXY", state["apt_proxy_url"]),
    ]
    if state.get("ca_bundle"):
        out.append(("REQUESTS_CA_BUNDLE", state["ca_bundle"]))
    endpoints = state.get("endpoints") or {}
    if "ec2_endpoint" in endpoints:
        out += [
            ("AWS_ENDPOINT_URL", endpoints["ec2_endpoint"]),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),  # moto accepts any credentials
            ("AWS_DEFAULT_REGION", endpoints.get("AWS_DEFAULT_REGION", "us-east-1")),
        ]
    for key, value in sorted(endpoints.items()):
        if key.isupper():
            out.append((key, str(value)))
        else:
            out.append((f"NIXFORGE_SANDBOX_{key.upper()}", str(value)))
    return list(dict((k, (k, v)) for k, v in out).values())


def env(inst: Instance) -> int:
    state = client.read_state(inst)
    if not state or not client.daemon_alive(inst):
        print(f"sandbox instance {inst.number} is not up; run `make sandbox-up`", file=sys.stderr)
        return 2
    for key, value in env_lines(state):
        print(f"export {key}={shlex.quote(value)}")
    return 0


def gc() -> int:
    """Delete base images of older recipes; refused while any instance runs."""
    require_root("gc")
    running = [
        d.name
        for d in sorted(Instance(0).state_dir.parent.glob("*"))
        if d.is_dir() and any(r["name"] == "daemon" for r in procs.Records(d / "records").live_pids())
    ]
    if running:
        print(
            f"sandboxctl gc: instance(s) {', '.join(running)} running; their hosts may use old images", file=sys.stderr
        )
        return 1
    for path in rootfs.collect_garbage(rootfs.BaseImages(*machine_mirrors())):
        print(f"removed {path}")
    return 0


def boot(inst: Instance, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"owner": args.owner, "suite": args.suite, "arch": args.arch}
    if args.userdata:
        body["userdata"] = Path(args.userdata).read_text()
    print(json.dumps(client.call(inst, "POST", "/hosts", body), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sandboxctl", description=__doc__)
    parser.add_argument("--instance", type=int, help=f"instance number (default: ${INSTANCE_ENV} or 0)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the sandbox (idempotent)")
    sub.add_parser("down", help="stop it and remove every trace, even after a crash")
    for name in ("status", "resources"):
        p = sub.add_parser(name)
        p.add_argument("--json", action="store_true")
    sub.add_parser("env", help="print export lines for clients of the sandbox")
    sub.add_parser("gc", help="delete cached base images of older recipes (no instance may run)")
    p = sub.add_parser("boot", help="boot a host by hand (debugging)")
    p.add_argument("--userdata", help="file with user data")
    p.add_argument("--owner", default="sandboxctl")
    p.add_argument("--suite", default="bookworm")
    p.add_argument("--arch", default="x86_64")
    args = parser.parse_args(argv)
    try:
        inst = Instance(args.instance) if args.instance is not None else instance_from_env()
    except ValueError as exc:
        parser.error(str(exc))
    try:
        if args.command in ("up", "down"):
            require_root(args.command)
            with instance_lock(inst):
                return up(inst) if args.command == "up" else down(inst)
        if args.command == "gc":
            return gc()
        if args.command == "status":
            return status(inst, args.json)
        if args.command == "resources":
            return resources(inst, args.json)
        if args.command == "env":
            return env(inst)
        return boot(inst, args)
    except (client.NotUp, RuntimeError) as exc:
        print(f"sandboxctl {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
