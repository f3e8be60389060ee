# Runs INSIDE a sandbox host (the guest's /usr/bin/python3, standard library only).
#
# The sandbox's stand-in for cloud-init: the daemon parsed the user data on the
# machine side (cloudinit.py) into /var/lib/nixforge-cloud-init/plan.json; this agent
# applies it at boot, in the guest, in cloud-init's order:
#   stage "init"  (before sshd):  bootcmd (every boot), ssh host keys, write_files,
#                                 hostname, default user, authorized keys
#                                 ssh_pwauth
#   stage "final" (after sshd):   deferred write_files, packages (update, upgrade, install),
#                                 user scripts, runcmd, boot-finished, power_state
# Keys the sandbox does not apply are logged by name ("... ignored").
# Per-instance steps run once (semaphores under /var/lib/cloud/instance/sem) so a
# reboot re-runs only bootcmd, as cloud-init does.
import base64
import grp
import json
import os
import pwd
import shlex
import subprocess
import sys
import time

PLAN = "/var/lib/nixforge-cloud-init/plan.json"
INSTANCE = "/var/lib/cloud/instance"
OUTPUT_LOG = "/var/log/cloud-init-output.log"
LOG = "/var/log/cloud-init.log"
KEY_TYPES = ("rsa", "ecdsa", "ed25519")
DEFAULT_GROUPS = ("adm", "audio", "cdrom", "dialout", "dip", "floppy", "netdev", "plugdev", "sudo", "video")


def log(msg):
    with open(LOG, "a") as fh:
        fh.write("%s nixforge-cloud-init: %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), msg))


def once(name):
    """True the first time per instance; cloud-init's PER_INSTANCE frequency."""
    sem = os.path.join(INSTANCE, "sem", name)
    if os.path.exists(sem):
        return False
    os.makedirs(os.path.dirname(sem), exist_ok=True)
    with open(sem, "w") as fh:
        fh.write("%d\n" % time.time())
    return True


def run_script(name, text):
    """Run a script as root, output appended to cloud-init-output.log; failures are logged."""
    path = os.path.join(INSTANCE, "scripts", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o700)
    argv = [path] if text.startswith("#!") else ["/bin/sh", path]
    with open(OUTPUT_LOG, "ab") as out:
        rc = subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    log("%s exited %d" % (name, rc))
    return rc


def write_file(spec):
    path = spec["path"]
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    data = base64.b64decode(spec["content"])
    with open(path, "ab" if spec.get("append") else "wb") as fh:
        fh.write(data)
    os.chmod(path, int(spec.get("permissions", "0644"), 8))
    user, _sep, group = spec.get("owner", "root:root").partition(":")
    try:
        os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group or user).gr_gid)
    except KeyError as exc:
        log("write_files %s: unknown owner %s (%s)" % (path, spec.get("owner"), exc))
    log("wrote %s" % path)


def ssh_host_keys(plan):
    if plan.get("ssh_deletekeys", True) and plan.get("ssh_keys"):
        for name in os.listdir("/etc/ssh"):
            if name.startswith("ssh_host_"):
                os.unlink(os.path.join("/etc/ssh", name))
    for ktype, pair in sorted(plan.get("ssh_keys", {}).items()):
        base = "/etc/ssh/ssh_host_%s_key" % ktype
        with open(base, "w") as fh:
            fh.write(pair["private"].rstrip("\n") + "\n")
        os.chmod(base, 0o600)
        if pair.get("public"):
            with open(base + ".pub", "w") as fh:
                fh.write(pair["public"].rstrip("\n") + "\n")
            os.chmod(base + ".pub", 0o644)
    for ktype in plan.get("ssh_genkeytypes", KEY_TYPES):
        base = "/etc/ssh/ssh_host_%s_key" % ktype
        if not os.path.exists(base):
            subprocess.check_call(["ssh-keygen", "-q", "-t", ktype, "-N", "", "-f", base])
        if not os.path.exists(base + ".pub"):
            pub = subprocess.check_output(["ssh-keygen", "-y", "-f", base])
            with open(base + ".pub", "wb") as fh:
                fh.write(pub)


def default_user(plan):
    name = plan.get("default_user") or "admin"
    if name == "root":
        return name
    try:
        pwd.getpwnam(name)
    except KeyError:
        groups = [g for g in DEFAULT_GROUPS if _group_exists(g)]
        subprocess.check_call(["useradd", "-m", "-s", "/bin/bash", "-G", ",".join(groups), name])
        subprocess.check_call(["passwd", "-l", name], stdout=subprocess.DEVNULL)
    with open("/etc/sudoers.d/90-cloud-init-users", "w") as fh:
        fh.write("# Created by cloud-init (nixforge sandbox)\n%s ALL=(ALL) NOPASSWD:ALL\n" % name)
    os.chmod("/etc/sudoers.d/90-cloud-init-users", 0o440)
    return name


def _group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def authorize(user, keys, prefix=""):
    pw = pwd.getpwnam(user)
    ssh_dir = os.path.join(pw.pw_dir, ".ssh")
    os.makedirs(ssh_dir, exist_ok=True)
    path = os.path.join(ssh_dir, "authorized_keys")
    with open(path, "a") as fh:
        for key in keys:
            fh.write((prefix + " " if prefix else "") + key.strip() + "\n")
    for p, mode in ((ssh_dir, 0o700), (path, 0o600)):
        os.chown(p, pw.pw_uid, pw.pw_gid)
        os.chmod(p, mode)


def password_auth(plan):
    """cloud-init's ssh_pwauth: sshd's PasswordAuthentication, in its own drop-in."""
    conf = "/etc/ssh/sshd_config.d/50-cloud-init.conf"
    os.makedirs(os.path.dirname(conf), exist_ok=True)
    with open(conf, "w") as fh:
        fh.write("PasswordAuthentication %s\n" % ("yes" if plan["ssh_pwauth"] else "no"))
    log("ssh_pwauth: PasswordAuthentication %s" % ("yes" if plan["ssh_pwauth"] else "no"))


def packages(plan):
    """cloud-init's package-update-upgrade-install, with apt (the host's proxy applies)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = []
    if plan.get("package_update"):
        steps.append(("package_update", ["apt-get", "update"]))
    if plan.get("package_upgrade"):
        steps.append(("package_upgrade", ["apt-get", "-y", "upgrade"]))
    if plan.get("packages"):
        steps.append(("packages", ["apt-get", "-y", "install", "--no-install-recommends"] + plan["packages"]))
    for name, argv in steps:
        with open(OUTPUT_LOG, "ab") as out:
            rc = subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        log("%s: %s exited %d" % (name, " ".join(shlex.quote(a) for a in argv), rc))
        if rc != 0:
            log("%s failed: see %s" % (name, OUTPUT_LOG))
            return


def stage_init(plan):
    for key in plan.get("ignored", []):
        log("%s is not supported by the sandbox; ignored" % key)
    if plan.get("bootcmd"):
        run_script("bootcmd", plan["bootcmd"])  # every boot, like cloud-init's bootcmd
    if once("ssh_host_keys"):
        ssh_host_keys(plan)
    if once("write_files"):
        for spec in plan.get("write_files", []):
            if not spec.get("defer"):
                write_file(spec)
    if plan.get("hostname") and once("hostname"):
        with open("/etc/hostname", "w") as fh:
            fh.write(plan["hostname"] + "\n")
        subprocess.call(["hostname", plan["hostname"]])
    if once("users_ssh"):
        user = default_user(plan)
        keys = plan.get("ssh_authorized_keys", [])
        if keys:
            authorize(user, keys)
            if user != "root":
                # cloud-init's disable_root (default on): root's keys only print a hint
                prefix = ""
                if plan.get("disable_root", True):
                    prefix = (
                        'no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command="echo '
                        '\'Please login as the user \\"%s\\" rather than the user \\"root\\".\';echo;sleep 10;'
                        'exit 142"' % user
                    )
                authorize("root", keys, prefix)

    if "ssh_pwauth" in plan and once("ssh_pwauth"):
        password_auth(plan)


def stage_final(plan):
    if once("write_files_deferred"):
        for spec in plan.get("write_files", []):
            if spec.get("defer"):
                write_file(spec)
    if once("package_update_upgrade_install"):
        packages(plan)
    if once("scripts_user"):
        for i, script in enumerate(plan.get("user_scripts", [])):
            run_script("part-%03d" % (i + 1), script)
        if plan.get("runcmd"):
            run_script("runcmd", plan["runcmd"])
    with open(os.path.join(INSTANCE, "boot-finished"), "w") as fh:
        fh.write("%s up %s\n" % (time.time(), open("/proc/uptime").read().split()[0]))
    power = plan.get("power_state")
    if power and once("power_state"):
        flag = {"poweroff": "-P", "reboot": "-r", "halt": "-H"}.get(power.get("mode", "poweroff"), "-P")
        argv = ["shutdown", flag, str(power.get("delay", "now"))]
        if power.get("message"):
            argv.append(power["message"])
        log("power_state: %s" % " ".join(shlex.quote(a) for a in argv))
        subprocess.call(argv)


def main():
    stage = sys.argv[1]
    os.makedirs(INSTANCE, exist_ok=True)
    try:
        with open(PLAN) as fh:
            plan = json.load(fh)
    except (OSError, ValueError) as exc:
        log("no plan: %s" % exc)
        plan = {}
    log("stage %s" % stage)
    {"init": stage_init, "final": stage_final}[stage](plan)
    with open(os.path.join(INSTANCE, "status-%s" % stage), "w") as fh:
        fh.write("done\n")


if __name__ == "__main__":
    main()
