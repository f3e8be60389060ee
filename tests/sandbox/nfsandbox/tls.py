"""A certificate authority made at daemon start, for emulators that must speak HTTPS.

packet-python only talks https and has no `verify` knob, so the Metal emulator serves
TLS with a certificate from this CA and clients trust it through REQUESTS_CA_BUNDLE.
The bundle also carries the machine's own CAs so that setting the variable breaks
nothing else in the same shell.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class CertificateAuthority:
    def __init__(self, state_dir: Path):
        self.ca = trustme.CA(organization_name="nixforge sandbox")
        self.dir = state_dir / "tls"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_cert = self.dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_cert))
        system = SYSTEM_BUNDLE.read_bytes() if SYSTEM_BUNDLE.exists() else b""
        self.bundle = self.dir / "bundle.pem"
        self.bundle.write_bytes(self.ca.cert_pem.bytes() + b"\n" + system)

    def issue(self, *hostnames: str) -> tuple[Path, Path]:
        """Files (certificate chain, private key) of a server certificate for `hostnames`."""
        names = hostnames or ("127.0.0.1", "localhost")
        cert = self.ca.issue_cert(*names)
        stem = names[0].replace(":", "_").replace("*", "star")
        chain, key = self.dir / f"{stem}.pem", self.dir / f"{stem}.key"
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        return chain, key

    def server_context(self, *hostnames: str) -> ssl.SSLContext:
        chain, key = self.issue(*hostnames)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(chain), str(key))
        return ctx
