"""Fetch one large file from a builder over SSH, resumably, and report progress.

Runs on the Ansible controller (stdlib only, Python 3.8+), started by the nixos_image
role. The SSH command line comes from the role, built from the same connection
settings Ansible uses (host, port, user, key, pinned known_hosts, common/extra args).

  nixforge_fetch.py fetch --host HOST [--port N] [--user U] [--identity KEY] [--ssh-args STR]...
                          [--ciphers LIST] --src PATH --size N --dest PART
                          [--method ssh|rsync] [--streams N] [--background]
  nixforge_fetch.py wait --dest PART --seconds N

Method "ssh" (default): the file is cut into --streams contiguous ranges, each fetched
by its own `ssh HOST dd if=SRC skip=OFFSET count=LENGTH` (POSIX tail/head where there is
no GNU dd) and written in place. Each
range's progress is saved in PART.state, so a rerun continues every range where it
stopped. Several streams beat one on long-latency links (each SSH channel has a
window of its own) and spread the cipher work over cores.

Method "rsync": `rsync --inplace --append` over the same SSH command, resumed from the
bytes already in PART.

Either way PART.state (JSON) holds the progress and, at the end, the exit status; the
caller checks the sha256 of PART before renaming it.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time

BLOCK = 1024 * 1024
_PROCS = []  # the ssh/rsync children, stopped on timeout
_TIMED_OUT = threading.Event()
SAVE_EVERY = 32 * BLOCK  # bytes between two saves of a range's progress


class State:
    """PART.state: the ranges and how far each got, rewritten atomically."""

    def __init__(self, path, size, streams, method, appended=None):
        self.path = path
        self.lock = threading.Lock()
        self.data = None
        if os.path.exists(path):
            try:
                with open(path) as fh:
                    old = json.load(fh)
                if old.get("size") == size and old.get("method") == method and old.get("ranges"):
                    self.data = old
            except (OSError, ValueError):
                self.data = None
        if self.data is None:
            self.data = {"size": size, "method": method, "ranges": _ranges(size, streams)}
        if appended is not None:  # rsync --append: the partial file's length is the progress
            self.data["ranges"][0]["done"] = min(appended, size)
        self.data.update({"finished": False, "rc": None, "error": "", "started_at": time.time()})
        self.data["resumed_bytes"] = self.done()
        self.save()

    def done(self):
        return sum(r["done"] for r in self.data["ranges"])

    def advance(self, index, done):
        with self.lock:
            self.data["ranges"][index]["done"] = done
            self.save()

    def finish(self, rc, error=""):
        with self.lock:
            self.data.update({"finished": True, "rc": rc, "error": error, "ended_at": time.time()})
            self.save()

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.data, fh)
        os.replace(tmp, self.path)


def _ranges(size, streams):
    streams = max(1, min(streams, max(1, size // (8 * BLOCK))))  # no range under 8 MiB
    step = -(-size // streams)
    return [{"start": s, "end": min(size, s + step), "done": 0} for s in range(0, size, step)] or [
        {"start": 0, "end": 0, "done": 0}
    ]


def _remote_read(src, offset, length):
    """Shell command printing `length` bytes of `src` from `offset`: GNU dd straight into
    the SSH channel where there is one, else POSIX tail and head."""
    quoted = shlex.quote(src)
    return (
        "if dd --version >/dev/null 2>&1; then"
        " exec dd if=%s bs=1M iflag=skip_bytes,count_bytes skip=%d count=%d status=none;"
        " else tail -c +%d %s | head -c %d; fi" % (quoted, offset, length, offset + 1, quoted, length)
    )


def _widen_pipe(fd):
    """Ask for a 1 MiB pipe (fewer, larger reads); harmless where not supported."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), BLOCK)
    except (ImportError, OSError):
        pass


def _fetch_range(ssh, target, src, part_fd, state, index, errors):
    rng = state.data["ranges"][index]
    for attempt in range(3):
        offset = rng["start"] + rng["done"]
        length = rng["end"] - offset
        if length <= 0:
            return
        remote = _remote_read(src, offset, length)
        proc = subprocess.Popen([*ssh, target, remote], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        _PROCS.append(proc)
        pipe = proc.stdout.fileno()
        _widen_pipe(pipe)
        done, unsaved = rng["done"], 0
        while True:
            chunk = os.read(pipe, min(BLOCK, rng["end"] - rng["start"] - done))
            if not chunk:
                break
            os.pwrite(part_fd, chunk, rng["start"] + done)
            done += len(chunk)
            unsaved += len(chunk)
            if unsaved >= SAVE_EVERY:
                state.advance(index, done)
                unsaved = 0
        rc = proc.wait()
        stderr = proc.stderr.read().decode(errors="replace").strip()
        state.advance(index, done)
        if rng["start"] + done == rng["end"] and rc == 0:
            return
        if attempt < 2:
            time.sleep(2**attempt)
            continue
        errors.append(
            "range %d-%d stopped at %d (ssh exit %d): %s"
            % (rng["start"], rng["end"], rng["start"] + done, rc, stderr[-500:] or "no message")
        )
        return


def _stop_children():
    _TIMED_OUT.set()
    for proc in _PROCS:
        if proc.poll() is None:
            proc.kill()


def _stop_earlier(path):
    """A fetch of the same file still running (e.g. after a controller timeout) is stopped."""
    try:
        with open(path) as fh:
            pid = json.load(fh).get("pid")
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            ours = b"nixforge_fetch.py" in fh.read()
    except (OSError, ValueError, TypeError):
        return
    if ours and pid != os.getpid():
        try:
            os.killpg(os.getpgid(pid), 15)
        except OSError:
            return
        for _attempt in range(50):
            if not _alive(pid):
                return
            time.sleep(0.1)


def fetch_ssh(args, ssh, state):
    fd = os.open(args.dest, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size != args.size:
            os.ftruncate(fd, args.size)
        errors = []
        threads = [
            threading.Thread(target=_fetch_range, args=(ssh, args.target, args.src, fd, state, i, errors))
            for i in range(len(state.data["ranges"]))
        ]
        for thread in threads:
            thread.daemon = True
            thread.start()
        deadline = time.time() + args.timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.time()))
        if any(thread.is_alive() for thread in threads):
            _stop_children()
            for thread in threads:
                thread.join(10)
            errors.insert(0, "timed out after %d s" % args.timeout)
        # No fsync: the caller checks the sha256 of the whole file before using it.
    finally:
        os.close(fd)
    return "; ".join(errors)


def fetch_rsync(args, ssh, state):
    # One range: PART grows from the start, so its size is the progress.
    host = "[%s]" % args.target if ":" in args.target else args.target  # IPv6 address
    target = host + ":" + args.src
    shell = " ".join(shlex.quote(a) for a in ssh)
    cmd = ["rsync", "--inplace", "--append", "--no-compress", "--chmod=F644", "-e", shell, target, args.dest]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _PROCS.append(proc)
    deadline = time.time() + args.timeout
    while proc.poll() is None:
        time.sleep(1)
        if os.path.exists(args.dest):
            state.advance(0, os.path.getsize(args.dest))
        if time.time() > deadline:
            _stop_children()
            proc.wait()
            return "timed out after %d s" % args.timeout
    stderr = proc.stderr.read().decode(errors="replace").strip()
    if os.path.exists(args.dest):
        state.advance(0, os.path.getsize(args.dest))
    return "" if proc.returncode == 0 else "rsync exit %d: %s" % (proc.returncode, stderr[-500:])


def ssh_command(args):
    """The ssh argv (without the host), in the order Ansible's ssh connection uses:
    its own settings first (ssh keeps the first value it gets for an option), then
    ssh_common_args and ssh_extra_args, then our cipher preference, which the user's
    arguments therefore override."""
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "Compression=no", "-o", "ConnectTimeout=%d" % args.connect_timeout]
    if args.port:
        cmd += ["-o", "Port=%s" % args.port]
    if args.identity:
        cmd += ["-o", "IdentityFile=%s" % args.identity]
    if args.user:
        cmd += ["-o", "User=%s" % args.user]
    for extra in args.ssh_args:
        cmd += shlex.split(extra)
    cmd += ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
    if args.ciphers:
        cmd += ["-o", "Ciphers=%s" % args.ciphers]
    return cmd


def daemonize(log_path):
    """Detach (double fork): the role polls PART.state instead of an async job file."""
    if os.fork() > 0:
        return False
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(log, 2)
    return True


def cmd_fetch(args):
    ssh = ssh_command(args)
    args.target = args.host
    streams = args.streams if args.method == "ssh" else 1
    _stop_earlier(args.dest + ".state")
    appended = None
    if args.method == "rsync":
        appended = os.path.getsize(args.dest) if os.path.exists(args.dest) else 0
    state = State(args.dest + ".state", args.size, streams, args.method, appended)
    if args.background and not daemonize(args.dest + ".log"):
        print(json.dumps({"started": True, "state": state.path}))
        return 0
    state.data["pid"] = os.getpid()
    state.save()
    try:
        error = fetch_ssh(args, ssh, state) if args.method == "ssh" else fetch_rsync(args, ssh, state)
    except Exception as exc:  # noqa: BLE001 - reported to the role, which fails with it
        error = "%s: %s" % (type(exc).__name__, exc)
    state.finish(1 if error else 0, error)
    if error:
        sys.stderr.write(error + "\n")
    if args.background:
        os._exit(1 if error else 0)
    return 1 if error else 0


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead too (it only waits for its parent to read its status).
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def cmd_wait(args):
    """Wait until the fetch has finished or --seconds passed; print its state as JSON."""
    path = args.dest + ".state"
    deadline = time.time() + args.seconds
    data = {}
    while True:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            data = {}
        if data.get("finished") or time.time() >= deadline:
            break
        if data.get("pid") and not _alive(data["pid"]):
            time.sleep(0.5)  # it may have written its last state just now
            with open(path) as fh:
                data = json.load(fh)
            if not data.get("finished"):
                data.update({"finished": True, "rc": -1, "error": "the fetch process %d died" % data["pid"]})
            break
        time.sleep(0.5)
    done = sum(r.get("done", 0) for r in data.get("ranges", []))
    started = data.get("started_at") or time.time()
    elapsed = max(0.001, (data.get("ended_at") or time.time()) - started)
    new = done - data.get("resumed_bytes", 0)
    print(
        json.dumps(
            {
                "finished": bool(data.get("finished")),
                "rc": data.get("rc"),
                "error": data.get("error", ""),
                "done": done,
                "size": data.get("size", 0),
                "percent": round(100.0 * done / data["size"], 1) if data.get("size") else 100.0,
                "resumed_bytes": data.get("resumed_bytes", 0),
                "seconds": round(elapsed, 3),
                "mib_per_s": round(new / elapsed / BLOCK, 1),
            }
        )
    )
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch")
    fetch.add_argument("--host", required=True)
    fetch.add_argument("--port", default="")
    fetch.add_argument("--user", default="")
    fetch.add_argument("--identity", default="")
    fetch.add_argument("--ssh-args", action="append", default=[], help="shell-quoted ssh arguments")
    fetch.add_argument("--ciphers", default="")
    fetch.add_argument("--connect-timeout", type=int, default=15)
    fetch.add_argument("--background", action="store_true")
    fetch.add_argument("--timeout", type=float, default=3600, help="seconds before the transfer is stopped")
    fetch.add_argument("--src", required=True)
    fetch.add_argument("--size", required=True, type=int)
    fetch.add_argument("--dest", required=True)
    fetch.add_argument("--method", choices=["ssh", "rsync"], default="ssh")
    fetch.add_argument("--streams", type=int, default=4)
    wait = sub.add_parser("wait")
    wait.add_argument("--dest", required=True)
    wait.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args(argv)
    return cmd_fetch(args) if args.command == "fetch" else cmd_wait(args)


if __name__ == "__main__":
    sys.exit(main())
