"""The account's SSH keys (`/v2/account/keys`), as DigitalOcean keeps them.

A key is named by its id or by its fingerprint (MD5 of the key blob, colon-separated
hex, as `ssh-keygen -E md5 -l` prints it without the `MD5:` prefix). DigitalOcean
accepts RSA, ED25519 and ECDSA public keys, refuses a key already on the account and
a blank name, and gives droplets the keys named at create (by id or fingerprint).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable

KEY_TYPES = ("ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
MSG_INVALID = "Key invalid, key should be of the format `type key [comment]`"
MSG_TYPE = "Key invalid type, we support 'ssh-rsa', 'ssh-ed25519', 'ecdsa-sha2-nistp256', " + (
    "'ecdsa-sha2-nistp384', or 'ecdsa-sha2-nistp521'"
)
MSG_IN_USE = "SSH Key is already in use on your account"
NOT_FOUND = "The resource you were accessing could not be found."
NAME_MAX = 255


@dataclass
class SSHKey:
    id: int
    name: str
    public_key: str
    fingerprint: str

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "fingerprint": self.fingerprint, "public_key": self.public_key, "name": self.name}


def fingerprint(public_key: str) -> str:
    """The MD5 fingerprint of an OpenSSH public key line; ValueError with DO's message."""
    words = public_key.split()
    if len(words) < 2:
        raise ValueError(MSG_INVALID)
    kind = words[0]
    try:
        blob = base64.b64decode(words[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(MSG_INVALID) from None
    if kind not in KEY_TYPES:
        raise ValueError(MSG_TYPE)
    # the blob starts with its own type name; a mismatch is a key pasted wrongly
    if len(blob) < 4 or blob[4 : 4 + struct.unpack(">I", blob[:4])[0]] != kind.encode():
        raise ValueError(MSG_INVALID)
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class Keys:
    """`error(status, message)` builds the API's error (an ApiError of api.py)."""

    def __init__(self, error: Callable[[int, str], Exception]) -> None:
        self.error = error
        self.lock = threading.Lock()
        self.items: dict[int, SSHKey] = {}
        self.ids = itertools.count(41000001)

    def reset(self) -> None:
        with self.lock:
            self.items.clear()

    def all(self) -> list[SSHKey]:
        with self.lock:
            return sorted(self.items.values(), key=lambda k: k.id)

    def _name(self, body: Any) -> str:
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise self.error(422, "Name can't be blank")
        if len(name) > NAME_MAX:
            raise self.error(422, f"Name is too long (maximum is {NAME_MAX} characters)")
        return name

    def create(self, body: Any) -> SSHKey:
        if not isinstance(body, dict):
            raise self.error(400, "error parsing request body")
        name = self._name(body)
        public_key = body.get("public_key")
        if not isinstance(public_key, str) or not public_key.strip():
            raise self.error(422, "Public key can't be blank")
        try:
            fp = fingerprint(public_key)
        except ValueError as exc:
            raise self.error(422, str(exc)) from None
        with self.lock:
            if any(k.fingerprint == fp for k in self.items.values()):
                raise self.error(422, MSG_IN_USE)
            key = SSHKey(next(self.ids), name, public_key.strip(), fp)
            self.items[key.id] = key
        return key

    def find(self, ident: str | int) -> SSHKey | None:
        text = str(ident)
        with self.lock:
            if text.isdigit():
                return self.items.get(int(text))
            return next((k for k in self.items.values() if k.fingerprint == text.lower()), None)

    def get(self, ident: str) -> SSHKey:
        key = self.find(ident)
        if key is None:
            raise self.error(404, NOT_FOUND)
        return key

    def rename(self, ident: str, body: Any) -> SSHKey:
        key = self.get(ident)
        name = self._name(body)
        with self.lock:
            key.name = name
        return key

    def delete(self, ident: str) -> None:
        key = self.get(ident)
        with self.lock:
            self.items.pop(key.id, None)

    def resolve(self, values: Any) -> list[SSHKey]:
        """The keys a droplet create names (ids or fingerprints); 422 for any unknown one."""
        if values is None:
            return []
        if not isinstance(values, list) or not all(isinstance(v, (int, str)) for v in values):
            raise self.error(422, "ssh_keys must be an array of key ids or fingerprints")
        keys, unknown = [], []
        for value in values:
            key = self.find(value)
            if key is None:
                unknown.append(str(value))
            elif key not in keys:
                keys.append(key)
        if unknown:
            raise self.error(422, f"You specified invalid ssh key ids for Droplet creation: {', '.join(unknown)}")
        return keys

    def resources(self) -> list[dict[str, Any]]:
        return [{"type": "do_ssh_key", "id": k.id, "name": k.name, "fingerprint": k.fingerprint} for k in self.all()]
