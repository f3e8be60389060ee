"""Backblaze B2 emulator: the sandbox provider `b2` (native API, plain HTTP on 127.0.0.1).

Pieces: `store.py` (buckets, file versions, large files; bytes on disk under the
instance's work directory), `api.py` (the B2 calls, tokens, errors, downloads),
`server.py` (threaded HTTP/1.1 front), `faults.py` (fault knobs and served counters).

At start two buckets exist as fixtures (not resources): `nixforge-sandbox<N>-public`
(allPublic) and `nixforge-sandbox<N>-private` (allPrivate). Published in state.json
`endpoints` (and by `sandboxctl env`): B2_API_URL (the realm URL for
`authorize_account`), B2_APPLICATION_KEY_ID, B2_APPLICATION_KEY, and `b2_public_bucket`,
`b2_private_bucket`, `b2_download_url` (NIXFORGE_SANDBOX_B2_PUBLIC_BUCKET, ...).
Fault knobs: see `faults.py` (`POST /faults/b2`, `GET /faults/b2`).
"""

from __future__ import annotations

import logging
from typing import Any

from ..providers import EmulatorProvider
from .api import B2API
from .server import B2HTTPServer

log = logging.getLogger("nfsandbox.b2")

__all__ = ["B2API", "B2HTTPServer", "Provider"]


class Provider(EmulatorProvider):
    name = "b2"
    title = "B2"

    def __init__(self, sandbox: Any) -> None:
        super().__init__(sandbox)
        self.api: B2API | None = None
        self.http: B2HTTPServer | None = None

    def start(self) -> dict[str, Any]:
        inst = self.sandbox.instance
        self.api = B2API(inst.work_dir / "b2", "http://127.0.0.1")
        public = self.api.store.create_bucket(f"nixforge-sandbox{inst.number}-public", "allPublic", fixture=True)
        private = self.api.store.create_bucket(f"nixforge-sandbox{inst.number}-private", "allPrivate", fixture=True)
        self.http = B2HTTPServer(self.api, "127.0.0.1", self.sandbox.port("b2"))
        host, port = self.http.address
        base = self.api.base_url = f"http://{host}:{port}"  # the URLs the API hands out point here
        self.http.start()
        log.info("B2 emulator listening on %s (buckets %s, %s)", base, public.name, private.name)
        return {
            "B2_API_URL": base,
            "B2_APPLICATION_KEY_ID": self.api.key_id,
            "B2_APPLICATION_KEY": self.api.key,
            "b2_public_bucket": public.name,
            "b2_private_bucket": private.name,
            "b2_download_url": base,
        }
