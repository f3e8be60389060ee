"""Backblaze B2 emulator: the sandbox provider `b2` (native API over HTTPS on 127.0.0.1).

Pieces: `store.py` (buckets, file versions, large files; bytes on disk under the
instance's work directory), `api.py` (the B2 calls, tokens, errors, downloads),
`keys.py` (application keys: capabilities, buckets, name prefix, enforced on every
call), `views.py` (each API version's answer shapes), `http.py` (threaded HTTP/1.1
front, TLS with a certificate of the sandbox CA), `faults.py` (fault knobs and served
counters).

At start two buckets exist as fixtures (not resources): `nixforge-sandbox<N>-public`
(allPublic) and `nixforge-sandbox<N>-private` (allPrivate), and three application keys:

- the master key (every capability): `b2_master_key_id` / `b2_master_key`, for tests
  and tools that inspect or clean the emulator;
- the pipelines' key, exactly what the collection needs and nothing more
  (`PIPELINE_CAPABILITIES` on the public bucket, names under `nixforge/`): published as
  B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY, so that `sandboxctl env` gives every
  pipeline run and `make demo` the least-privilege key a user should make;
- the reaper's key (the same capabilities, on every bucket: the reaper looks in both,
  and the collection's b2sdk speaks API v3, where a key names one bucket at most, and a
  name prefix needs a bucket): `b2_reaper_key_id` / `b2_reaper_key` (the sandbox
  inventory hands them to reap.yml).

Published in state.json `endpoints` (and by `sandboxctl env`): B2_API_URL (the https
realm URL for `authorize_account`), the keys above, `b2_public_bucket`,
`b2_private_bucket`, `b2_download_url` (NIXFORGE_SANDBOX_B2_PUBLIC_BUCKET, ...) and
B2_CA_BUNDLE (the sandbox CA, b2_object's `ca_bundle`; REQUESTS_CA_BUNDLE carries it too).
Fault knobs: see `faults.py` (`POST /faults/b2`, `GET /faults/b2`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..providers import EmulatorProvider
from .api import B2API
from .http import B2HTTPServer

log = logging.getLogger("nfsandbox.b2")

__all__ = ["B2API", "B2HTTPServer", "Provider"]


# What b2_object and b2_build_info call: b2_list_buckets (the bucket and its type),
# b2_list_file_versions / b2_list_unfinished_large_files (adoption, clean-up, the lost
# finish), uploads and large files (writeFiles, which also cancels), b2_delete_file_version.
# shareFiles only for url_mode=authorized; readFiles never (DigitalOcean fetches a public URL).
PIPELINE_CAPABILITIES = ["listBuckets", "listFiles", "writeFiles", "deleteFiles"]
NAME_PREFIX = "nixforge/"


class Provider(EmulatorProvider):
    name = "b2"
    title = "B2"

    def __init__(self, sandbox: Any) -> None:
        super().__init__(sandbox)
        self.api: B2API | None = None
        self.http: B2HTTPServer | None = None
        self.pod: B2HTTPServer | None = None

    def start(self) -> dict[str, Any]:
        inst = self.sandbox.instance
        ca = getattr(self.sandbox, "ca", None)
        if ca is None:
            raise RuntimeError("the B2 emulator needs the sandbox CA (HTTPS only, as B2)")
        # Whoever fetches from B2 inside the daemon (the DigitalOcean importer) trusts its
        # certificate as the world trusts Backblaze's: the bundle holds the system CAs too.
        os.environ["SSL_CERT_FILE"] = str(ca.bundle)
        self.api = B2API(inst.work_dir / "b2", "https://127.0.0.1")
        public = self.api.store.create_bucket(f"nixforge-sandbox{inst.number}-public", "allPublic", fixture=True)
        private = self.api.store.create_bucket(f"nixforge-sandbox{inst.number}-private", "allPrivate", fixture=True)
        pipeline = self.api.add_key("nixforge-pipeline", PIPELINE_CAPABILITIES, [public.id], NAME_PREFIX)
        reaper = self.api.add_key("nixforge-reaper", PIPELINE_CAPABILITIES)
        gateway = getattr(self.sandbox, "gateway", None)  # None: no host network (the emulator's own tests)
        context = ca.server_context("127.0.0.1", "localhost", *([gateway] if gateway else []))
        self.http = B2HTTPServer(self.api, context, "127.0.0.1", self.sandbox.port("b2"))
        host, port = self.http.address
        base = self.api.base_url = f"https://{host}:{port}"  # the URLs the API hands out point here
        # The upload "pod": the same API on the bridge's gateway address, which both the
        # controller (a local address) and the builder hosts reach. Upload URLs point there,
        # as B2's point at pod hosts anyone on the internet reaches, so that a builder can
        # upload with a URL the controller got for it (do_image_publish's direct path).
        if gateway:
            self.pod = B2HTTPServer(self.api, context, gateway, port)
            self.api.upload_base_url = f"https://{gateway}:{port}"
            self.pod.start()
        self.http.start()
        log.info("B2 emulator listening on %s (buckets %s, %s)", base, public.name, private.name)
        return {
            "B2_API_URL": base,
            "B2_APPLICATION_KEY_ID": pipeline.key_id,
            "B2_APPLICATION_KEY": pipeline.secret,
            "b2_master_key_id": self.api.key_id,
            "b2_master_key": self.api.key,
            "b2_reaper_key_id": reaper.key_id,
            "b2_reaper_key": reaper.secret,
            "b2_public_bucket": public.name,
            "b2_private_bucket": private.name,
            "b2_download_url": base,
            "B2_CA_BUNDLE": str(ca.bundle),  # what b2_object's ca_bundle falls back to
        }

    def stop(self) -> None:
        if self.pod is not None:
            self.pod.stop()
            self.pod = None
        super().stop()
