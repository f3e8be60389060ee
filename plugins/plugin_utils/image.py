# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the nixos_image role builds: the image kinds, the resolution of
nixos_image_flake / nixos_image_module on the controller, and the build script.
Pure functions (the controller's file system aside), unit tested."""

from __future__ import annotations

import datetime
import os
import shlex
from typing import Any, Dict, List, Optional

KINDS: Dict[str, Dict[str, Any]] = {
    "sd-aarch64": {
        "definition": "sd-aarch64",
        "attribute": "nixosConfigurations.sd-aarch64.config.system.build.sdImage",
        "artifact_dir": "sd-image",
        "patterns": ["*.img.zst"],
        "describe": "sd-image/*.img.zst",
        "system": "aarch64-linux",
    },
    "do": {
        "definition": "digital-ocean",
        "attribute": "nixosConfigurations.digital-ocean.config.system.build.digitalOceanImage",
        "artifact_dir": "",
        "patterns": ["nixos.qcow2.gz", "nixos-image-digital-ocean-*.qcow2.gz"],
        "describe": "nixos.qcow2.gz or nixos-image-digital-ocean-*.qcow2.gz",
        "system": "x86_64-linux",
    },
}
SHIPPED = "nixforge:sd-aarch64, nixforge:digital-ocean, nixforge:sandbox"


class InputError(ValueError):
    """A role input that cannot work; the message names the variable and the fix."""


def _local_path(path: str, cwd: str) -> str:
    path = os.path.expanduser(path)
    return path if path.startswith("/") else os.path.normpath(os.path.join(cwd, path))


def _shipped(name: str, images_dir: str) -> str:
    """The directory of a definition shipped with the role (`nixforge:NAME`)."""
    try:
        shipped = sorted(d for d in os.listdir(images_dir) if os.path.isfile(os.path.join(images_dir, d, "flake.nix")))
    except OSError:
        shipped = []
    if name not in shipped:
        raise InputError(
            "nixos_image_flake: nixforge:%s is not a definition shipped with the collection; the shipped ones are %s"
            " (or give a flake directory or a flake reference)." % (name, ", ".join("nixforge:" + d for d in shipped))
        )
    return os.path.join(images_dir, name)


MODULE_HINT = (
    "Give a NixOS module file (like the seed's config/sd-image.nix) or a directory whose default.nix is the module."
)


def _check_module(path: str) -> None:
    """The module exists and every file of it can be read (it is copied to the builder)."""
    if not os.path.exists(path):
        raise InputError("nixos_image_module: %s does not exist on the controller. %s" % (path, MODULE_HINT))
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "default.nix")):
        raise InputError("nixos_image_module: %s is a directory without default.nix. %s" % (path, MODULE_HINT))
    files = [path] if not os.path.isdir(path) else []
    for root, _dirs, names in os.walk(path):
        files += [os.path.join(root, n) for n in names]
    for name in files:
        if not os.path.isfile(name):
            raise InputError(
                "nixos_image_module: %s is not a regular file (a broken link, a device or a pipe); the module's files"
                " are copied to the builder. %s" % (name, MODULE_HINT)
            )
        try:
            with open(name, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise InputError(
                "nixos_image_module: %s cannot be read on the controller (%s); the module's files are copied to the"
                " builder. Make it readable by the user running ansible-playbook." % (name, exc.strerror or exc)
            ) from None


def resolve(
    kind: str, flake: str, attribute: str, module: str, images_dir: str, cwd: str, work_dir: str
) -> Dict[str, Any]:
    """Resolve the image definition; raise InputError for what cannot be built."""
    if kind not in KINDS:
        raise InputError("nixos_image_kind must be one of %s, got %r." % (", ".join(KINDS), kind))
    spec = KINDS[kind]
    flake, module = flake.strip(), module.strip()
    attr = attribute.strip() or spec["attribute"]
    if flake == "":
        local_flake = os.path.join(images_dir, spec["definition"])
    elif flake.startswith("nixforge:"):
        local_flake = _shipped(flake[len("nixforge:") :], images_dir)
    elif flake.startswith(("path:", "/", "./", "../", "~")):
        local_flake = _local_path(flake[5:] if flake.startswith("path:") else flake, cwd)
    else:
        local_flake = ""
    if local_flake and not os.path.isfile(os.path.join(local_flake, "flake.nix")):
        raise InputError(
            "nixos_image_flake: %s has no flake.nix on the controller (nixos_image_flake was %r;"
            " shipped definitions: %s)." % (local_flake, flake, SHIPPED)
        )
    local_module = _local_path(module, cwd) if module else ""
    if local_module and not local_flake:
        raise InputError(
            "nixos_image_module only works with a flake directory on the controller (the role places the module next to"
            " its flake.nix as ./nixforge-module); %s is fetched by Nix itself. Put the module into that flake, or give"
            " a local flake directory." % flake
        )
    if local_module:
        _check_module(local_module)
    work = work_dir.rstrip("/") or "/"
    if not work.startswith("/") or work == "/":
        raise InputError("nixos_image_work_dir must be an absolute path below /, got %r." % work_dir)
    source = local_flake or flake
    return {
        "kind": kind,
        "attribute": attr,
        "flake": source,
        "local_flake": local_flake,
        "local_module": local_module,
        "flake_ref": ("path:%s/flake" % work) if local_flake else flake,
        "flake_ref_docker": "path:/work/flake" if local_flake else flake,
        "label": "%s#%s" % (source, attr),
        "work_dir": work,
        "artifact_dir": spec["artifact_dir"],
        "patterns": list(spec["patterns"]),
        "describe": spec["describe"],
        "system": spec["system"],
        "default_attribute": spec["attribute"],
    }


# The shipped definitions live in the role (roles/nixos_image/files/images).
SHIPPED_IMAGES = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "roles", "nixos_image", "files", "images")
)


def resolve_image(image: Dict[str, Any], cwd: str) -> Dict[str, Any]:
    """``resolve`` for the nixos_image role's inputs as one dict (kind, flake, attribute, module,
    work_dir, images_dir: empty for the shipped definitions)."""
    return resolve(
        image.get("kind") or "sd-aarch64",
        image.get("flake") or "",
        image.get("attribute") or "",
        image.get("module") or "",
        image.get("images_dir") or SHIPPED_IMAGES,
        cwd,
        image.get("work_dir") or "/var/tmp/nixforge-image",  # noqa: S108 - on the builder, the role's default
    )


def build_script(plan: Dict[str, Any], method: str, nix_args: List[str], docker_image: str, timeout: int) -> str:
    """The script run on the builder: output to build.log, exit status to exit-code.
    `timeout` runs on the builder, so the build stops even if the controller is gone."""
    q = shlex.quote
    work = plan["work_dir"]
    args = " ".join(q(a) for a in nix_args)
    stop = "timeout --kill-after=30 %d" % timeout
    if method == "nix":
        command = (
            "%s nix --extra-experimental-features 'nix-command flakes' build --print-build-logs --out-link %s %s %s"
            % (
                stop,
                q(work + "/result"),
                args,
                q(plan["flake_ref"] + "#" + plan["attribute"]),
            )
        )
    else:
        config = "experimental-features = nix-command flakes\nsandbox = false\n"
        if plan["system"] == "aarch64-linux":
            config += "extra-platforms = aarch64-linux\n"
        inner = 'nix build --print-build-logs --out-link /tmp/result "$@" && cp -RL /tmp/result/. /work/out/'
        command = (
            "mkdir -p out && %s docker run --rm --name nixforge-image-build --volume %s:/work"
            " --env NIX_CONFIG=%s %s sh -c %s nix-build %s %s"
            % (
                stop,
                q(work),
                q(config),
                q(docker_image),
                q(inner),
                args,
                q(plan["flake_ref_docker"] + "#" + plan["attribute"]),
            )
        )
    return "\n".join(
        [
            "#!/bin/sh",
            "# nixforge.images.nixos_image: builds %s" % plan["label"].replace("\n", " "),
            "cd %s || exit 1" % q(work),
            "rm -f exit-code",
            "start=$(date +%s.%N)",
            "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin:/nix/var/nix/profiles/default/bin",
            "export PATH",
            "{",
            '  echo "nixforge: building %s (%s) on $(hostname) at $(date -u +%%Y-%%m-%%dT%%H:%%M:%%SZ)"'
            % (plan["label"].replace('"', "'").replace("$", ""), method),
            "  " + command,
            "} > build.log 2>&1",
            "rc=$?",
            'echo "nixforge: exit code $rc at $(date -u +%Y-%m-%dT%H:%M:%SZ)" >> build.log',
            'echo "$rc $start $(date +%s.%N)" > exit-code.tmp && mv exit-code.tmp exit-code',
            'exit "$rc"',
            "",
        ]
    )


def start_command(work_dir: str, wait: int) -> str:
    """Start build.sh in its own session so that it outlives the SSH connection (its own
    `timeout` stops it even if the controller is gone), its PID in build.pid. The shell
    waits until build.sh has written build.log: had it exited at once, the PTY's hang-up
    could reach the child before setsid ran, and a loaded builder lost builds that way;
    nohup covers that window too. Prints `started`, or `not-started` after `wait` seconds."""
    return (
        "cd %s && { nohup setsid /bin/sh ./build.sh </dev/null >/dev/null 2>&1 & echo $! > build.pid; }; i=0;"
        " while [ $i -lt %d ] && [ ! -e build.log ]; do sleep 0.1; i=$((i+1)); done;"
        " if [ -e build.log ]; then echo started; else echo not-started; fi" % (shlex.quote(work_dir), wait * 10)
    )


# exit_code when build.sh is gone without writing its exit status
VANISHED = -1
# exit_code when EC2 gave the builder a spot interruption notice while it built
INTERRUPTED = -2

# Runs on an EC2 builder: the spot interruption notice (instance metadata, IMDSv2 token,
# IMDSv1 when tokens are off), one JSON line, or nothing while there is none.
SPOT_NOTICE = (
    "import urllib.request as u\n"
    "b = 'http://169.254.169.254/latest/'\n"
    "h = {}\n"
    "o = u.build_opener()\n"
    "try:\n"
    "    r = u.Request(b + 'api/token', method='PUT', headers={'X-aws-ec2-metadata-token-ttl-seconds': '60'})\n"
    "    h = {'X-aws-ec2-metadata-token': o.open(r, timeout=1).read().decode()}\n"
    "except Exception:\n"
    "    pass\n"
    "try:\n"
    "    print(o.open(u.Request(b + 'meta-data/spot/instance-action', headers=h), timeout=1).read().decode())\n"
    "except Exception:\n"
    "    pass\n"
)


def follow_command(work_dir: str, wait: int, lines: int, spot_notice: bool = False) -> str:
    """One round of following the build: wait up to `wait` seconds for it to end, then
    print `finished <exit-code line>`, `running`, `vanished` (the process is gone and
    left no exit status: killed) or, with `spot_notice`, `interrupted <notice JSON>` (EC2's
    two-minute spot interruption notice in the instance metadata, looked for every 2 s),
    then the last `lines` lines of build.log. exit-code is read again after the liveness
    check, as the build may end between the two."""
    notice = ""
    if spot_notice:
        notice = ' if [ $((i %% 10)) -eq 0 ]; then n=$(python3 -c %s 2>/dev/null); [ -n "$n" ] && break; fi;' % (
            shlex.quote(SPOT_NOTICE)
        )
    return (
        "cd %s && pid=$(cat build.pid 2>/dev/null); i=0; n=;"
        ' while [ $i -lt %d ] && [ ! -e exit-code ] && kill -0 "$pid" 2>/dev/null; do%s sleep 0.2; i=$((i+1)); done;'
        " if [ -e exit-code ]; then echo finished $(cat exit-code);"
        ' elif [ -n "$n" ]; then echo interrupted $n;'
        ' elif kill -0 "$pid" 2>/dev/null; then echo running;'
        " elif [ -e exit-code ]; then echo finished $(cat exit-code);"
        " else echo vanished; fi;"
        " tail -n %d build.log 2>/dev/null; true" % (shlex.quote(work_dir), wait * 5, notice, lines)
    )


SIGNALS = {1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM"}


def failure_reason(exit_code: Optional[int], timeout: int, seconds: Optional[float] = None, detail: str = "") -> str:
    """Why the build failed, in the words the role's users know.

    ``seconds``: how long build.sh ran (its exit-code file), which tells the timeout's own
    SIGKILL (``--kill-after``, never before ``timeout`` s) from an earlier kill, such as the
    OOM killer's (exit 137). ``detail``: for a kill, what ``kernel_log_lines`` found on the
    builder; for an interruption, EC2's notice."""
    stopped = "it ran longer than nixos_image_build_timeout (%d s) and was stopped" % timeout
    if exit_code is None or exit_code == 124:
        return stopped
    if exit_code == INTERRUPTED:
        return (
            "interrupted by EC2 (spot): the instance metadata gave the two-minute notice (%s), so the"
            " build was given up and the builder torn down" % (detail or "spot/instance-action")
        )
    if exit_code == VANISHED:
        return (
            "the build process ended without an exit status: it was killed (out of memory,"
            " a reboot, or someone else) before it could finish"
        )
    if exit_code <= 128:
        return "the build command exited with code %d" % exit_code
    signal = SIGNALS.get(exit_code - 128, "signal %d" % (exit_code - 128))
    if signal == "SIGKILL" and seconds is not None and seconds >= timeout:
        return stopped
    if seconds is None:
        text = "it was killed by %s (exit %d), by someone or by nixos_image_build_timeout (%d s)" % (
            signal,
            exit_code,
            timeout,
        )
    else:
        text = "it was killed by %s (exit %d) after %s, before nixos_image_build_timeout (%d s)" % (
            signal,
            exit_code,
            elapsed_text(seconds),
            timeout,
        )
    if signal == "SIGKILL":
        text += " - the kernel's OOM killer sends SIGKILL when the builder runs out of memory"
    return text + (". Kernel log: %s" % detail if detail else "")


# Runs on the builder after a kill: the kernel log's out-of-memory lines, with ISO times.
KERNEL_LOG_COMMAND = (
    "if out=$(dmesg --time-format iso 2>&1); then printf '%s\\n' \"$out\";"
    " elif out2=$(journalctl -k -o short-iso --no-pager 2>&1); then printf '%s\\n' \"$out2\";"
    " else echo \"unreadable: $out\"; fi | grep -i -E 'out of memory|oom-kill|oom_kill|killed process|^unreadable'"
    " | tail -n 20; true"
)


def kernel_log_lines(output: str, since_epoch: Optional[float]) -> str:
    """The out-of-memory lines of ``KERNEL_LOG_COMMAND``'s output logged since the build
    started (the sandbox's or a container's kernel log is the machine's: older lines are not
    ours), joined; or why there are none."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if lines and lines[0].startswith("unreadable:"):
        return "(the kernel log is not readable on the builder, as in some containers: %s)" % lines[0][11:].strip()
    found = [line for line in lines if since_epoch is None or (_logged_at(line) or since_epoch) >= since_epoch]
    return " | ".join(found[-3:]) if found else "(no out-of-memory line in the builder's kernel log)"


def _logged_at(line: str) -> Optional[float]:
    """The epoch of a dmesg/journalctl ISO time stamp at the start of ``line`` (None: none)."""
    stamp = line.split(" ", 1)[0].replace(",", ".")
    try:
        moment = datetime.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def elapsed_text(seconds: float) -> str:
    seconds = int(seconds)
    return "%dm%02ds" % (seconds // 60, seconds % 60)
