"""SSH keys, the user's and a project's (`/ssh-keys`, `/projects/{id}/ssh-keys`), of the Metal emulator."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from . import catalog as cat
from .model import (
    ApiError,
    Response,
    SSHKey,
    now,
    ssh_fingerprint,
    valid_public_key,
)

log = logging.getLogger("nfsandbox.metal")


class KeyRoutes:
    """Part of `MetalAPI` (a mixin: it uses the API's state and lock)."""

    def _new_key(self, body: Any, owner_href: str, project_id: str | None) -> Response:
        if not isinstance(body, dict):
            raise ApiError(422, "Request body must be a JSON object")
        errors = []
        key = body.get("key")
        if not valid_public_key(key):
            errors.append("Key is invalid")
        label = body.get("label")
        if label is not None and not isinstance(label, str):
            errors.append("label must be a string")
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            errors.append("tags must be a list of strings")
        if errors:
            raise ApiError(422, *errors)
        assert isinstance(key, str)
        key = key.strip()
        fp = ssh_fingerprint(key)
        with self.lock:
            for other in self.keys.values():
                if other.project_id == project_id and ssh_fingerprint(other.key) == fp:
                    raise ApiError(422, "Fingerprint has already been taken")
            stamp = now()
            new = SSHKey(
                id=str(uuid.uuid4()),
                label=label or "",
                key=key,
                owner_href=owner_href,
                project_id=project_id,
                tags=list(tags),
                created_at=stamp,
                updated_at=stamp,
            )
            self.keys[new.id] = new
        return 201, new.view(), {}

    def _list_project_keys(self, query: Any, body: Any, project_id: str) -> Response:
        self._project(project_id)
        with self.lock:
            keys = [k.view() for k in self.keys.values() if k.project_id == project_id]
        return 200, {"ssh_keys": keys}, {}

    def _create_project_key(self, query: Any, body: Any, project_id: str) -> Response:
        self._project(project_id)
        return self._new_key(body, cat.href(f"/projects/{project_id}"), project_id)

    def _list_keys(self, query: dict[str, list[str]], body: Any) -> Response:
        search = self._q(query, "search")
        with self.lock:
            keys = [k.view() for k in self.keys.values()]
        if search:
            keys = [k for k in keys if search in k["label"] or search in k["key"] or search in k["fingerprint"]]
        return 200, {"ssh_keys": keys}, {}

    def _create_user_key(self, query: Any, body: Any) -> Response:
        return self._new_key(body, cat.href(f"/users/{self.user_id}"), None)

    def _get_key(self, query: Any, body: Any, key_id: str) -> Response:
        with self.lock:
            key = self.keys.get(key_id)
        if key is None:
            raise ApiError(404, "Not found")
        return 200, key.view(), {}

    def _delete_key(self, query: Any, body: Any, key_id: str) -> Response:
        with self.lock:
            key = self.keys.pop(key_id, None)
        if key is None:
            raise ApiError(404, "Not found")
        return 204, None, {}
