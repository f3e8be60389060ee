"""A device's life in background threads: `queued` -> `provisioning` -> `active` (or
`failed`), power off/on, and on delete, at `termination_time` or when the spot market
reclaims it: `deprovisioning` -> gone. Booting asks the `HostBackend` for a real sandbox host.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import uuid
from typing import Any, Callable

from . import catalog as cat
from .model import (
    Device,
    iso,
    now,
)

log = logging.getLogger("nfsandbox.metal")


class DeviceLifecycle:
    """Part of `MetalAPI` (a mixin: it uses the API's state and lock)."""

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self.lock:
            self.threads = [x for x in self.threads if x.is_alive()]
            self.threads.append(t)
        t.start()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the emulator is stopping; False when it is."""
        return not self.stopping.wait(max(0.0, seconds))

    def _provision(self, dev: Device) -> None:
        if not self._sleep(self.queued_delay):
            return
        with dev.lock:
            if dev.deleted:
                return
            dev.set_state("provisioning")
            dev.provisioning_percentage = 10.0
            dev.event("provisioning.started", f"Provisioning started for {dev.hostname}")
        if self.faults.take("fail_provisioning"):
            self._sleep(0.2)
            with dev.lock:
                if not dev.deleted:
                    dev.set_state("failed")
                    dev.provisioning_percentage = None
                    dev.event("provisioning.failed", "Provisioning failed: hardware did not pass health checks")
            log.info("metal: device %s failed (fault injection)", dev.id)
            return
        try:
            handle = self.backend.boot(dev, lambda: self._on_poweroff(dev))
        except Exception as exc:
            log.exception("metal: booting a host for device %s failed", dev.id)
            with dev.lock:
                if not dev.deleted:
                    dev.set_state("failed")
                    dev.provisioning_percentage = None
                    dev.event("provisioning.failed", f"Provisioning failed: {exc}")
            return
        with dev.lock:
            dev.host = handle
            if dev.deleted:
                stale = True
            else:
                stale = False
                dev.provisioning_percentage = 80.0
        if stale:
            self._stop_host(dev)
            return
        self._sleep(self.faults.get("provision_delay"))
        with dev.lock:
            if dev.deleted or dev.state != "provisioning":
                return
            dev.ip_addresses = self._addresses(dev, handle)
            dev.provisioning_percentage = None
            dev.set_state("active")
            dev.event("provisioning.complete", f"Provisioning completed for {dev.hostname}")
        log.info("metal: device %s active at %s", dev.id, getattr(handle, "ip", "?"))

    def _addresses(self, dev: Device, handle: Any) -> list[dict[str, Any]]:
        ip = handle.ip
        gateway, prefix = self.backend.network(handle)
        net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
        created = iso(now())

        def assignment(address: str, family: int, public: bool, network: Any, gw: str) -> dict[str, Any]:
            aid = str(uuid.uuid4())
            return {
                "id": aid,
                "address_family": family,
                "netmask": str(network.netmask),
                "created_at": created,
                "public": public,
                "cidr": network.prefixlen,
                "management": True,
                "manageable": True,
                "enabled": True,
                "global_ip": False,
                "address": address,
                "network": str(network.network_address),
                "gateway": gw,
                "href": cat.href(f"/ips/{aid}"),
                "assigned_to": {"href": cat.href(f"/devices/{dev.id}")},
                "parent_block": {
                    "network": str(network.network_address),
                    "netmask": str(network.netmask),
                    "cidr": network.prefixlen,
                    "href": cat.href(f"/ips/{uuid.uuid4()}"),
                },
            }

        # Public IPv4: the sandbox host itself (reachable). The private IPv4 and the public
        # IPv6 are there for shape only: nothing answers on them in the sandbox.
        n = int(dev.id.replace("-", "")[:4], 16)
        private = ipaddress.ip_network(f"10.{(n >> 8) & 0xFF}.{n & 0xFF}.0/31")
        v6 = ipaddress.ip_network(f"2001:db8:{n:x}::/127")
        return [
            assignment(ip, 4, True, net, gateway),
            assignment(str(private.network_address + 1), 4, False, private, str(private.network_address)),
            assignment(str(v6.network_address + 1), 6, True, v6, str(v6.network_address)),
        ]

    def _on_poweroff(self, dev: Device) -> None:
        """The OS on the device powered off (e.g. a poweroff scheduled in userdata)."""
        with dev.lock:
            if dev.deleted:
                return
            dev.host = None
            dev.set_state("inactive")
            dev.event("power.off", "Device powered off from the operating system")

    def _stop_host(self, dev: Device) -> None:
        with dev.lock:
            handle, dev.host = dev.host, None
        if handle is not None:
            try:
                self.backend.stop(handle)
            except Exception:
                log.exception("metal: stopping the host of device %s failed", dev.id)

    def _deprovision(self, dev: Device) -> None:
        self._stop_host(dev)
        self._sleep(self.faults.get("deprovision_delay"))
        with self.lock:
            self.devices.pop(dev.id, None)
            self.past_events.setdefault(dev.project_id, []).extend(self._device_events(dev))
        log.info("metal: device %s deprovisioned", dev.id)

    def _start_deprovision(self, dev: Device, reason: str) -> None:
        with dev.lock:
            if dev.deleted:
                return
            dev.deleted = True
            dev.set_state("deprovisioning")
            dev.event("deprovisioning.started", reason)
        self._spawn(self._deprovision, dev, name=f"metal-deprovision-{dev.short_id}")

    def _reclaim_due(self) -> None:
        """The `reclaim` fault: the spot market takes back a matching device once due."""
        needle = self.faults.get("reclaim")
        if not needle:
            return
        with self.lock:
            devices = [d for d in self.devices.values() if d.state == "active" and not d.deleted]
        for dev in devices:
            if needle != dev.id and not any(needle in tag for tag in dev.tags):
                continue
            active_since = dev.__dict__.setdefault("_nf_active_since", now())
            if now() - active_since < self.faults.get("reclaim_after"):
                continue
            with self.faults.lock:
                self.faults.values["reclaim"] = ""
            self.faults.count("reclaim")
            log.info("metal: device %s reclaimed by the spot market (fault)", dev.id)
            dev.event("termination.spot_market", "Device reclaimed: the spot market price exceeded the bid")
            self._start_deprovision(dev, "Device reclaimed by the spot market")
            return

    def _reap_loop(self) -> None:
        while not self.stopping.wait(0.25):
            self._reclaim_due()
            t = now()
            with self.lock:
                due = [d for d in self.devices.values() if d.termination_time is not None and d.termination_time <= t]
            for dev in due:
                if not dev.deleted:
                    log.info("metal: device %s reached its termination_time", dev.id)
                    dev.event("termination.time", "Device reached its termination_time")
                    self._start_deprovision(dev, "Device terminated at its termination_time")

    def _power_on(self, dev: Device) -> None:
        try:
            handle = self.backend.boot(dev, lambda: self._on_poweroff(dev))
        except Exception as exc:
            log.exception("metal: powering on device %s failed", dev.id)
            with dev.lock:
                dev.set_state("inactive")
                dev.event("power.on.failed", str(exc))
            return
        with dev.lock:
            if dev.deleted:
                stale = True
            else:
                stale = False
                dev.host = handle
                dev.ip_addresses = self._addresses(dev, handle)
                dev.set_state("active")
        if stale:
            self.backend.stop(handle)

    def _power_off(self, dev: Device) -> None:
        self._stop_host(dev)
        with dev.lock:
            if not dev.deleted:
                dev.set_state("inactive")
