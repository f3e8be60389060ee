# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: SSH key checks and host key types; no stable interface.
"""SSH keys of every provider: public and private key checks and host key types.

The host key of a builder is generated on the controller (so that it can be pinned in
known_hosts before the first connection) and handed to the provider through user data;
these checks run before anything is created, and their messages never echo a key.
"""

from __future__ import annotations

import base64
import re
from typing import NamedTuple, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError

# OpenSSH public key type -> the name cloud-init (and sshd's file names) use for it.
HOST_KEY_TYPES = {
    "ssh-ed25519": "ed25519",
    "ecdsa-sha2-nistp256": "ecdsa",
    "ecdsa-sha2-nistp384": "ecdsa",
    "ecdsa-sha2-nistp521": "ecdsa",
    "ssh-rsa": "rsa",
}
# Login keys may also be hardware-backed (FIDO) keys; those cannot be host keys.
PUBLIC_KEY_TYPES = (*HOST_KEY_TYPES, "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
# OpenSSH's own format, the PEM formats ssh-keygen writes (-m PEM / -m PKCS8); not encrypted
# ones: sshd cannot ask for a passphrase.
_PRIVATE_KEY_RE = re.compile(r"-----BEGIN (OPENSSH |RSA |EC |)PRIVATE KEY-----.*-----END \1PRIVATE KEY-----", re.S)


class HostKey(NamedTuple):
    """A validated host key pair: cloud-init type, private key (ends with a newline), public line."""

    kind: str
    private: str
    public: str


def validate_public_key(value: Optional[str], parameter: str) -> str:
    """An OpenSSH public key line, stripped; the message never echoes the value (it might be private)."""
    text = (value or "").strip()
    if "PRIVATE KEY" in text:
        raise UserInputError(
            "the value is a private key",
            hint="Give the public half (the '.pub' file); private keys never leave the controller",
            parameter=parameter,
        )
    parts = text.split()
    if len(parts) < 2 or parts[0] not in PUBLIC_KEY_TYPES or "\n" in text:
        raise UserInputError(
            "the value is not an OpenSSH public key line",
            hint="Give one line of a '.pub' file such as 'ssh-ed25519 AAAAC3Nza... comment' (types: %s)"
            % ", ".join(PUBLIC_KEY_TYPES),
            parameter=parameter,
        )
    try:
        base64.b64decode(parts[1].encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise UserInputError(
            "the key data of the public key is not base64",
            hint="Copy the whole '.pub' line unchanged",
            parameter=parameter,
        ) from None
    return text


def host_key_type(public_key: str, parameter: str = "host_key_public") -> str:
    """The cloud-init type (``ed25519``, ``ecdsa``, ``rsa``) of a validated public key line."""
    kind = HOST_KEY_TYPES.get(public_key.split()[0])
    if kind is None:
        raise UserInputError(
            "host keys of type %r cannot be installed through user data" % public_key.split()[0],
            hint="Use an ed25519 (recommended), ecdsa or rsa host key (types: %s)" % ", ".join(sorted(HOST_KEY_TYPES)),
            parameter=parameter,
        )
    return kind


def validate_private_key(value: Optional[str], parameter: str) -> str:
    """A private key file's content, stripped and ending with a newline; never echoed."""
    text = (value or "").strip()
    if not _PRIVATE_KEY_RE.search(text):
        raise UserInputError(
            "the value is not a PEM/OpenSSH private key"
            + (" (encrypted keys cannot be used)" if "ENCRYPTED" in text else ""),
            hint="Give the content of the private key file written by ssh-keygen (not its path), without passphrase",
            parameter=parameter,
        )
    return text + "\n"


def validate_host_key(private: Optional[str], public: Optional[str], required: bool = True) -> Optional[HostKey]:
    """Check the host key pair given as ``host_key_private`` / ``host_key_public``.

    Both halves go together; with ``required`` a missing pair fails, else it gives None.
    """
    if not private and not public and not required:
        return None
    if not private or not public:
        missing = "host_key_private" if not private else "host_key_public"
        raise UserInputError(
            "the builder's SSH host key is missing: 'host_key_private' and 'host_key_public' go together",
            hint="Generate one on the controller (ssh-keygen -t ed25519) and give both 'host_key_private' and "
            "'host_key_public', so that the host key can be pinned before the first connection",
            parameter=missing,
        )
    public_line = validate_public_key(public, "host_key_public")
    kind = host_key_type(public_line)
    return HostKey(kind, validate_private_key(private, "host_key_private"), public_line)


def same_key(one: Optional[str], other: Optional[str]) -> bool:
    """Whether two public key lines hold the same key (type and data; comments differ)."""
    return bool(one) and bool(other) and (one or "").split()[:2] == (other or "").split()[:2]
