"""The artifact fetch (role nixos_image, entry point `fetch`) when bytes go wrong, against a
real sandbox host over real SSH:

- bytes altered on the way: the copy is detected, thrown away and fetched again; when
  every copy is altered the task fails clearly and nothing is reported or kept;
- bytes altered in the partial file a killed run left: detected, fetched again;
- a fetch killed part way (SIGKILL of ansible-playbook) resumes, and the builder sends
  only the bytes that were missing (counted where they leave the reader).

The builder's Python (the host's ansible_python_interpreter, which the fetch runs its
reader with) is a wrapper that, depending on a mode file, passes the reader's bytes
through slowly, counts them, or flips one byte of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _pipeline import kill_tree
from _record import recording, records, results_of
from nfsandbox.testing import Inventory, SandboxHandle, ansible_playbook, start_playbook

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

SIZE = 128 * 1024 * 1024  # 32 chunks of 4 MiB, 16 per stream
CHUNK = 4 * 1024 * 1024
SRC = "/var/tmp/nixforge-fetch-failpaths.bin"
WRAPPER = "/var/tmp/nf-python"
MODE = "/var/tmp/nf-fetch-mode"
SENT = "/var/tmp/nf-fetch-sent"

FETCH = (
    """\
- name: Fetch a file
  hosts: builders
  gather_facts: false
  become: true
  vars:
    ansible_python_interpreter: %s
  tasks:
    - name: Run the fetch entry point
      ansible.builtin.include_role:
        name: nixforge.images.nixos_image
        tasks_from: fetch
"""
    % WRAPPER
)

# Runs the fetch's reader (python3 -c REMOTE read SRC CHUNK STREAMS INDEX FIRST) and
# filters its output by the mode in MODE: slow (4 MiB/s per stream), count (append the
# bytes sent to SENT), flip-once / flip-always (stream 0 alters byte 100 of its output).
FILTER = r"""
import os, subprocess, sys, time
mode = open(%(mode)r).read().strip() if os.path.exists(%(mode)r) else ""
args = sys.argv[1:]
if len(args) < 3 or args[2] != "read" or not mode:
    os.execv("/usr/bin/python3", ["python3"] + args)
index = args[6]
child = subprocess.Popen(["/usr/bin/python3"] + args, stdout=subprocess.PIPE)
sent = 0
flip = mode.startswith("flip") and index == "0"
if mode == "flip-once" and flip:
    open(%(mode)r, "w").write("")
while True:
    data = child.stdout.read(1 << 20)
    if not data:
        break
    if flip and sent <= 100 < sent + len(data):
        data = bytearray(data)
        data[100 - sent] ^= 0xFF
        data = bytes(data)
    if mode == "slow":
        time.sleep(0.25)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    sent += len(data)
if mode == "count":
    with open(%(sent)r, "a") as fh:
        fh.write("%%d\n" %% sent)
sys.exit(child.wait())
""" % {"mode": MODE, "sent": SENT}


@dataclass
class Builder:
    host: dict[str, Any]
    inventory: Inventory
    directory: Path
    playbook: Path
    sha256: str

    def ssh(self, command: str, data: bytes | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["ssh", "-F", str(self.inventory.ssh_config), f"admin@{self.host['ip']}", command],
            input=data,
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc

    def mode(self, mode: str) -> None:
        self.ssh(f"echo {mode} > {MODE}; rm -f {SENT}")

    def sent(self) -> list[int]:
        out = self.ssh(f"cat {SENT} 2>/dev/null || true").stdout.decode()
        return [int(x) for x in out.split()]

    def args_env(self, dest: Path, record: Path) -> tuple[list[str], dict[str, str]]:
        variables = {
            "nixos_image_fetch_src": SRC,
            "nixos_image_dest_dir": str(dest),
            "nixos_image_dest_name": "image.bin",
            "nixos_image_fetch_streams": 2,
            "nixos_image_fetch_sha256": "",
        }
        args = ["-i", str(self.inventory.path), str(self.playbook), "-e", json.dumps(variables)]
        return args, recording(self.inventory.env, record)

    def fetch(self, dest: Path) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
        """Run the fetch play; the fetch task's recorded result."""
        record = dest.parent / f"{dest.name}-{time.monotonic_ns()}.jsonl"
        args, env = self.args_env(dest, record)
        proc = ansible_playbook(args, env, timeout=600)
        fetched = results_of(records(record), "Fetch to the controller")
        assert len(fetched) == 1, proc.stdout[-4000:]
        return proc, fetched[0]

    def fetch_killed_part_way(self, dest: Path, chunks: int) -> dict[str, Any]:
        """Start a slow fetch, SIGKILL ansible-playbook and its ssh processes once the
        saved progress shows `chunks` chunks; return the saved progress."""
        self.mode("slow")
        args, env = self.args_env(dest, dest.parent / "killed.jsonl")
        proc = start_playbook(args, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        state_file = dest / ".image.bin.part.state"
        deadline = time.monotonic() + 180
        try:
            while True:
                assert proc.poll() is None, "the fetch ended before it could be killed"
                assert time.monotonic() < deadline, "no progress saved"
                try:
                    state = json.loads(state_file.read_text())
                except (OSError, ValueError):
                    state = {}
                if sum(state.get("done") or []) >= chunks:
                    break
                time.sleep(0.1)
        finally:
            kill_tree(proc.pid)
            proc.wait()
        state = json.loads(state_file.read_text())
        assert sum(state["done"]) * CHUNK < SIZE, state  # really part way
        return state


@pytest.fixture(scope="module")
def builder(sandbox_instance: SandboxHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builder]:
    directory = tmp_path_factory.mktemp("fetch-failpaths")
    with sandbox_instance.builder_host(directory, "test-fetch-fail") as (host, inventory):
        playbook = directory / "fetch.yml"
        playbook.write_text(FETCH)
        data = os.urandom(SIZE)
        made = Builder(host, inventory, directory, playbook, hashlib.sha256(data).hexdigest())
        made.ssh(f"cat > {SRC}", data)
        made.ssh(f"cat > {WRAPPER}.py", FILTER.encode())
        made.ssh(f"printf '#!/bin/sh\\nexec /usr/bin/python3 {WRAPPER}.py \"$@\"\\n' > {WRAPPER}; chmod 755 {WRAPPER}")
        yield made


def test_bytes_altered_on_the_way_are_fetched_again(builder: Builder, tmp_path: Path) -> None:
    builder.mode("flip-once")
    proc, fetched = builder.fetch(tmp_path / "once")
    assert fetched["status"] == "ok", proc.stdout[-4000:]
    result = fetched["result"]
    assert result["sha256"] == builder.sha256 and len(result["corrupt_copies"]) == 1
    assert result["corrupt_copies"][0] != builder.sha256
    assert hashlib.sha256((tmp_path / "once" / "image.bin").read_bytes()).hexdigest() == builder.sha256
    assert sorted(p.name for p in (tmp_path / "once").iterdir()) == ["image.bin"]
    assert recorded_sha256(tmp_path / "once" / "image.bin") == builder.sha256  # for b2_object: no second hashing


def recorded_sha256(path: Path) -> str:
    """The verified sha256 the fetch records on the file (checksum_record), if its identity still matches."""
    sha256, size, mtime_ns, inode = os.getxattr(path, "user.nixforge.sha256").decode().split()
    st = path.stat()
    return sha256 if (int(size), int(mtime_ns), int(inode)) == (st.st_size, st.st_mtime_ns, st.st_ino) else ""


def test_a_fetched_copy_changed_later_is_fetched_again(builder: Builder, tmp_path: Path) -> None:
    """The record of a verified copy holds only while the file is unchanged: a copy written to
    afterwards is hashed again on a re-run, found different and fetched again."""
    dest = tmp_path / "changed"
    builder.mode("")
    proc, fetched = builder.fetch(dest)
    assert fetched["status"] == "ok" and not fetched["result"]["already_there"], proc.stdout[-4000:]
    image = dest / "image.bin"
    with open(image, "r+b") as fh:
        fh.seek(5000)
        fh.write(b"\0" * 16)
    assert recorded_sha256(image) == ""  # the write made the record stale
    builder.mode("count")
    proc, fetched = builder.fetch(dest)
    assert fetched["status"] == "ok" and not fetched["result"]["already_there"], proc.stdout[-4000:]
    assert sum(builder.sent()) == SIZE  # fetched whole once more
    assert recorded_sha256(image) == builder.sha256
    proc, fetched = builder.fetch(dest)  # unchanged now: taken as it is, by its record
    assert fetched["status"] == "ok" and fetched["result"]["already_there"], proc.stdout[-4000:]


def test_bytes_altered_every_time_fail_clearly_and_keep_nothing(builder: Builder, tmp_path: Path) -> None:
    builder.mode("flip-always")
    proc, fetched = builder.fetch(tmp_path / "always")
    assert proc.returncode != 0 and fetched["status"] == "failed"
    msg = fetched["result"]["msg"]
    assert f"Fetching {SRC} from builder failed: every copy differed from the builder's file" in msg, msg
    assert f"sha256 {builder.sha256}" in msg
    assert "Nothing was kept" in msg
    result = fetched["result"]
    assert "sha256" not in result and "size" not in result, result  # no image reported
    assert not Path(result.get("path") or tmp_path / "always" / "image.bin").exists()  # nor kept where it would be
    assert list((tmp_path / "always").iterdir()) == []


def test_a_killed_fetch_resumes_without_sending_the_bytes_again(builder: Builder, tmp_path: Path) -> None:
    dest = tmp_path / "resume"
    state = builder.fetch_killed_part_way(dest, chunks=8)
    kept = sum(state["done"]) * CHUNK
    builder.mode("count")
    proc, fetched = builder.fetch(dest)
    assert fetched["status"] == "ok", proc.stdout[-4000:]
    result = fetched["result"]
    assert result["resumed_bytes"] == kept > 0 and result["corrupt_copies"] == []
    assert result["sha256"] == builder.sha256
    # what left the builder's readers this time: exactly the chunks that were missing
    assert sum(builder.sent()) == SIZE - kept, (builder.sent(), kept)
    assert hashlib.sha256((dest / "image.bin").read_bytes()).hexdigest() == builder.sha256
    assert sorted(p.name for p in dest.iterdir()) == ["image.bin"]


def test_a_partial_file_altered_after_a_kill_is_fetched_again(builder: Builder, tmp_path: Path) -> None:
    dest = tmp_path / "partial"
    state = builder.fetch_killed_part_way(dest, chunks=8)
    assert state["done"][0] >= 1
    part = dest / ".image.bin.part"
    with open(part, "r+b") as fh:  # chunk 0 is among the kept ones: alter a byte of it
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    builder.mode("count")
    proc, fetched = builder.fetch(dest)
    assert fetched["status"] == "ok", proc.stdout[-4000:]
    result = fetched["result"]
    assert len(result["corrupt_copies"]) == 1 and result["sha256"] == builder.sha256
    # the resumed copy was thrown away; the second copy came whole
    assert sum(builder.sent()) == SIZE - sum(state["done"]) * CHUNK + SIZE
    assert hashlib.sha256((dest / "image.bin").read_bytes()).hexdigest() == builder.sha256
    assert sorted(p.name for p in dest.iterdir()) == ["image.bin"]
