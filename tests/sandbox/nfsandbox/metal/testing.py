"""Helpers for tests that talk to a running sandbox's Metal emulator.

sb = MetalSandbox.running()          # None when no sandbox with Metal runs
manager = sb.manager()                # packet-python, endpoint and CA set
sb.set_faults({"throttle": 2})        # control API: POST /faults/metal
sb.metal_resources()                  # what the control API lists of Metal
sb.leftovers()                        # the same from `sandboxctl resources --json`
(control API, faults and leftovers: nfsandbox.testing.EmulatorSandbox)
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from pathlib import Path
from typing import Any

from ..testing import REPO, EmulatorSandbox, play_module, ssh_keypair


class MetalSandbox(EmulatorSandbox):
    provider = "metal"
    endpoint_key = "metal_endpoint"
    label = "Metal"

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__(state)
        endpoints = state.get("endpoints") or {}
        self.endpoint: str = endpoints["metal_endpoint"]
        self.api_url: str = endpoints["metal_api_url"]
        self.token: str = endpoints["metal_token"]
        self.project_id: str = endpoints["metal_project_id"]
        self.ca_bundle: str = endpoints.get("metal_ca_bundle") or state["ca_bundle"]

    # -- packet-python -------------------------------------------------------------
    def manager(self, token: str | None = None, under_prefix: bool = True) -> Any:
        import packet

        os.environ["REQUESTS_CA_BUNDLE"] = self.ca_bundle
        manager = packet.Manager(auth_token=token or self.token)
        manager.end_point = self.api_url[len("https://") :] if under_prefix else self.endpoint
        return manager

    def env(self) -> dict[str, str]:
        """Environment for a process using the Metal emulator (ansible-playbook, ...)."""
        return {
            "REQUESTS_CA_BUNDLE": self.ca_bundle,
            "METAL_API_URL": self.api_url,
            "METAL_AUTH_TOKEN": self.token,
            "METAL_PROJECT_ID": self.project_id,
        }

    # -- control API (EmulatorSandbox) and what the sandbox lists of Metal ------------
    def mine(self, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Metal devices and keys, plus the sandbox hosts Metal devices run on."""
        return [r for r in resources if r.get("provider") == "metal" or str(r.get("owner", "")).startswith("metal:")]

    def metal_resources(self, resources: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        return self.mine(self.resources() if resources is None else resources)

    def play(
        self, workdir: Path, tasks: list[dict[str, Any]], env: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[list[dict[str, Any]], Any]:
        """`metal_device` once per entry of `tasks` through `testing.play_module`, with the
        endpoint, token, project and CA from the environment, the way a user sets them."""
        return play_module("nixforge.images.metal_device", tasks, workdir, env={**self.env(), **(env or {})}, **kwargs)

    # -- the emulator's exchange recorder (not part of the Metal API) ----------------
    def _https(self, method: str, path: str) -> Any:
        context = ssl.create_default_context(cafile=self.ca_bundle)
        request = urllib.request.Request(f"https://{self.endpoint}{path}", method=method)
        request.add_header("X-Auth-Token", self.token)
        with urllib.request.urlopen(request, timeout=30, context=context) as response:  # noqa: S310
            raw = response.read()
        return json.loads(raw) if raw else None

    def exchanges(self) -> list[dict[str, Any]]:
        return self._https("GET", "/_sandbox/exchanges")["exchanges"]

    def clear_exchanges(self) -> None:
        self._https("DELETE", "/_sandbox/exchanges")


# -- keys and the collection for tests of metal_device ---------------------------------------


def write_keys(directory: Path) -> dict[str, str]:
    """A per-build user key and a host key, as builder_host makes them on the controller."""
    for name in ("id_ed25519", "ssh_host_ed25519_key"):
        if not (directory / name).exists():
            ssh_keypair(directory, name, comment=name)
    return {
        "public_key": (directory / "id_ed25519.pub").read_text().strip(),
        "host_key_private": (directory / "ssh_host_ed25519_key").read_text(),
        "host_key_public": (directory / "ssh_host_ed25519_key.pub").read_text().strip(),
    }


def collection_on_path() -> None:
    """Make `ansible_collections.nixforge.images` importable (as `make collection` lays it out)."""
    import sys

    root = REPO / ".build" / "collections"
    link = root / "ansible_collections" / "nixforge" / "images"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
