"""Processes of a sandbox instance: where they run (cgroups) and what is recorded of them.

Why cgroups: a booted host is systemd-nspawn plus a whole process tree in its own PID
namespace. If nspawn (or the daemon, or a test run) is SIGKILLed, the container's
systemd is orphaned and no PID file names it. Every process we start therefore runs
below the instance's own cgroup (`nixforge-sandbox/N/...`), which children inherit and
cannot leave; `sandboxctl down` kills whatever is still in that tree. PID records (with
the process start time, so a recycled PID is never killed) are the second line of
defence and what tests use to prove nothing is left.

Why separate cgroups per host: this machine's PID 1 is not systemd, so nspawn creates
its `payload`/`supervisor` cgroups below the cgroup it was started in. Two hosts started
from the same cgroup would share one `payload` and each container's systemd would manage
(and kill) the other's services.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Iterable

CGROUP_FS = Path("/sys/fs/cgroup")


def start_time(pid: int) -> int | None:
    """Kernel start time of a process (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    state, start = fields[0], int(fields[19])
    return None if state == "Z" else start


def alive(pid: int, start: int | None) -> bool:
    return start is not None and start_time(pid) == start


# -- on-disk records --------------------------------------------------------------------


class Records:
    """One small JSON file per thing that cleanup must find: `<kind>.<name>.json`."""

    def __init__(self, directory: Path):
        self.dir = directory

    def put(self, kind: str, name: str, **data: object) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{kind}.{name}.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(self.dir / f"{kind}.{name}.json")

    def put_pid(self, kind: str, name: str, pid: int) -> None:
        self.put(kind, name, pid=pid, start=start_time(pid))

    def drop(self, kind: str, name: str) -> None:
        (self.dir / f"{kind}.{name}.json").unlink(missing_ok=True)

    def all(self, kind: str | None = None) -> list[tuple[str, str, dict]]:
        out = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            k, _sep, name = path.stem.partition(".")
            if kind is None or k == kind:
                try:
                    out.append((k, name, json.loads(path.read_text())))
                except (OSError, ValueError):
                    continue
        return out

    def live_pids(self) -> list[dict]:
        """Recorded processes that still exist (same PID and same start time)."""
        return [
            {"kind": k, "name": n, **d} for k, n, d in self.all() if "pid" in d and alive(int(d["pid"]), d.get("start"))
        ]


# -- cgroups ----------------------------------------------------------------------------


def cgroup_roots() -> list[Path]:
    """Hierarchies that track processes: name=systemd (v1/hybrid) and/or the unified one.

    nspawn uses the name=systemd hierarchy on a hybrid machine like ours and the
    unified one on a pure cgroup2 machine, so we place processes in every one present.
    """
    roots = []
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    points = {line.split()[1]: line.split()[2] for line in mounts}
    if points.get(str(CGROUP_FS)) == "cgroup2":
        return [CGROUP_FS]
    for sub in ("systemd", "unified"):
        if str(CGROUP_FS / sub) in points:
            roots.append(CGROUP_FS / sub)
    return roots


def cgroup_dirs(rel: str) -> list[Path]:
    return [root / rel for root in cgroup_roots()]


def join_cgroup(rel: str, pid: int) -> None:
    for d in cgroup_dirs(rel):
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text(f"{pid}\n")


def join_cgroup_shell(rel: str) -> str:
    """Shell lines that move the running shell ($$) into `rel` before it execs nspawn."""
    lines = []
    for d in cgroup_dirs(rel):
        lines.append(f'mkdir -p "{d}" && echo $$ > "{d}/cgroup.procs"')
    return "\n".join(lines)


def cgroup_pids(rel: str) -> set[int]:
    pids: set[int] = set()
    for d in cgroup_dirs(rel):
        if not d.is_dir():
            continue
        for procs in d.rglob("cgroup.procs"):
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except OSError:
                continue
    return pids


def kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_cgroup(rel: str, timeout: float = 10.0) -> set[int]:
    """SIGKILL everything below `rel` until it is empty, then remove the cgroups.

    Returns the PIDs still present after `timeout` (empty on success).
    """
    deadline = time.monotonic() + timeout
    pids = cgroup_pids(rel)
    while pids and time.monotonic() < deadline:
        kill_pids(pids)
        time.sleep(0.1)
        pids = {p for p in cgroup_pids(rel) if start_time(p) is not None}
    remove_cgroup(rel)
    return pids


def remove_cgroup(rel: str, only_if_empty: bool = False) -> None:
    for d in cgroup_dirs(rel):
        if not d.is_dir():
            continue
        if only_if_empty:
            _rmdir(d, tries=1)  # fails (and is left) while another instance uses it
            continue
        # deepest first; a cgroup dir is removed with rmdir, never with unlink of files
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            _rmdir(sub)
        _rmdir(d)


def _rmdir(path: Path, tries: int = 20) -> None:
    for _attempt in range(tries):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)  # EBUSY while the last task is still exiting


# -- network namespaces -----------------------------------------------------------------


def netns_pids(netns_file: Path) -> set[int]:
    """PIDs whose network namespace is the one bound at `netns_file`."""
    try:
        ino = netns_file.stat().st_ino
        dev = netns_file.stat().st_dev
    except OSError:
        return set()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            st = (entry / "ns" / "net").stat()
        except OSError:
            continue
        if st.st_ino == ino and st.st_dev == dev:
            pids.add(int(entry.name))
    return pids
