"""Helpers for tests that use the DigitalOcean emulator (no pytest needed here).

sb = DOSandbox.running()             # None when no sandbox with DigitalOcean runs
manager = sb.manager()                # python-digitalocean Manager on the emulator
sb.set_faults({"throttle_rate": 0.2}) # control API: POST /faults/digitalocean
sb.served_faults()                    # {"429": n, "500": n, "503": n} served so far
sb.do_resources()                     # what `sandboxctl resources --json` lists for digitalocean
sb.post("images", {...})              # POST /v2/images as another client: the image created

Image files for imports: `qcow2_image(size)`, `mbr_image()`, `gpt_image()`, ... build small
but structurally real disk images; `FileServer(directory)` serves a directory over HTTP on
127.0.0.1 (with a HEAD answer and an optional 403 for chosen names) for the emulator to fetch.
"""

from __future__ import annotations

import functools
import json
import os
import ssl
import struct
import threading
import urllib.request
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..testing import EmulatorSandbox


class DOSandbox(EmulatorSandbox):
    provider = "digitalocean"
    endpoint_key = "digitalocean_endpoint"
    label = "DigitalOcean"

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__(state)
        endpoints = state.get("endpoints") or {}
        self.endpoint: str = endpoints["digitalocean_endpoint"]
        self.api_url: str = endpoints["DIGITALOCEAN_API_URL"]
        self.token: str = endpoints["DIGITALOCEAN_TOKEN"]
        # HTTPS only: the sandbox's CA (DIGITALOCEAN_CA_BUNDLE / REQUESTS_CA_BUNDLE)
        self.ca_bundle: str = endpoints["DIGITALOCEAN_CA_BUNDLE"]
        self.tls = ssl.create_default_context(cafile=self.ca_bundle)

    # -- python-digitalocean -----------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {
            "DIGITALOCEAN_TOKEN": self.token,
            "DIGITALOCEAN_API_URL": self.api_url,
            "DIGITALOCEAN_END_POINT": self.api_url,
            "DIGITALOCEAN_CA_BUNDLE": self.ca_bundle,
            "REQUESTS_CA_BUNDLE": self.ca_bundle,  # python-digitalocean on its own (requests)
        }

    def manager(self, token: str | None = None) -> Any:
        import digitalocean

        # objects python-digitalocean builds itself (Account, Action) read the end point from here
        os.environ["DIGITALOCEAN_END_POINT"] = self.api_url
        os.environ["REQUESTS_CA_BUNDLE"] = self.ca_bundle  # the sandbox CA plus the system's
        return digitalocean.Manager(token=token or self.token, end_point=self.api_url)

    def image(self, **kwargs: Any) -> Any:
        import digitalocean

        os.environ["DIGITALOCEAN_END_POINT"] = self.api_url
        os.environ["REQUESTS_CA_BUNDLE"] = self.ca_bundle  # the sandbox CA plus the system's
        return digitalocean.Image(token=self.token, end_point=self.api_url, **kwargs)

    def call(self, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
        """`method path` (e.g. "GET", "/v2/droplets") as another client gets it: HTTPS with
        this instance's CA and the token; the decoded answer, its status checked if `expect`."""
        import requests

        headers = {"Authorization": f"Bearer {self.token}"}
        answer = requests.request(
            method, self.endpoint + path, json=body, headers=headers, timeout=60, verify=self.ca_bundle
        )
        if expect is not None:
            assert answer.status_code == expect, (method, path, answer.status_code, answer.text[:500])
        return answer.json() if answer.content else None

    def post(self, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v2/<collection> with the token, as a client other than ours would: the
        created object (`{"image": {...}}` gives the image)."""
        request = urllib.request.Request(  # noqa: S310 - the sandbox's emulator on loopback
            "%s/%s" % (self.api_url.rstrip("/"), collection),
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": "Bearer " + self.token, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60, context=self.tls) as response:  # noqa: S310
            return json.loads(response.read())[collection.rstrip("s")]

    # -- control API (EmulatorSandbox) ----------------------------------------------------
    def do_resources(self, resources: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        return self.mine(self.resources() if resources is None else resources)

    # -- the emulator's side doors (not part of the DigitalOcean API) ---------------------
    def _sandbox(self, method: str, what: str) -> Any:
        request = urllib.request.Request(f"{self.endpoint}/_sandbox/{what}", method=method)  # noqa: S310
        request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=30, context=self.tls) as response:  # noqa: S310 - loopback
            raw = response.read()
        return json.loads(raw) if raw else None

    def exchanges(self) -> list[dict[str, Any]]:
        return self._sandbox("GET", "exchanges")["exchanges"]

    def clear_exchanges(self) -> None:
        self._sandbox("DELETE", "exchanges")

    def faults(self) -> dict[str, Any]:
        """The knobs in effect and the counters of faults served (control API)."""
        return self.control("GET", "/faults/digitalocean")["faults"]

    def served_faults(self) -> dict[str, int]:
        return self.faults()["served"]


# -- a file server for imports ------------------------------------------------------------


class FileServer:
    """Serves `directory` on 127.0.0.1 (HEAD and GET); names in `forbidden` answer 403,
    names in `no_head` answer HEAD with the status given (405, 501: a server without HEAD)."""

    def __init__(self, directory: Path, forbidden: tuple[str, ...] = (), no_head: dict[str, int] | None = None) -> None:
        self.requests: list[tuple[str, str]] = []
        log = self.requests
        headless = dict(no_head or {})

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def send_head(self):  # type: ignore[no-untyped-def]
                log.append((self.command, self.path))
                name = self.path.split("?")[0].lstrip("/")
                if name in forbidden:
                    self.send_error(403, "Forbidden")
                    return None
                if self.command == "HEAD" and name in headless:
                    self.send_error(headless[name])
                    return None
                return super().send_head()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- small, structurally real disk images ---------------------------------------------------

MIB = 1024 * 1024


def qcow2_image(virtual_size: int, cluster_bits: int = 16) -> bytes:
    """An empty qcow2 (version 3) as `qemu-img create -f qcow2` lays it out: header, refcount
    table, refcount block, L1 table, one cluster each."""
    cluster = 1 << cluster_bits
    l2_entries = cluster // 8
    l1_size = max(1, -(-virtual_size // (cluster * l2_entries)))
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQI",
        b"QFI\xfb",
        3,  # version
        0,  # backing_file_offset
        0,  # backing_file_size
        cluster_bits,
        virtual_size,
        0,  # crypt_method
        l1_size,
        3 * cluster,  # l1_table_offset
        1 * cluster,  # refcount_table_offset
        1,  # refcount_table_clusters
        0,  # nb_snapshots
        0,  # snapshots_offset
        0,  # incompatible_features
        0,  # compatible_features
        0,  # autoclear_features
        4,  # refcount_order (16-bit refcounts)
    )
    header += struct.pack(">I", 104)  # header_length
    header += struct.pack(">II", 0, 0)  # end of header extensions
    out = bytearray(4 * cluster)
    out[: len(header)] = header
    struct.pack_into(">Q", out, cluster, 2 * cluster)  # refcount table -> refcount block
    for i in range(4):
        struct.pack_into(">H", out, 2 * cluster + 2 * i, 1)  # the four clusters in use
    return bytes(out)


def mbr_image(size: int = MIB) -> bytes:
    """A raw disk with an MBR: one Linux partition from sector 2048, boot signature 55AA."""
    disk = bytearray(size)
    sectors = size // 512
    entry = struct.pack("<B3sB3sII", 0x80, b"\x00\x02\x00", 0x83, b"\xff\xff\xff", 2048, max(1, sectors - 2048))
    disk[446 : 446 + 16] = entry
    disk[510:512] = b"\x55\xaa"
    return bytes(disk)


def gpt_image(size: int = MIB) -> bytes:
    """A raw disk with a protective MBR and a GPT header at LBA 1."""
    disk = bytearray(mbr_image(size))
    disk[446 + 4] = 0xEE  # protective MBR
    header = struct.pack("<8sIII", b"EFI PART", 0x00010000, 92, 0) + b"\0" * 4 + struct.pack("<QQ", 1, size // 512 - 1)
    disk[512 : 512 + len(header)] = header
    return bytes(disk)


def vhdx_image(virtual_size: int) -> bytes:
    """VHDX file identifier, a region table naming the metadata region, and the metadata
    table with the virtual disk size item (what `inspect` reads)."""
    out = bytearray(2 * MIB)
    out[:8] = b"vhdxfile"
    rt = 192 * 1024
    meta = 1 * MIB
    out[rt : rt + 16] = b"regi" + struct.pack("<III", 0, 1, 0)
    region = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
    out[rt + 16 : rt + 48] = region + struct.pack("<QII", meta, MIB, 1)
    out[meta : meta + 32] = b"metadata" + struct.pack("<HHI", 0, 1, 0) + b"\0" * 16
    item = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
    out[meta + 32 : meta + 64] = item + struct.pack("<IIII", 65536, 8, 0, 0)
    struct.pack_into("<Q", out, meta + 65536, virtual_size)
    return bytes(out)


def vdi_image(virtual_size: int) -> bytes:
    out = bytearray(512)
    text = b"<<< Oracle VM VirtualBox Disk Image >>>\n"
    out[: len(text)] = text
    struct.pack_into("<II", out, 0x40, 0xBEDA107F, 0x00010001)
    struct.pack_into("<Q", out, 0x170, virtual_size)
    return bytes(out)


def vmdk_image(virtual_size: int) -> bytes:
    """A monolithic sparse VMDK header ("KDMV", capacity in sectors)."""
    out = bytearray(512)
    struct.pack_into("<4sIIQQ", out, 0, b"KDMV", 1, 3, virtual_size // 512, 128)
    return bytes(out)


def vmdk_descriptor(virtual_size: int) -> bytes:
    return (
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
        f'# Extent description\nRW {virtual_size // 512} FLAT "disk-flat.vmdk" 0\n'
    ).encode()
