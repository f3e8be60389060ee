# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of the artifact fetch (action plugin fetch_artifact).

The file is fetched over N parallel `ssh` streams. Stream i carries the chunks
i, i+N, i+2N, ... of the file (a small Python reader on the builder, see REMOTE), so the
bytes written on the controller form a prefix that grows at the speed of all streams
together: a hashing thread follows that prefix and the controller's sha256 is ready a
moment after the last byte. Meanwhile one more process on the builder computes the
sha256 of the source file. Neither end makes a separate pass over the file after the
transfer.

Each stream's progress (chunks done) is saved in PART.state, so a transfer cut off
resumes every stream where it stopped, as long as the source is the same file (path,
size, modification time).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

MIB = 1024 * 1024
CHUNK = 4 * MIB
SAVE_EVERY = 8  # chunks between two saves of a stream's progress

# Runs on the builder (Python 3.5+, stdlib only). `stat SRC`: prints "size mtime_ns".
# `hash SRC`: the same line, then the sha256 of the file. `read SRC CHUNK STREAMS INDEX
# FIRST`: writes chunks INDEX+k*STREAMS for k >= FIRST to stdout (sendfile where the
# kernel can, so the bytes go from the page cache to sshd without a copy).
REMOTE = r"""
import hashlib, os, stat, sys
a = sys.argv[1:]
try:
    fd = os.open(a[1], os.O_RDONLY)
except OSError as e:
    sys.stderr.write("nixforge-fetch: %s\n" % e)
    sys.exit(3)
st = os.fstat(fd)
if not stat.S_ISREG(st.st_mode):
    sys.stderr.write("nixforge-fetch: %s is not a regular file\n" % a[1])
    sys.exit(3)
size = st.st_size
if a[0] in ("stat", "hash"):
    os.write(1, ("%d %d\n" % (size, st.st_mtime_ns)).encode())
    if a[0] == "hash":
        h = hashlib.sha256()
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            h.update(b)
        os.write(1, (h.hexdigest() + "\n").encode())
    sys.exit(0)
chunk, streams, index, first = [int(x) for x in a[2:6]]
j = index + first * streams
sendfile = getattr(os, "sendfile", None)
while j * chunk < size:
    off = j * chunk
    end = min(size, off + chunk)
    while off < end:
        n = 0
        if sendfile is not None:
            try:
                n = sendfile(1, fd, off, end - off)
            except OSError:
                sendfile = None
                continue
        else:
            b = os.pread(fd, min(end - off, 1 << 20), off)
            n = os.write(1, b) if b else 0
        if n <= 0:
            sys.stderr.write("nixforge-fetch: short read at %d\n" % off)
            sys.exit(4)
        off += n
    j += streams
"""


class FetchError(Exception):
    """A transfer that did not complete (the message says why and what to do)."""


def remote_command(python: str, *args: Any) -> str:
    """The shell command line that runs REMOTE with `args` on the builder."""
    return " ".join(shlex.quote(str(a)) for a in (python, "-c", REMOTE, *args))


def ssh_command(
    host: str,
    port: Optional[int] = None,
    user: Optional[str] = None,
    identity: Optional[str] = None,
    args: Sequence[str] = (),
    ciphers: str = "",
    executable: str = "ssh",
    connect_timeout: int = 15,
) -> List[str]:
    """ssh argv up to (not including) the remote command, in the order Ansible's ssh
    connection uses: its settings first (ssh keeps the first value it sees for an
    option), then the user's ssh_common_args / ssh_extra_args strings, then our cipher
    preference, which the user's arguments therefore override."""
    cmd = [executable, "-o", "BatchMode=yes", "-o", "Compression=no", "-o", "ConnectTimeout=%d" % connect_timeout]
    if port:
        cmd += ["-o", "Port=%s" % port]
    if identity:
        cmd += ["-o", "IdentityFile=%s" % identity]
    if user:
        cmd += ["-o", "User=%s" % user]
    for extra in args:
        if extra:
            cmd += shlex.split(extra)
    cmd += ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
    if ciphers:
        cmd += ["-o", "Ciphers=%s" % ciphers]
    cmd += ["--", host]
    return cmd


def chunk_count(size: int, chunk: int = CHUNK) -> int:
    return -(-size // chunk)


def prefix_chunks(done: Sequence[int], streams: int, total: int) -> int:
    """How many chunks from the start are all present, given the chunks done per stream
    (stream i holds chunks i, i+N, ...)."""
    j = 0
    while j < total and j // streams < done[j % streams]:
        j += 1
    return j


def stream_chunks(index: int, streams: int, total: int) -> int:
    """How many chunks stream `index` carries."""
    return len(range(index, total, streams))


class PartState:
    """PART.state: which file the part belongs to, and each stream's chunks done."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.data: Dict[str, Any] = {}

    def load(self, identity: Dict[str, Any]) -> bool:
        """Keep the saved progress only for the same source and layout."""
        try:
            with open(self.path) as fh:
                old = json.load(fh)
        except (OSError, ValueError):
            old = {}
        same = all(old.get(k) == v for k, v in identity.items()) and len(old.get("done", [])) == identity["streams"]
        self.data = dict(identity, done=list(old["done"]) if same else [0] * identity["streams"])
        return same

    def advance(self, index: int, done: int) -> None:
        with self.lock:
            self.data["done"][index] = done
            self.save()

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.data, fh)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        for path in (self.path, self.path + ".tmp"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


class Transfer:
    """One fetch: builder-side hash, N streams into PART, controller-side hash."""

    def __init__(
        self,
        ssh: List[str],
        python: str,
        src: str,
        part: str,
        streams: int,
        timeout: float,
        progress: Optional[Callable[[Dict[str, Any]], None]] = None,
        progress_interval: float = 15.0,
        chunk: int = CHUNK,
        remote_hash: bool = True,
        method: str = "ssh",
    ) -> None:
        self.ssh, self.python, self.src, self.part = ssh, python, src, part
        self.streams = max(1, streams)
        self.timeout, self.chunk = timeout, chunk
        self.progress, self.progress_interval = progress, progress_interval
        self.remote_hash = remote_hash
        self.method = method
        if method == "rsync":
            self.streams = 1
        self.state = PartState(part + ".state")
        self.procs: List[subprocess.Popen] = []
        self.errors: List[str] = []
        self.cond = threading.Condition()
        self.stopped = False
        self.size = -1
        self.total = 0
        self.resumed_bytes = 0

    # -- the builder ------------------------------------------------------------
    def _spawn(self, *args: Any) -> subprocess.Popen:
        proc = subprocess.Popen(
            [*self.ssh, remote_command(self.python, *args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def _stderr(proc: subprocess.Popen) -> str:
        text = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        return text[-500:] or "no message"

    def _identity(self, proc: subprocess.Popen) -> Dict[str, Any]:
        line = proc.stdout.readline().decode(errors="replace").split() if proc.stdout else []
        if len(line) != 2:
            proc.wait()
            raise FetchError(
                "cannot read %s on the builder (ssh exit %s): %s" % (self.src, proc.returncode, self._stderr(proc))
            )
        return {
            "src": self.src,
            "size": int(line[0]),
            "mtime_ns": int(line[1]),
            "chunk": self.chunk,
            "streams": self.streams,
            "method": self.method,
        }

    # -- the streams ------------------------------------------------------------
    def _stream(self, index: int, fd: int) -> None:
        total_mine = stream_chunks(index, self.streams, self.total)
        for attempt in range(3):
            done = self.state.data["done"][index]
            if done >= total_mine:
                return
            proc = self._spawn("read", self.src, self.chunk, self.streams, index, done)
            pipe = proc.stdout.fileno() if proc.stdout else -1
            unsaved = 0
            while done < total_mine and not self.stopped:
                offset = (index + done * self.streams) * self.chunk
                want = min(self.chunk, self.size - offset)
                got = 0
                while got < want:
                    data = os.read(pipe, min(MIB, want - got))
                    if not data:
                        break
                    os.pwrite(fd, data, offset + got)
                    got += len(data)
                if got < want:
                    break
                done += 1
                unsaved += 1
                with self.cond:
                    self.state.data["done"][index] = done
                    self.cond.notify_all()
                if unsaved >= SAVE_EVERY:
                    self.state.advance(index, done)
                    unsaved = 0
            self.state.advance(index, done)
            if done >= total_mine:
                proc.wait()
                return
            proc.kill()
            proc.wait()
            if self.stopped:
                return
            if attempt < 2:
                time.sleep(2**attempt)
                continue
            self.errors.append(
                "stream %d stopped after %d of %d chunks: %s" % (index, done, total_mine, self._stderr(proc))
            )
            self._stop()

    def _rsync(self, fd: int) -> None:
        """rsync --inplace --append into PART: it grows from the start, so its length is
        the progress (whole chunks of it count as done)."""
        host = self.ssh[-1]
        target = ("[%s]" % host if ":" in host else host) + ":" + self.src
        shell = " ".join(shlex.quote(a) for a in self.ssh[:-2])
        cmd = ["rsync", "--inplace", "--append", "--no-compress", "--chmod=F644", "-e", shell, target, self.part]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(proc)
        while True:
            finished = proc.poll() is not None
            have = os.fstat(fd).st_size
            done = self.total if finished and have == self.size else min(have, self.size) // self.chunk
            with self.cond:
                self.state.data["done"][0] = done
                self.cond.notify_all()
            if finished:
                break
            time.sleep(0.2)
        self.state.save()
        if proc.returncode != 0 and not self.stopped:
            self.errors.append("rsync exit %d: %s" % (proc.returncode, self._stderr(proc)))
            self._stop()

    # -- the controller's hash ------------------------------------------------------
    def _hash_local(self, fd: int, out: Dict[str, str]) -> None:
        digest = hashlib.sha256()
        hashed = 0
        while hashed < self.size:
            with self.cond:
                while not self.stopped:
                    ready = min(
                        self.size, prefix_chunks(self.state.data["done"], self.streams, self.total) * self.chunk
                    )
                    if ready > hashed:
                        break
                    self.cond.wait(1.0)
                if self.stopped:
                    return
            while hashed < ready:
                data = os.pread(fd, min(4 * MIB, ready - hashed), hashed)
                if not data:
                    raise FetchError("the partial file %s got shorter while it was written" % self.part)
                digest.update(data)
                hashed += len(data)
        out["sha256"] = digest.hexdigest()

    def _stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()

    def done_bytes(self) -> int:
        done = self.state.data.get("done", [])
        return min(self.size, sum(done) * self.chunk) if self.size > 0 else 0

    def run(self) -> Dict[str, Any]:
        """Fetch src into part; return sizes, both sha256 and timings. Raises FetchError."""
        started = time.monotonic()
        first = self._spawn("hash" if self.remote_hash else "stat", self.src)
        identity = self._identity(first)
        self.size, self.total = identity["size"], chunk_count(identity["size"], self.chunk)
        resumed = self.state.load(identity)
        self.resumed_bytes = self.done_bytes() if resumed else 0
        self.state.save()
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        local: Dict[str, str] = {}
        try:
            if self.method == "rsync":
                if not resumed or os.fstat(fd).st_size > self.size:
                    os.ftruncate(fd, 0)  # rsync --append trusts whatever is there
                threads = [threading.Thread(target=self._rsync, args=(fd,), daemon=True)]
            else:
                if os.fstat(fd).st_size != self.size:
                    os.ftruncate(fd, self.size)
                threads = [
                    threading.Thread(target=self._stream, args=(i, fd), daemon=True) for i in range(self.streams)
                ]
            hasher_error: List[str] = []

            def hasher() -> None:
                try:
                    self._hash_local(fd, local)
                except (OSError, FetchError) as exc:
                    hasher_error.append(str(exc))
                    self._stop()

            threads.append(threading.Thread(target=hasher, daemon=True))
            for thread in threads:
                thread.start()
            remote_sha = self._follow(first, threads, started)
            if hasher_error:
                self.errors.insert(0, hasher_error[0])
        finally:
            self.state.save()
            os.close(fd)
        if self.errors:
            raise FetchError("; ".join(self.errors))
        seconds = time.monotonic() - started
        return {
            "size": self.size,
            "remote_sha256": remote_sha,
            "local_sha256": local.get("sha256", ""),
            "seconds": round(seconds, 3),
            "resumed_bytes": self.resumed_bytes,
            "mib_per_s": round((self.size - self.resumed_bytes) / max(seconds, 0.001) / MIB, 1),
        }

    def _follow(self, first: subprocess.Popen, threads: List[threading.Thread], started: float) -> str:
        """Wait for everything, reporting progress; stop it all at the timeout."""
        deadline = started + self.timeout
        next_report = started + self.progress_interval
        while any(t.is_alive() for t in threads):
            threads[-1].join(0.5)
            now = time.monotonic()
            if now > deadline:
                self.errors.insert(0, "timed out after %d s" % self.timeout)
                self._stop()
                break
            if self.progress is not None and now >= next_report:
                next_report = now + self.progress_interval
                self.progress({"done": self.done_bytes(), "size": self.size, "seconds": now - started})
        for thread in threads:
            thread.join(10)
        if self.stopped:
            first.kill()
        out = first.stdout.read().decode(errors="replace").strip() if first.stdout else ""
        first.wait()
        if not self.remote_hash or self.stopped:
            return ""
        if first.returncode != 0 or len(out) != 64:
            self.errors.append(
                "the sha256 on the builder failed (exit %s): %s" % (first.returncode, self._stderr(first))
            )
        return out
