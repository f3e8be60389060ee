"""The fetch engine, with `/bin/sh -c` standing in for `ssh HOST`: the real remote
reader, real processes, pipes and files, only no network."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from ansible_collections.nixforge.images.plugins.plugin_utils import fetch
from ansible_collections.nixforge.images.plugins.plugin_utils.fetch import (
    FetchError,
    PartState,
    Transfer,
    prefix_chunks,
    ssh_command,
    stream_chunks,
)

LOCAL = ["/bin/sh", "-c"]  # runs the "remote" command here
CHUNK = 64 * 1024


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(CHUNK * 10 + 1234)  # a last chunk that is not full
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    return path, data


def transfer(src: Path, part: Path, streams: int = 3, **kw) -> Transfer:
    return Transfer(list(LOCAL), "python3", str(src), str(part), streams=streams, timeout=60, chunk=CHUNK, **kw)


def test_prefix_follows_the_stripes() -> None:
    # 3 streams, 10 chunks: stream 0 has chunks 0, 3, 6, 9.
    assert [stream_chunks(i, 3, 10) for i in range(3)] == [4, 3, 3]
    assert prefix_chunks([0, 0, 0], 3, 10) == 0
    assert prefix_chunks([1, 1, 0], 3, 10) == 2
    assert prefix_chunks([2, 1, 1], 3, 10) == 4
    assert prefix_chunks([4, 3, 3], 3, 10) == 10


def test_ssh_command_keeps_the_users_settings_and_orders_ciphers_last() -> None:
    cmd = ssh_command(
        host="203.0.113.7",
        port=2222,
        user="admin",
        identity="/k/id",
        args=["-o UserKnownHostsFile=/k/known_hosts -o StrictHostKeyChecking=yes", "", "-o 'ProxyJump=a b'"],
        ciphers="aes128-gcm@openssh.com",
    )
    assert cmd[:2] == ["ssh", "-o"] and "BatchMode=yes" in cmd
    assert cmd[-2:] == ["--", "203.0.113.7"]
    joined = " ".join(cmd)
    assert "Port=2222" in joined and "IdentityFile=/k/id" in joined and "User=admin" in joined
    assert "UserKnownHostsFile=/k/known_hosts" in joined and "ProxyJump=a b" in cmd
    # ssh keeps the first value of an option: the user's arguments come before our ciphers.
    assert cmd.index("StrictHostKeyChecking=yes") < cmd.index("Ciphers=aes128-gcm@openssh.com")
    assert "StrictHostKeyChecking=no" not in joined


@pytest.mark.parametrize("streams", [1, 3, 16])
def test_fetches_hashes_on_both_ends_and_leaves_the_state(tmp_path: Path, source, streams: int) -> None:
    src, data = source
    part = tmp_path / "out.part"
    done = transfer(src, part, streams=streams).run()
    want = hashlib.sha256(data).hexdigest()
    assert part.read_bytes() == data
    assert done["remote_sha256"] == want and done["local_sha256"] == want
    assert done["size"] == len(data) and done["resumed_bytes"] == 0


def test_rsync_method_when_rsync_is_there(tmp_path: Path, source) -> None:
    if not any(os.access(os.path.join(d, "rsync"), os.X_OK) for d in os.environ["PATH"].split(os.pathsep)):
        pytest.skip("no rsync on this machine")
    src, data = source
    part = tmp_path / "out.part"
    # rsync runs `-e "<ssh command>" HOST:SRC`: a tiny fake ssh that drops the host.
    fake = tmp_path / "fakessh"
    fake.write_text('#!/bin/sh\n[ "$1" = -- ] && shift\nshift\nexec /bin/sh -c "$*"\n')
    fake.chmod(0o755)
    t = Transfer([str(fake), "--", "localhost"], "python3", str(src), str(part), 1, 60, chunk=CHUNK, method="rsync")
    done = t.run()
    assert part.read_bytes() == data and done["local_sha256"] == hashlib.sha256(data).hexdigest()


def test_resumes_each_stream_and_overwrites_garbage(tmp_path: Path, source) -> None:
    src, data = source
    part = tmp_path / "out.part"
    first = transfer(src, part)
    identity = first._identity(first._spawn("stat", str(src)))
    # Streams 0 and 2 got somewhere, stream 1 nowhere; everything else is garbage.
    blob = bytearray(b"\xa5" * len(data))
    for chunk in (0, 3, 2):
        blob[chunk * CHUNK : (chunk + 1) * CHUNK] = data[chunk * CHUNK : (chunk + 1) * CHUNK]
    part.write_bytes(bytes(blob))
    Path(str(part) + ".state").write_text(json.dumps(dict(identity, done=[2, 0, 1])))
    done = transfer(src, part).run()
    assert done["resumed_bytes"] == 3 * CHUNK
    assert part.read_bytes() == data and done["local_sha256"] == hashlib.sha256(data).hexdigest()


def test_a_changed_source_is_not_resumed(tmp_path: Path, source) -> None:
    src, data = source
    part = tmp_path / "out.part"
    part.write_bytes(b"\xa5" * len(data))
    stale = {"src": str(src), "size": len(data), "mtime_ns": 1, "chunk": CHUNK, "streams": 3, "method": "ssh"}
    Path(str(part) + ".state").write_text(json.dumps(dict(stale, done=[4, 3, 3])))
    done = transfer(src, part).run()
    assert done["resumed_bytes"] == 0 and part.read_bytes() == data


def test_a_missing_source_fails_with_the_builders_words(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"cannot read .*nowhere.bin.*No such file"):
        transfer(tmp_path / "nowhere.bin", tmp_path / "out.part").run()


def test_a_stream_that_keeps_failing_stops_the_transfer(tmp_path: Path, source, monkeypatch) -> None:
    src = source[0]
    monkeypatch.setattr(fetch.time, "sleep", lambda s: None)
    t = transfer(src, tmp_path / "out.part")
    real = t._spawn

    def spawn(*args):
        if args[0] == "read" and args[4] == 1:
            return real("read", "/nonexistent", *args[2:])
        return real(*args)

    t._spawn = spawn  # type: ignore[method-assign]
    with pytest.raises(FetchError, match="stream 1 stopped after 0 of 4 chunks"):
        t.run()
    saved = json.loads(Path(str(tmp_path / "out.part") + ".state").read_text())
    assert saved["done"][1] == 0


def test_times_out(tmp_path: Path, source) -> None:
    src = source[0]
    slow = tmp_path / "slowssh"
    slow.write_text('#!/bin/sh\nsleep 5\nexec /bin/sh -c "$*"\n')
    slow.chmod(0o755)
    t = Transfer([str(slow)], "python3", str(src), str(tmp_path / "p"), 2, timeout=1, chunk=CHUNK)
    t._identity = lambda proc: {  # type: ignore[method-assign]
        "src": str(src),
        "size": src.stat().st_size,
        "mtime_ns": 0,
        "chunk": CHUNK,
        "streams": 2,
        "method": "ssh",
    }
    with pytest.raises(FetchError, match="timed out after 1 s"):
        t.run()


def test_part_state_round_trip(tmp_path: Path) -> None:
    state = PartState(str(tmp_path / "x.state"))
    identity = {"src": "/a", "size": 10, "mtime_ns": 5, "chunk": 4, "streams": 2, "method": "ssh"}
    assert state.load(identity) is False and state.data["done"] == [0, 0]
    state.advance(1, 2)
    again = PartState(state.path)
    assert again.load(identity) is True and again.data["done"] == [0, 2]
    assert again.load(dict(identity, size=11)) is False
    again.remove()
    assert not Path(state.path).exists()
