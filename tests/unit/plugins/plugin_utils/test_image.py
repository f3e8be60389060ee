"""Resolution of nixos_image's inputs and its build script."""

from __future__ import annotations

import os
import pty
import subprocess
import time
from pathlib import Path

import pytest
from ansible_collections.nixforge.images.plugins.plugin_utils.image import (
    INTERRUPTED,
    KERNEL_LOG_COMMAND,
    VANISHED,
    InputError,
    build_script,
    failure_reason,
    follow_command,
    kernel_log_lines,
    resolve,
    start_command,
)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for name in ("sd-aarch64", "digital-ocean", "sandbox"):
        (tmp_path / "images" / name).mkdir(parents=True)
        (tmp_path / "images" / name / "flake.nix").write_text("{}")
    return tmp_path / "images"


def res(images: Path, cwd: Path, **kw):
    args = {"kind": "sd-aarch64", "flake": "", "attribute": "", "module": "", "work_dir": "/var/tmp/w/"}
    args.update(kw)
    return resolve(
        args["kind"], args["flake"], args["attribute"], args["module"], str(images), str(cwd), args["work_dir"]
    )


def test_defaults_and_shipped_names(images: Path, tmp_path: Path) -> None:
    sd = res(images, tmp_path)
    assert sd["local_flake"] == str(images / "sd-aarch64") and sd["flake_ref"] == "path:/var/tmp/w/flake"
    assert sd["attribute"].endswith("sdImage") and sd["patterns"] == ["*.img.zst"] and sd["work_dir"] == "/var/tmp/w"
    do = res(images, tmp_path, kind="do", flake="nixforge:sandbox")
    assert do["local_flake"] == str(images / "sandbox") and do["attribute"].endswith("digitalOceanImage")
    remote = res(images, tmp_path, flake=" github:me/images ", attribute="packages.x.y")
    assert remote["local_flake"] == "" and remote["flake_ref"] == "github:me/images"
    assert remote["label"] == "github:me/images#packages.x.y"


def test_relative_flake_and_module(images: Path, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "flake.nix").write_text("{}")
    (tmp_path / "mod.nix").write_text("{}")
    plan = res(images, tmp_path, flake="./mine", module="mod.nix")
    assert plan["local_flake"] == str(tmp_path / "mine") and plan["local_module"] == str(tmp_path / "mod.nix")
    assert res(images, tmp_path, flake="path:mine")["local_flake"] == str(tmp_path / "mine")


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"kind": "iso"}, "nixos_image_kind must be one of"),
        ({"flake": "/nowhere"}, "has no flake.nix on the controller"),
        ({"module": "/nonexistent.nix"}, "nixos_image_module: /nonexistent.nix does not exist"),
        ({"flake": "github:x/y", "module": "/"}, "only works with a flake directory"),
        ({"work_dir": "relative"}, "nixos_image_work_dir must be an absolute path"),
    ],
)
def test_bad_inputs_name_the_variable(images: Path, tmp_path: Path, kw, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        res(images, tmp_path, **kw)


def test_module_directory_needs_default_nix(images: Path, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(InputError, match=r"directory without default\.nix"):
        res(images, tmp_path, module=str(tmp_path / "m"))


def test_build_script_is_valid_shell_and_quotes(images: Path, tmp_path: Path) -> None:
    plan = res(images, tmp_path, attribute="a b'c")
    script = build_script(plan, "nix", ["--option", "cores", "4; rm -rf /"], "img", 60)
    assert "timeout --kill-after=30 60 nix" in script and "'4; rm -rf /'" in script
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    docker = build_script(plan, "docker", [], "docker.io/nixos/nix:2.28.5", 60)
    assert "docker run --rm" in docker and "extra-platforms = aarch64-linux" in docker
    subprocess.run(["sh", "-n"], input=docker, text=True, check=True)


def test_failure_reasons() -> None:
    assert failure_reason(7, 60) == "the build command exited with code 7"
    assert "longer than nixos_image_build_timeout (60 s)" in failure_reason(124, 60)
    assert "longer than" in failure_reason(None, 60)


def test_a_build_killed_by_a_signal_is_reported_as_killed_not_as_a_timeout() -> None:
    """Exit 137 before the timeout is a kill (the OOM killer's SIGKILL), with the kernel's
    line when there is one; at or after the timeout it is the timeout's own --kill-after."""
    oom = "2026-12-06T22:00:05,000000+00:00 Out of memory: Killed process 4242 (nix) total-vm:9000kB"
    killed = failure_reason(137, 3600, 42.0, oom)
    assert killed.startswith("it was killed by SIGKILL (exit 137) after 0m42s, before nixos_image_build_timeout")
    assert "OOM killer" in killed and killed.endswith("Kernel log: " + oom)
    assert "longer than" not in killed
    assert "longer than nixos_image_build_timeout (60 s)" in failure_reason(137, 60, 95.0)
    assert failure_reason(143, 3600, 10.0).startswith("it was killed by SIGTERM (exit 143) after 0m10s")
    assert "longer than" not in failure_reason(137, 60)  # the length unknown: not called a timeout
    assert failure_reason(1, 60, 5.0) == "the build command exited with code 1"


def test_kernel_log_lines_keep_the_lines_of_this_build_or_say_why_there_are_none() -> None:
    start = 1796594400.0  # 2026-12-06T22:00:00Z
    output = (
        "2026-12-06T21:00:00,000000+00:00 Out of memory: Killed process 1 (old)\n"
        "2026-12-06T22:00:07,500000+00:00 Out of memory: Killed process 4242 (nix)\n"
    )
    assert (
        kernel_log_lines(output, start) == "2026-12-06T22:00:07,500000+00:00 Out of memory: Killed process 4242 (nix)"
    )
    assert kernel_log_lines("", start) == "(no out-of-memory line in the builder's kernel log)"
    refused = kernel_log_lines("unreadable: dmesg: read kernel buffer failed: Operation not permitted", start)
    assert refused.startswith("(the kernel log is not readable on the builder") and "not permitted" in refused
    subprocess.run(["sh", "-n", "-c", KERNEL_LOG_COMMAND], check=True)


def _run_in_pty(command: str) -> str:
    """Run `command` with sh as the session leader of a new PTY, as `ssh -tt` does, and
    return once the shell has exited (its PTY hangs up then)."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs at once
        os.execv("/bin/sh", ["/bin/sh", "-c", command])  # noqa: S606 - the command under test is a shell script
    out = b""
    try:
        while chunk := os.read(fd, 1024):
            out += chunk
    except OSError:  # EIO: the PTY hung up
        pass
    os.waitpid(pid, 0)
    os.close(fd)
    return out.decode()


def test_start_command_survives_the_pty_hangup(tmp_path: Path) -> None:
    """The build starts even when the SSH command's shell exits, and its PTY hangs up,
    right away on a busy builder. Busy loops load both cores: without the wait for
    build.log, roughly 4 starts in 10 were lost here."""
    burners = [subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"]) for _core in range(2)]
    try:
        works = []
        for n in range(40):
            work = tmp_path / ("w%d" % n)
            work.mkdir()
            # the build goes on after it said it started: the hang-up must not kill it then either
            (work / "build.sh").write_text("echo building > build.log\nsleep 0.5\necho ok > done\n")
            assert "started" in _run_in_pty(start_command(str(work), 10)).split()
            works.append(work)
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all((w / "done").exists() for w in works):
        time.sleep(0.1)
    killed = [w.name for w in works if not (w / "done").exists()]
    assert killed == []


def test_start_command_reports_a_build_that_never_starts(tmp_path: Path) -> None:
    (tmp_path / "build.sh").write_text("exit 0\n")  # writes no build.log
    assert _run_in_pty(start_command(str(tmp_path), 1)).split()[-1] == "not-started"


def _follow(work: Path, wait: int = 0) -> list[str]:
    out = subprocess.run(
        ["/bin/sh", "-c", follow_command(str(work), wait, 2)], capture_output=True, text=True, check=False
    )
    return out.stdout.splitlines()


def test_follow_tells_running_finished_and_vanished_apart(tmp_path: Path) -> None:
    (tmp_path / "build.log").write_text("one\ntwo\nthree\n")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "build.pid").write_text("%d\n" % sleeper.pid)
        assert _follow(tmp_path) == ["running", "two", "three"]
    finally:
        sleeper.kill()
        sleeper.wait()
    # gone without an exit status: killed
    assert _follow(tmp_path, wait=5)[0] == "vanished"
    (tmp_path / "exit-code").write_text("0 1.0 2.5\n")
    assert _follow(tmp_path)[0] == "finished 0 1.0 2.5"


def test_a_build_killed_on_the_builder_is_reported_at_once(tmp_path: Path) -> None:
    """build.sh killed (as the OOM killer would) leaves no exit-code: the next round of
    following says so instead of waiting for the build timeout."""
    (tmp_path / "build.sh").write_text("echo started > build.log\nsleep 0.3\nkill -9 $$\n")
    assert _run_in_pty(start_command(str(tmp_path), 10)).split()[-1] == "started"
    started = time.monotonic()
    assert _follow(tmp_path, wait=20)[0] == "vanished"
    assert time.monotonic() - started < 10
    assert failure_reason(VANISHED, 60).startswith("the build process ended without an exit status")


def test_follow_notices_a_spot_interruption_within_seconds(tmp_path: Path) -> None:
    """With spot_notice, a round ends as soon as the metadata has EC2's notice (a python3 on
    PATH stands in for the metadata query here; the real one runs against the sandbox's IMDS
    in test_playbook_sd.py), however long the round was meant to wait."""
    (tmp_path / "build.log").write_text("one\ntwo\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    flag = tmp_path / "noticed"
    (fake / "python3").write_text(
        '#!/bin/sh\n[ -e %s ] && echo \'{"action": "terminate", "time": "2026-12-06T22:02:00Z"}\'\nexit 0\n' % flag
    )
    (fake / "python3").chmod(0o755)
    env = {**os.environ, "PATH": "%s:%s" % (fake, os.environ["PATH"])}
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "build.pid").write_text("%d\n" % sleeper.pid)
        command = follow_command(str(tmp_path), 1, 2, spot_notice=True)
        quiet = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, env=env, check=True)
        assert quiet.stdout.splitlines()[0] == "running"  # no notice: the build goes on
        flag.touch()
        command = follow_command(str(tmp_path), 60, 2, spot_notice=True)
        started = time.monotonic()
        noticed = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, env=env, check=True)
        assert time.monotonic() - started < 30  # not the round's 60 s
        lines = noticed.stdout.splitlines()
        assert lines[0] == 'interrupted {"action": "terminate", "time": "2026-12-06T22:02:00Z"}', lines
        assert lines[1:] == ["one", "two"]
        # without spot_notice the metadata is never asked
        assert "169.254.169.254" not in follow_command(str(tmp_path), 60, 2)
    finally:
        sleeper.kill()
        sleeper.wait()
    reason = failure_reason(INTERRUPTED, 60, 5.0, '{"action": "terminate"}')
    assert reason.startswith("interrupted by EC2 (spot)") and '{"action": "terminate"}' in reason
