"""The sandbox's EC2: moto in server mode, in-process, whose instances are sandbox hosts.

Every instance moto launches (``RunInstances`` on-demand or spot, ``RequestSpotInstances``,
``CreateFleet`` of type ``instant``) gets a sandbox host booted for it with its user data:
the instance is ``pending`` until the host's sshd answers, then ``running`` with the host's
address as its public IP (its private IP stays moto's). Terminating or stopping the
instance stops the host; a host that powers itself off terminates the instance (shutdown
behaviour ``terminate``) or stops it (``stop``). See ``patches`` for the gaps of moto that
are filled in-process and ``faults`` for the fault knobs.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from . import catalog, firewall, imds
from .faults import Ec2Faults

log = logging.getLogger("nfsandbox.ec2")

DEFAULT_USER = "admin"  # Debian's cloud images
_SETTINGS = {
    # moto reads these at import (module constants) and at call time (attributes):
    # set both, so the order of imports does not matter.
    "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "EC2_ENABLE_INSTANCE_TYPE_VALIDATION",
    "MOTO_ENABLE_AMI_VALIDATION": "ENABLE_AMI_VALIDATION",
    "MOTO_ENABLE_KEYPAIR_VALIDATION": "ENABLE_KEYPAIR_VALIDATION",
}
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,]+/[^/,]+/([^/,]+)/([^/,]+)/aws4_request")


class _Attachment:
    """One instance and the host booted for it."""

    def __init__(self, instance: Any, wants_public: bool) -> None:
        self.instance = instance
        self.instance_id = instance.id
        self.wants_public = wants_public
        self.host: Any = None
        self.released = False  # instance gone (or host gone): nothing more to do


class Provider:
    name = "ec2"

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox
        self.pool = sandbox.pool
        # nfsandbox.daemon.Sandbox has instance/state_dir/port(); older drafts had .config
        self.config = getattr(sandbox, "instance", None) or getattr(sandbox, "config", None)
        self.faults = Ec2Faults()
        self._lock = threading.RLock()
        self._attached: dict[str, _Attachment] = {}
        self._boot_threads: list[threading.Thread] = []
        self._server: Any = None
        self._catalogue_path: str | None = None
        self._saved_env: dict[str, str | None] = {}
        self._saved_settings: dict[str, Any] = {}
        self.endpoint: str | None = None
        # security groups are enforced with nftables in each host's netns (real pools only)
        self.enforce_groups = getattr(self.pool, "enforces_firewalls", False)
        # terminate: seconds in shutting-down before terminated (real pools; EC2 takes a while)
        self.shutdown_seconds = (
            float(os.environ.get("NIXFORGE_SANDBOX_EC2_SHUTDOWN_SECONDS", "3")) if (self.enforce_groups) else 0.0
        )
        # seconds a terminated instance keeps its security groups in use (DependencyViolation),
        # as EC2 does while it releases the network interface; the fault knob
        # ``security_group_hold`` overrides it per test
        self.security_group_hold_seconds = (
            float(os.environ.get("NIXFORGE_SANDBOX_EC2_SG_HOLD_SECONDS", "1")) if self.enforce_groups else 0.0
        )
        self._applied_rules: dict[str, str] = {}
        # host name -> its instance metadata service (real pools: a namespace to serve in)
        self._imds: dict[str, imds.Service] = {}
        # EventBridge-style events (spot interruption warnings), newest last
        self.events: list[dict[str, Any]] = []
        # bumped by set_faults: the spot interruption watcher of older faults ends
        self._generation = 0
        self._stopping = threading.Event()
        # whether this machine's /dev/kvm really works (the droplets' timed probe, run once,
        # at the first instance that should have KVM: bare metal or nested virtualization)
        self._accelerator: Any = None

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        state_dir = getattr(self.sandbox, "state_dir", None) or getattr(self.config, "state_dir", None)
        if state_dir is not None:
            os.makedirs(str(state_dir), exist_ok=True)
        self._catalogue_path = catalog.write_catalogue(str(state_dir) if state_dir is not None else None)
        self._configure_moto()

        from . import patches

        patches.install(self)
        port = 0  # a free one (unit tests); the daemon has a fixed port per instance
        if callable(getattr(self.sandbox, "port", None)):
            port = self.sandbox.port("ec2")
        elif self.config is not None and hasattr(self.config, "port"):
            port = self.config.port("ec2")
        self._server = _FaultyMotoServer(self, port)
        self._server.start()
        host, bound = self._server.get_host_and_port()
        self.endpoint = "http://%s:%d" % (host, bound)
        self._reset_moto()
        if self.enforce_groups:
            import shutil

            if shutil.which("nft") is None:
                raise RuntimeError("the sandbox EC2 enforces security groups with nft: install nftables (make deps)")
            self._stopping.clear()
            threading.Thread(target=self._firewall_loop, name="ec2-security-groups", daemon=True).start()
        log.info("EC2 (moto) listening on %s with %d Debian AMIs", self.endpoint, len(catalog.debian_amis()))
        return {"ec2_endpoint": self.endpoint}

    def stop(self) -> None:
        self._stopping.set()
        self._release_all()
        if self._server is not None:
            self._server.stop()
            self._server = None
        from . import patches

        patches.uninstall()
        self._restore_moto()
        if self._catalogue_path:
            try:
                os.unlink(self._catalogue_path)
            except OSError:
                pass
            self._catalogue_path = None

    def reset(self) -> None:
        """Forget everything: stop every host, clear faults, empty moto, reload the AMIs."""
        self._release_all()
        self.faults.clear()
        self.events.clear()
        self._reset_moto()

    def set_faults(self, faults: dict[str, Any]) -> None:
        """Replace the fault table (``{}`` clears it); ValueError says what is wrong."""
        self.faults.set(faults)
        log.info("EC2 faults set: %s", faults)
        self.events.clear()  # as the served counters: per fault document
        with self._lock:
            self._generation += 1  # a watcher of earlier faults ends
            if "spot_interruption" in faults:
                threading.Thread(
                    target=self._interrupt_when_due, args=(self._generation,), name="ec2-spot-interruption", daemon=True
                ).start()

    def _interrupt_when_due(self, generation: int) -> None:
        """Interrupt the spot instances the armed ``spot_interruption`` names, once due: the
        notice first (metadata ``spot/instance-action``, an EventBridge-style warning, the spot
        request ``marked-for-termination``; it uses up one ``count``), the termination
        ``notice_seconds`` later. Ends when the faults are set again."""
        running_since: dict[str, float] = {}
        due: dict[str, tuple[_Attachment, float]] = {}  # noticed instance -> (attachment, reclaim at)
        while self._generation == generation:
            entry = self.faults.interruption()
            if entry is None and not due:
                return
            now = time.monotonic()
            for iid, att in list(self.attached_hosts_full().items()) if entry is not None else []:
                if iid in due or not self._interruption_targets(entry, att):
                    continue
                if now - running_since.setdefault(iid, now) < float(entry.get("after_seconds") or 0):
                    continue
                notice = float(entry.get("notice_seconds", 120))
                due[iid] = (att, now + notice)
                self._give_notice(att, notice)
                break
            for iid, (att, at) in list(due.items()):
                if now >= at:
                    del due[iid]
                    self._reclaim(att)
            time.sleep(0.5)

    @staticmethod
    def _interruption_targets(entry: dict[str, Any], att: _Attachment) -> bool:
        instance = att.instance
        tags = {t["key"]: t["value"] for t in getattr(instance, "get_tags", lambda: [])()}
        wanted = att.instance_id in (entry.get("instance_ids") or []) or (
            entry.get("build_id") and tags.get("nixforge-build-id") == entry["build_id"]
        )
        return bool(wanted) and getattr(instance, "lifecycle", None) == "spot"

    def _give_notice(self, att: _Attachment, seconds: float) -> None:
        """EC2's interruption notice, ``seconds`` ahead (two minutes on EC2)."""
        from . import patches

        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))
        action = {"action": "terminate", "time": at}
        service = self._imds.get(getattr(att.host, "name", ""))
        if service is not None:
            service.meta.notice = action
        patches.mark_spot_request(att.instance, "marked-for-termination", at)
        self.events.append(
            {
                "detail-type": "EC2 Spot Instance Interruption Warning",
                "source": "aws.ec2",
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "detail": {"instance-id": att.instance_id, "instance-action": "terminate"},
            }
        )
        self.faults.noticed(att.instance_id)
        log.info("instance %s: spot interruption notice, terminated at %s", att.instance_id, at)

    def _reclaim(self, att: _Attachment) -> None:
        from . import patches

        log.info("instance %s: spot interruption (fault)", att.instance_id)
        patches.set_reason(att.instance, "Server.SpotInstanceTermination", "Spot instance termination")
        att.instance.terminate()  # stops the host (on_gone) before the instance is terminated
        self.faults.interrupted(att.instance_id)

    def security_group_hold(self) -> float:
        """Seconds a terminated instance still holds its security groups (see patches)."""
        armed = self.faults.security_group_hold()
        return self.security_group_hold_seconds if armed is None else armed

    def attached_hosts_full(self) -> dict[str, _Attachment]:
        """instance id -> attachment, for instances whose host is up."""
        with self._lock:
            return {iid: att for iid, att in self._attached.items() if att.host is not None}

    def get_faults(self) -> dict[str, Any]:
        return {**self.faults.snapshot(), "events": list(self.events)}

    # -- moto setup ---------------------------------------------------------------
    def _configure_moto(self) -> None:
        from moto import settings

        env = dict.fromkeys(_SETTINGS, "true")
        env["MOTO_AMIS_PATH"] = self._catalogue_path or ""
        for key, value in env.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        for attr in _SETTINGS.values():
            self._saved_settings[attr] = getattr(settings, attr)
            setattr(settings, attr, True)
        # moto read MOTO_AMIS_PATH when moto.ec2.models.amis was first imported, which
        # may have been before this provider started: replace the catalogue in place.
        from moto.ec2.models import amis

        self._saved_settings["AMIS"] = list(amis.AMIS)
        amis.AMIS[:] = catalog.amis()

    def _restore_moto(self) -> None:
        from moto import settings
        from moto.ec2.models import amis

        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for attr, value in self._saved_settings.items():
            if attr == "AMIS":
                amis.AMIS[:] = value
            else:
                setattr(settings, attr, value)
        self._saved_env.clear()
        self._saved_settings.clear()

    @staticmethod
    def _reset_moto() -> None:
        # what POST /moto-api/reset does; backends are rebuilt lazily, loading the
        # catalogue again (moto parses creation dates in place: give it fresh dicts)
        from moto.ec2.models import amis
        from moto.moto_api._internal.models import moto_api_backend

        amis.AMIS[:] = catalog.amis()
        moto_api_backend.reset()

    # -- hooks called by patches.py --------------------------------------------------
    def on_launch(self, backend: Any, instance: Any, wants_public: bool) -> None:
        """A new (or restarted) instance: pending, no public IP, until its host is up."""
        from . import patches

        patches.set_pending(instance)
        if instance.nics:
            instance.nics[0].public_ip = None
        att = _Attachment(instance, wants_public)
        with self._lock:
            self._attached[instance.id] = att
        ami = backend.amis.get(instance.image_id)
        suite = catalog.suite_of_image_name(getattr(ami, "name", None)) or "bookworm"
        arch = getattr(ami, "architecture", None) or "x86_64"
        thread = threading.Thread(
            target=self._boot,
            args=(att, _userdata(instance.user_data), arch, suite, wants_kvm(instance)),
            name="boot-" + instance.id,
        )
        thread.daemon = True
        with self._lock:
            self._boot_threads = [t for t in self._boot_threads if t.is_alive()] + [thread]
        thread.start()

    def on_gone(self, instance: Any) -> None:
        """The instance was terminated or stopped through the API: stop its host."""
        with self._lock:
            att = self._attached.pop(instance.id, None)
            if att is None or att.released:
                return
            att.released = True
            host = att.host
        if host is not None:
            self._stop_host(host)
        # a host still booting is stopped by its boot thread when it comes up

    # -- internals ----------------------------------------------------------------
    def kvm_usable(self) -> tuple[bool, str]:
        """Whether builders that should have KVM get this machine's /dev/kvm, and why.

        The timed probe of the droplets (a tiny boot program under TCG, then under KVM) runs
        once: on machines where /dev/kvm exists but a guest hangs under it, KVM is not used
        and such builders are TCG-only (no /dev/kvm), as every sandbox builder was before."""
        from ..digitalocean import qemu

        with self._lock:
            if self._accelerator is None:
                state_dir = getattr(self.sandbox, "state_dir", None) or getattr(self.config, "state_dir", None)
                work = os.path.join(str(state_dir or "/tmp"), "ec2-kvm-probe")
                self._accelerator = qemu.Accelerator(Path(work))
            accelerator = self._accelerator
        try:
            choice = accelerator.get()
        except Exception as exc:  # noqa: BLE001 - no QEMU: no KVM for builders
            return False, "KVM probe failed: %s" % exc
        return choice == "kvm", accelerator.reason

    def _boot(self, att: _Attachment, userdata: str | bytes | None, arch: str, suite: str, kvm: bool = False) -> None:
        from . import patches

        started = time.monotonic()
        extra: dict[str, Any] = {}
        if kvm and self.enforce_groups:  # real hosts only (unit tests' pools have no /dev)
            usable, reason = self.kvm_usable()
            extra["kvm"] = usable
            log.info("instance %s: KVM %s (%s)", att.instance_id, "passed through" if usable else "unusable", reason)
        key = _key_pair_public_key(att.instance)
        if key:  # KeyName: installed for the default user, as cloud-init does from metadata
            extra["metadata_keys"] = [key]
        try:
            host = self.pool.boot(
                owner=att.instance_id,
                userdata=userdata,
                default_user=DEFAULT_USER,
                on_poweroff=lambda: self._powered_off(att),
                arch=arch,
                suite=suite,
                **extra,
            )
            if self.enforce_groups:
                self._apply_groups(att.instance_id, host, att.instance)
                self._serve_metadata(att, host)
        except Exception as exc:  # noqa: BLE001 - any failure ends the instance, as on EC2
            log.error("instance %s: no host could be booted: %s", att.instance_id, exc)
            with self._lock:
                gone = att.released
                att.released = True
                self._attached.pop(att.instance_id, None)
            if not gone:
                # EC2's wording for an instance that dies while launching
                patches.set_reason(att.instance, "Server.InternalError", "Internal error on launch")
                att.instance.terminate()
            return
        with self._lock:
            stop_now = att.released
            if not stop_now:
                att.host = host
                if att.wants_public and att.instance.nics:
                    att.instance.nics[0].public_ip = host.ip
                patches.set_running(att.instance)
        if stop_now:
            self._stop_host(host)
            return
        log.info(
            "instance %s -> host %s (%s) in %.2fs", att.instance_id, host.name, host.ip, time.monotonic() - started
        )

    # -- security groups ------------------------------------------------------------
    def _apply_groups(self, instance_id: str, host: Any, instance: Any) -> None:
        members: dict[str, list[str]] = {}
        with self._lock:
            others = [(a.instance, a.host) for a in self._attached.values() if a.host is not None]
        for other, other_host in [*others, (instance, host)]:
            for group in _groups_of(other):
                members.setdefault(group.id, []).append(other_host.ip)
        script = firewall.ruleset(firewall.rules_of(_groups_of(instance), members))
        if self._applied_rules.get(instance_id) == script:
            return
        firewall.apply(host.name, script)
        self._applied_rules[instance_id] = script
        log.debug("instance %s: security groups applied", instance_id)

    def _firewall_loop(self) -> None:
        """Follow rule changes (authorize/revoke ingress) on every running instance."""
        while not self._stopping.wait(1.0):
            for iid, att in list(self.attached_hosts_full().items()):
                try:
                    self._apply_groups(iid, att.host, att.instance)
                except Exception as exc:  # noqa: BLE001 - a host going down races with this
                    log.debug("instance %s: security groups not applied: %s", iid, exc)

    def _powered_off(self, att: _Attachment) -> None:
        """The host powered itself off: EC2 applies the instance's shutdown behaviour."""
        from . import patches

        with self._lock:
            if att.released:
                return
            att.released = True
            self._attached.pop(att.instance_id, None)
        instance = att.instance
        if instance.state in ("terminated", "stopped"):
            return
        patches.set_reason(instance, "Client.InstanceInitiatedShutdown", "Instance initiated shutdown")
        if instance.instance_initiated_shutdown_behavior == "terminate":
            instance.terminate()
        else:
            instance.stop()
        log.info("instance %s %s: its host powered itself off", instance.id, instance.state)

    def _serve_metadata(self, att: _Attachment, host: Any) -> None:
        instance = att.instance
        placement = getattr(instance, "placement", None) or ""
        values = {
            "instance-id": att.instance_id,
            "instance-type": str(getattr(instance, "instance_type", "")),
            "instance-life-cycle": "spot" if getattr(instance, "lifecycle", None) == "spot" else "on-demand",
            "placement/availability-zone": str(getattr(placement, "zone", placement) or ""),
            "local-ipv4": str(getattr(instance, "private_ip", "") or ""),
            "public-ipv4": str(host.ip),
        }
        service = imds.start_for(host.name, values)
        if service is not None:
            with self._lock:
                self._imds[host.name] = service

    def _stop_host(self, host: Any) -> None:
        service = self._imds.pop(getattr(host, "name", ""), None)
        if service is not None:
            service.stop()
        try:
            self.pool.stop(host)
        except Exception:  # logged; `sandboxctl down` cleans up what is left
            log.exception("could not stop host %s", getattr(host, "name", host))

    def _release_all(self) -> None:
        with self._lock:
            atts = list(self._attached.values())
            self._attached.clear()
            for att in atts:
                att.released = True
            threads = list(self._boot_threads)
        for att in atts:
            if att.host is not None:
                self._stop_host(att.host)
        for thread in threads:  # a boot in flight stops its own host when it returns
            thread.join(timeout=180)

    def attached_hosts(self) -> dict[str, Any]:
        """instance id -> host, for hosts that are up."""
        with self._lock:
            return {iid: att.host for iid, att in self._attached.items() if att.host is not None}

    # -- inventory ----------------------------------------------------------------
    def resources(self) -> list[dict[str, Any]]:
        """Every live resource in every account and region that was touched."""
        from moto.ec2.models import ec2_backends

        out: list[dict[str, Any]] = []
        hosts = self.attached_hosts()
        for account, regions in dict.items(ec2_backends):
            for backend in dict.values(regions):

                def add(rtype: str, rid: str, extra: dict[str, Any] | None = None, *, _b=backend, _a=account) -> None:
                    item = {
                        "provider": "ec2",
                        "type": rtype,
                        "id": rid,
                        "tags": dict(_b.tags.get(rid, {})),
                        "region": _b.region_name,
                        "account": _a,
                    }
                    item.update(extra or {})
                    out.append(item)

                for reservation in list(backend.reservations.values()):
                    for inst in reservation.instances:
                        if inst.state != "terminated":
                            host = hosts.get(inst.id)
                            add(
                                "instance",
                                inst.id,
                                {
                                    "state": inst.state,
                                    "instance_type": inst.instance_type,
                                    "public_ip": inst.public_ip,
                                    "host": getattr(host, "name", None),
                                },
                            )
                for kp in list(backend.key_pairs.values()):
                    add("key-pair", kp.id, {"name": kp.key_name})
                for groups in list(backend.groups.values()):
                    for sg in list(groups.values()):
                        if sg.name != "default":
                            add("security-group", sg.id, {"name": sg.name, "vpc_id": sg.vpc_id})
                for lt in list(backend.launch_templates.values()):
                    add("launch-template", lt.id, {"name": lt.name})
                for fleet in list(backend.fleets.values()):
                    if not str(fleet.state).startswith("deleted"):
                        add("fleet", fleet.id, {"fleet_type": fleet.fleet_type, "state": fleet.state})
                for volume in list(backend.volumes.values()):
                    add("volume", volume.id, {"state": volume.status, "size": volume.size})
                for sir in list(backend.spot_instance_requests.values()):
                    if sir.state in ("open", "active"):
                        add("spot-instance-request", sir.id, {"state": sir.state, "request_type": sir.type})
                for sfr in list(backend.spot_fleet_requests.values()):
                    if sfr.state in ("submitted", "active", "modifying"):
                        add("spot-fleet-request", sfr.id, {"state": sfr.state})
                for ami in list(backend.amis.values()):
                    if ami.owner_id == backend.account_id:
                        add("image", ami.id, {"name": ami.name})
                for snap in list(backend.snapshots.values()):
                    if snap.owner_id == backend.account_id:
                        add("snapshot", snap.id)
                for address in list(backend.addresses):
                    add("elastic-ip", address.allocation_id or address.public_ip, {"public_ip": address.public_ip})
                for vpc in list(backend.vpcs.values()):
                    if not vpc.is_default:
                        add("vpc", vpc.id)
                for subnets in list(backend.subnets.values()):
                    for subnet in list(subnets.values()):
                        if not subnet.default_for_az:
                            add("subnet", subnet.id, {"vpc_id": subnet.vpc_id})
        return out


def wants_kvm(instance: Any) -> bool:
    """Bare-metal types and instances with the nested virtualization CPU option have /dev/kvm on EC2."""
    nested = (getattr(instance, "cpu_options", None) or {}).get("NestedVirtualization") == "enabled"
    size = str(getattr(instance, "instance_type", "")).partition(".")[2]
    return nested or size == "metal" or size.startswith("metal-")


def _groups_of(instance: Any) -> list[Any]:
    """The security groups of an instance (launch parameters and network interfaces)."""
    groups = list(getattr(instance, "security_groups", None) or [])
    nics = getattr(instance, "nics", None) or {}
    for nic in nics.values() if isinstance(nics, dict) else nics:
        groups += list(getattr(nic, "group_set", None) or [])
    unique: dict[str, Any] = {}
    for group in groups:
        unique.setdefault(getattr(group, "id", str(group)), group)
    return [g for g in unique.values() if hasattr(g, "ingress_rules")]


def _key_pair_public_key(instance: Any) -> str | None:
    name = getattr(instance, "key_name", None)
    backend = getattr(instance, "ec2_backend", None)
    pair = getattr(backend, "key_pairs", {}).get(name) if name and backend is not None else None
    return pair.public_key.strip() if pair is not None and getattr(pair, "material_public", None) else None


def _userdata(value: Any) -> str | bytes | None:
    """moto keeps user data base64-encoded (a Base64EncodedString, or a str from a template)."""
    if value is None:
        return None
    raw = base64.b64decode(str(value))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # gzip-compressed user data


# --- the HTTP front with fault injection -------------------------------------------------


def _action_of(environ: dict[str, Any], body: bytes) -> str:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if "Action" in query:
        return query["Action"][0]
    try:
        form = parse_qs(body.decode("utf-8", "replace"))
    except ValueError:
        return ""
    return (form.get("Action") or [""])[0]


def _is_ec2(environ: dict[str, Any], action: str) -> bool:
    match = _CREDENTIAL_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match:
        return match.group(2) == "ec2"
    return bool(action)


class _FaultMiddleware:
    """Answers EC2 requests from the fault table before moto sees them (throttle, 5xx, delay)."""

    def __init__(self, app: Any, provider: Provider) -> None:
        self.app = app
        self.provider = provider

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = BytesIO(body)
        action = _action_of(environ, body)
        if not _is_ec2(environ, action):
            return self.app(environ, start_response)
        delay, answer = self.provider.faults.http_fault(action)
        if delay:
            time.sleep(delay)
        from .patches import error_xml

        if answer is None and self.provider.faults.lose_answer(action):
            # applied by moto, but the caller never hears of it
            reply = self.app(environ, lambda *args, **kwargs: None)
            for _chunk in reply:
                pass
            answer = (500, "InternalError", "An internal error has occurred")
        if answer is None:
            return self.app(environ, start_response)

        status, code, message = answer
        log.info("EC2 fault: %s answered %d %s", action, status, code)
        payload = error_xml(code, message).encode()
        reasons = {400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}
        start_response(
            "%d %s" % (status, reasons.get(status, "Error")),
            [("Content-Type", "text/xml;charset=UTF-8"), ("Content-Length", str(len(payload)))],
        )
        return [payload]


class _QuietHandler(MotoRequestHandler):
    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        log.debug("%s %s", self.requestline, code)


class _FaultyMotoServer(ThreadedMotoServer):
    """moto's ThreadedMotoServer with the fault middleware in front of its WSGI app."""

    def __init__(self, provider: Provider, port: int) -> None:
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        self._provider = provider

    def _server_entry(self) -> None:
        # as ThreadedMotoServer._server_entry, plus the middleware and a quiet request log
        app = _FaultMiddleware(DomainDispatcherApplication(create_backend_app), self._provider)
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=_QuietHandler)
        self._server_ready_event.set()
        self._server.serve_forever()
