"""Tear down everything of an instance from what is on disk, and list what is left.

Used by `sandboxctl down` after asking the daemon to stop (or when the daemon is
dead), so it must not trust any process to have cleaned up: it kills the instance's
cgroup tree and recorded PIDs, deletes its netns, veths, bridge and routing rule,
unmounts anything below its directories and removes its working files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import procs
from .cmd import run
from .config import Instance
from .hosts.network import NETNS_DIR, Network


def _instance_mounts(inst: Instance) -> list[str]:
    prefixes = (str(inst.work_dir) + "/", str(inst.state_dir) + "/", f"{NETNS_DIR}/{inst.name_prefix}")
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point.startswith(prefixes) or point in (str(inst.work_dir), str(inst.state_dir)):
            out.append(point)
    return out


def leftovers(inst: Instance) -> dict[str, list]:
    """What of the instance still exists on the machine (empty lists: nothing)."""
    records = procs.Records(inst.records_dir)
    pids = procs.cgroup_pids(inst.cgroup_name)
    pids |= {int(r["pid"]) for r in records.live_pids()}
    for ns in Network(inst).namespaces():
        pids |= procs.netns_pids(NETNS_DIR / ns)
    links = sorted(
        p.name for p in Path("/sys/class/net").iterdir() if p.name == inst.bridge or p.name.startswith(inst.veth_prefix)
    )
    return {
        "processes": sorted(p for p in pids if procs.start_time(p) is not None),
        "namespaces": Network(inst).namespaces(),
        "links": links,
        "mounts": _instance_mounts(inst),
        "cgroups": [str(d) for d in procs.cgroup_dirs(inst.cgroup_name) if d.exists()],
    }


def teardown(inst: Instance) -> dict[str, list]:
    """Remove everything of `inst`; return what could not be removed (see leftovers)."""
    records = procs.Records(inst.records_dir)
    network = Network(inst)
    # processes first: a namespace or mount stays alive while a process holds it
    procs.kill_cgroup(inst.cgroup_name)
    procs.kill_pids(int(r["pid"]) for r in records.live_pids())
    for ns in network.namespaces():
        procs.kill_pids(procs.netns_pids(NETNS_DIR / ns))
    for point in sorted(_instance_mounts(inst), key=len, reverse=True):
        run(["umount", "-l", point], check=False)
    network.down()
    shutil.rmtree(inst.work_dir, ignore_errors=True)
    procs.remove_cgroup(inst.cgroup_name)
    procs.remove_cgroup(inst.cgroup_name.split("/")[0], only_if_empty=True)  # shared parent
    # keep the daemon log for post-mortems; everything else of the state goes
    if inst.state_dir.is_dir():
        for entry in inst.state_dir.iterdir():
            if entry.name != "daemon.log":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
    return leftovers(inst)
