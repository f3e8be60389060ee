"""A droplet's metadata service (DigitalOcean's http://169.254.169.254/metadata/v1/).

`document(...)` builds what `/metadata/v1.json` answers (what cloud-init's DigitalOcean
data source reads); `lookup(doc, path)` answers the per-item paths the same document
gives (`/metadata/v1/id`, `hostname`, `user-data`, `public-keys`, `region`,
`interfaces/public/0/ipv4/address`, ...; a folder lists its entries, one a line, folders
with a trailing `/`).

Run as a program inside the droplet's network namespace (stdlib only, started by file
path so it needs no package):

    python3 metadata.py --listen 169.254.169.254:80 DOCUMENT.json

It prints `ready` once it listens; the emulator stops it by its PID.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROOT = "/metadata/v1"
# the JSON document's keys and the path names DigitalOcean serves them under
PATH_NAMES = {
    "droplet_id": "id",
    "user_data": "user-data",
    "vendor_data": "vendor-data",
    "public_keys": "public-keys",
}
VENDOR_DATA = "#cloud-config\ndisable_root: false\nmanage_etc_hosts: true\n"


def document(
    droplet_id: int,
    hostname: str,
    region: str,
    public_keys: list[str],
    user_data: str | None,
    interface: dict[str, str],
    tags: list[str],
) -> dict[str, Any]:
    """`interface`: ip_address, netmask, gateway, mac of the public interface."""
    doc: dict[str, Any] = {
        "droplet_id": droplet_id,
        "hostname": hostname,
        "vendor_data": VENDOR_DATA,
        "public_keys": list(public_keys),
        "auth_key": "",
        "region": region,
        "interfaces": {
            "public": [
                {
                    "ipv4": {k: interface[k] for k in ("ip_address", "netmask", "gateway")},
                    "mac": interface["mac"],
                    "type": "public",
                }
            ],
            "private": [],
        },
        "floating_ip": {"ipv4": {"active": False}},
        "reserved_ip": {"ipv4": {"active": False}},
        "dns": {"nameservers": ["67.207.67.2", "67.207.67.3"]},
        "tags": list(tags),
        "features": {"dhcp_enabled": True},
    }
    if user_data is not None:
        doc["user_data"] = user_data
    return doc


def _tree(doc: dict[str, Any]) -> dict[str, Any]:
    tree = {PATH_NAMES.get(k, k): v for k, v in doc.items()}
    tree.setdefault("user-data", "")  # an empty answer when the droplet was given none
    for entry in tree["interfaces"]["public"] + tree["interfaces"]["private"]:
        entry["ipv4"] = {"address" if k == "ip_address" else k: v for k, v in entry["ipv4"].items()}
    return tree


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        return "\n".join(str(v) for v in value)
    return str(value)


def lookup(doc: dict[str, Any], path: str) -> tuple[int, str, bytes]:
    """(status, content type, body) for `path` (the whole URL path)."""
    if path == ROOT + ".json":
        return 200, "application/json", json.dumps(doc).encode()
    if path != ROOT and not path.startswith(ROOT + "/"):
        return 404, "text/plain", b"not found\n"
    node: Any = _tree(doc)
    for part in [p for p in path[len(ROOT) :].split("/") if p]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node) and isinstance(node[0], dict):
            node = node[int(part)]
        else:
            return 404, "text/plain", b"not found\n"
    if isinstance(node, dict) or (isinstance(node, list) and node and isinstance(node[0], dict)):
        names = node.items() if isinstance(node, dict) else enumerate(node)
        lines = [f"{k}/" if isinstance(v, (dict, list)) and k != "public-keys" else str(k) for k, v in names]
        return 200, "text/plain", "\n".join(lines).encode()
    return 200, "text/plain", _text(node).encode()


def serve(doc: dict[str, Any], host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        server_version = "nfsandbox-metadata/1"

        def log_message(self, fmt: str, *args: Any) -> None:
            sys.stderr.write("metadata: %s %s\n" % (self.address_string(), fmt % args))

        def do_GET(self) -> None:
            status, ctype, body = lookup(doc, self.path.split("?", 1)[0])
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="169.254.169.254:80")
    parser.add_argument("document")
    args = parser.parse_args(argv)
    host, _sep, port = args.listen.rpartition(":")
    with open(args.document, encoding="utf-8") as handle:
        doc = json.load(handle)
    server = serve(doc, host, int(port))
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
