"""Publish benchmark: from "build done" to "image available" in DigitalOcean, the image
going builder -> controller -> B2 (the controller path, nixforge_keep_local_copy=true) or
builder -> B2 (the direct path, the default), with the controller's link limited.

    python -m benchmarks.publish [--size-mib 256] [--rate-mbit 50] [--rounds 1]

Uses sandbox instance NIXFORGE_SANDBOX_INSTANCE (brought up if it is down, and down again
if this run started it). A builder host of the sandbox holds a qcow2.gz image of the size
asked for (random bytes behind a qcow2 header, gzip without compression, so that every
byte counts). The controller (ansible-playbook) runs in a network namespace of its own,
`nfs<N>-bench`, attached to the sandbox's bridge like a host: a home uplink. `tc` limits
that namespace's link to --rate-mbit in both directions (tbf on its eth0, and on an ifb
that its ingress is redirected to); nothing outside the sandbox's namespaces is touched.
The builder's link is not limited. Inside the namespace, the controller's calls to the
B2 and DigitalOcean emulators (https://127.0.0.1:PORT, what `sandboxctl env` says) are
sent over that link (nftables DNAT to the bridge's gateway: B2 serves there as its upload
pod; a relay of this process forwards DigitalOcean's port to the emulator).

Each round runs, in alternating order, with the image imported in between deleted:

- controller path: the role nixos_image's fetch (builder -> controller, over the limited
  link), then do_image_publish (controller -> B2 over the limited link, import);
- direct path: do_image_publish's builder_upload (the builder uploads to B2 itself; only
  API calls cross the controller's link), then do_image_publish (import, no upload).

The time is ansible-playbook's wall time for each (image on the builder with its sha256
known -> image `available`), boot check off in both. The ratio is controller seconds /
direct seconds: above 1 the direct path is faster. Target: >= 5x at 50 Mbit/s.
Not a test: the machine's load moves the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "sandbox"))

from nfsandbox.config import Instance  # noqa: E402
from nfsandbox.digitalocean.testing import qcow2_image  # noqa: E402
from nfsandbox.testing import VENV_BIN, Inventory, SandboxHandle, ansible_env  # noqa: E402

from benchmarks._sandbox import sandbox_up  # noqa: E402

BENCH_INDEX = 9  # 10.213.N.9: .2-.9 are free for the sandbox's own services
IMAGE = "/var/tmp/nixforge-bench/nixos.qcow2.gz"
RATIO_TARGET = 5.0

CONTROLLER_PLAY = """\
- name: Fetch the image to the controller (the controller path)
  hosts: builders
  gather_facts: false
  become: true
  tasks:
    - name: Fetch
      ansible.builtin.include_role:
        name: nixforge.images.nixos_image
        tasks_from: fetch
- name: Upload it from the controller, import it
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Publish
      ansible.builtin.include_role:
        name: nixforge.images.do_image_publish
      vars:
        do_image_publish_artifact: "{{ hostvars['builder'].nixos_image_fetch_result.path }}"
"""

DIRECT_PLAY = (
    """\
- name: The builder uploads the image to B2 itself (the direct path)
  hosts: builders
  gather_facts: false
  become: true
  tasks:
    - name: Upload from the builder
      ansible.builtin.include_role:
        name: nixforge.images.do_image_publish
        tasks_from: builder_upload
      vars:
        do_image_publish_builder_artifact: "%s"
- name: Import it
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Publish
      ansible.builtin.include_role:
        name: nixforge.images.do_image_publish
"""
    % IMAGE
)


def log(message: str) -> None:
    print(message, flush=True)


def run(*argv: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    return subprocess.run(full, capture_output=True, text=True, check=check)


# -- the controller's namespace and its limited link ---------------------------------


class ControllerNetns:
    """``nfs<N>-bench`` on the sandbox bridge, its link limited to ``rate`` Mbit/s both ways;
    127.0.0.1:PORT of the emulators reaches them over that link."""

    def __init__(self, inst: Instance, rate_mbit: float, ports: list[int]) -> None:
        self.inst = inst
        self.name = f"nfs{inst.number}-bench"  # sandboxctl down removes nfs<N>-* namespaces too
        self.veth = f"nfs{inst.number}bench"
        self.address = f"10.213.{inst.number}.{BENCH_INDEX}"
        self.rate = rate_mbit
        self.ports = ports

    def up(self) -> None:
        inst, ns = self.inst, self.name
        self.down()
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "link", "set", self.veth, "master", inst.bridge, "up")
        for argv in (
            ["ip", "addr", "add", f"{self.address}/{inst.prefixlen}", "dev", "eth0"],
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "route", "add", "default", "via", inst.gateway],
            # traffic to 127.0.0.1 that DNAT sends out of eth0 must be routable
            ["sysctl", "-q", "-w", "net.ipv4.conf.eth0.route_localnet=1"],
        ):
            run(*argv, netns=ns)
        self.nat()
        self.shape()

    def nat(self) -> None:
        ports = ", ".join(str(p) for p in self.ports)
        rules = (
            "table ip nfbench {\n"
            "  chain out { type nat hook output priority -100;"
            f" ip daddr 127.0.0.1 tcp dport {{ {ports} }} dnat to {self.inst.gateway}; }}\n"
            '  chain post { type nat hook postrouting priority 100; oifname "eth0" masquerade; }\n'
            "}\n"
        )
        subprocess.run(["ip", "netns", "exec", self.name, "nft", "-f", "-"], input=rules, text=True, check=True)

    def shape(self) -> None:
        """tbf on eth0 (the controller's uploads) and on ifb0, where eth0's ingress is redirected
        (its downloads)."""
        rate, ns = f"{self.rate}mbit", self.name
        tbf = ["rate", rate, "burst", "256kb", "latency", "100ms"]
        run("ip", "link", "add", "ifb0", "type", "ifb", netns=ns)
        run("ip", "link", "set", "ifb0", "up", netns=ns)
        run("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", *tbf, netns=ns)
        run("tc", "qdisc", "add", "dev", "eth0", "handle", "ffff:", "ingress", netns=ns)
        redirect = ["action", "mirred", "egress", "redirect", "dev", "ifb0"]
        run("tc", "filter", "add", "dev", "eth0", "parent", "ffff:", "protocol", "ip", "u32", "match", "u32", "0", "0",
            *redirect, netns=ns)  # fmt: skip
        run("tc", "qdisc", "add", "dev", "ifb0", "root", "tbf", *tbf, netns=ns)

    def down(self) -> None:
        run("ip", "netns", "del", self.name, check=False)
        run("ip", "link", "del", self.veth, check=False)


class Relay:
    """gateway:PORT -> 127.0.0.1:PORT in this (the machine's) namespace, for an emulator that
    listens on loopback only; threads, stopped with the benchmark."""

    def __init__(self, gateway: str, port: int) -> None:
        self.port = port
        self.server = socket.create_server((gateway, port), reuse_port=False)
        self.stop = threading.Event()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _addr = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.close()


def pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


# -- the runs --------------------------------------------------------------------------


def make_image(path: Path, size: int) -> str:
    """A qcow2.gz DigitalOcean imports, of about ``size`` bytes that do not compress."""
    with gzip.open(path, "wb", compresslevel=0) as out:
        out.write(qcow2_image(1024**3))
        left = size
        while left > 0:
            block = os.urandom(min(8 << 20, left))
            out.write(block)
            left -= len(block)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def playbook(inventory: Inventory, path: Path, env: dict[str, str], netns: str, extra: dict[str, Any]) -> float:
    """ansible-playbook in the controller's namespace; its wall seconds."""
    argv = ["ip", "netns", "exec", netns, str(VENV_BIN / "ansible-playbook")]
    argv += ["-i", str(ROOT / "inventories" / "sandbox"), "-i", str(inventory.path), str(path), "-e", json.dumps(extra)]
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=str(ROOT), capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{path.name} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}")
    return seconds


def remove_image(env: dict[str, str], build_id: str) -> None:
    """The imported image (from this process's namespace: not part of any measured time)."""
    argv = [str(VENV_BIN / "ansible"), "localhost", "-i", str(ROOT / "inventories" / "sandbox")]
    argv += ["-m", "nixforge.images.do_custom_image", "-a", f"state=absent build_id={build_id}"]
    subprocess.run(argv, env=env, cwd=str(ROOT), capture_output=True, check=True)


def measure(args: argparse.Namespace, sandbox: SandboxHandle, work: Path) -> dict[str, Any]:
    inst = sandbox.instance
    env_vars = sandbox.env()
    ports = [inst.port("b2"), inst.port("digitalocean")]
    netns = ControllerNetns(inst, args.rate_mbit, ports)
    relay = Relay(inst.gateway, inst.port("digitalocean"))
    samples: dict[str, list[float]] = {"controller": [], "direct": []}
    try:
        with sandbox.builder_host(work, "bench-publish") as (host, inventory):
            local = work / "image.qcow2.gz"
            log(f"making a {args.size_mib} MiB image")
            sha256 = make_image(local, args.size_mib << 20)
            ssh = ["ssh", "-F", str(inventory.ssh_config), f"admin@{host['ip']}"]
            with open(local, "rb") as handle:  # before the link is limited
                subprocess.run([*ssh, f"sudo mkdir -p {Path(IMAGE).parent} && sudo tee {IMAGE} >/dev/null"],
                               stdin=handle, check=True)  # fmt: skip
            netns.up()
            env = ansible_env(work / "ansible", env_vars)
            plays = {"controller": work / "controller.yml", "direct": work / "direct.yml"}
            plays["controller"].write_text(CONTROLLER_PLAY)
            plays["direct"].write_text(DIRECT_PLAY)
            for round_no in range(args.rounds):
                order = ["controller", "direct"] if round_no % 2 == 0 else ["direct", "controller"]
                for name in order:
                    build_id = f"bench-pub-{os.getpid()}-{round_no}-{name}"
                    extra = {
                        "nixforge_build_id": build_id,
                        "do_image_publish_sha256": sha256,
                        "do_image_publish_boot_check": False,
                        "do_image_publish_part_size": args.part_size,
                        "nixos_image_fetch_src": IMAGE,
                        "nixos_image_fetch_sha256": sha256,
                        "nixos_image_dest_dir": str(work / f"fetched-{round_no}"),
                    }
                    seconds = playbook(inventory, plays[name], env, netns.name, extra)
                    remove_image(ansible_env(work / "ansible-cleanup", env_vars), build_id)
                    samples[name].append(round(seconds, 2))
                    log(f"round {round_no + 1}: {name:10s} {seconds:8.1f} s ({seconds / 60:.2f} min)")
    finally:
        relay.close()
        netns.down()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="publish: controller path vs direct path, controller link limited")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rate-mbit", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--part-size", default="50MB")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        log("the benchmark needs the sandbox, which needs root")
        return 2
    work = Path(tempfile.mkdtemp(prefix="nfbench-pub-", dir="/var/tmp"))
    try:
        with sandbox_up() as sandbox:
            samples = measure(args, sandbox, work)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    controller, direct = statistics.median(samples["controller"]), statistics.median(samples["direct"])
    ratio = controller / direct
    log("")
    log(
        f"{args.size_mib} MiB image, controller link {args.rate_mbit:g} Mbit/s both ways, builder link not limited:"
        f" controller path {controller / 60:.2f} min, direct path {direct / 60:.2f} min: {ratio:.1f}x"
        f" (target {RATIO_TARGET:g}x {'met' if ratio >= RATIO_TARGET else 'MISSED'})"
    )
    report = {"size_mib": args.size_mib, "rate_mbit": args.rate_mbit, "part_size": args.part_size, **samples}
    report.update(ratio=round(ratio, 2), load_average=os.getloadavg())
    log("BENCHMARK " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
