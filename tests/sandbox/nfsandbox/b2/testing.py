"""Test helpers for the sandbox's B2 (needs b2sdk; imported by tests only, never by the daemon).

from nfsandbox.b2.testing import B2Sandbox
b2 = B2Sandbox(sandbox_handle)        # nfsandbox.testing.SandboxHandle
api = b2.api()                        # b2sdk B2Api authorized with the master key
api = b2.api(key_id, key)             # ... with another key (the pipelines': b2.key_id, b2.key)
b2.create_key("name", ["listFiles"], bucket=b2.private, prefix="x/")   # b2_create_key: (id, secret)
b2.public, b2.private                 # the fixture buckets' names
b2.set_faults({...}); b2.served()     # knobs and the faults served so far
b2.resources()                        # the B2 part of `sandboxctl resources --json`
b2.clean()                            # delete every version, unfinished file, API bucket
"""

from __future__ import annotations

import os
from typing import Any

from b2sdk.v2 import B2Api, InMemoryAccountInfo


class B2Sandbox:
    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.env = handle.env()
        self.url = self.env["B2_API_URL"]
        # the pipelines' least-privilege key, and the master key for what a test inspects or cleans
        self.key_id = self.env["B2_APPLICATION_KEY_ID"]
        self.key = self.env["B2_APPLICATION_KEY"]
        self.master_key_id = self.env["NIXFORGE_SANDBOX_B2_MASTER_KEY_ID"]
        self.master_key = self.env["NIXFORGE_SANDBOX_B2_MASTER_KEY"]
        self.public = self.env["NIXFORGE_SANDBOX_B2_PUBLIC_BUCKET"]
        self.private = self.env["NIXFORGE_SANDBOX_B2_PRIVATE_BUCKET"]
        self.ca_bundle = self.env["B2_CA_BUNDLE"]
        # HTTPS with the sandbox CA: b2sdk and requests in this process trust it, as `sandboxctl env` does
        os.environ["REQUESTS_CA_BUNDLE"] = self.ca_bundle

    def api(self, key_id: str | None = None, key: str | None = None) -> B2Api:
        api = B2Api(InMemoryAccountInfo())
        api.authorize_account(self.url, key_id or self.master_key_id, key or self.master_key)
        return api

    def create_key(
        self, name: str, capabilities: list[str], bucket: str | None = None, prefix: str | None = None
    ) -> tuple[str, str]:
        """A key made through b2_create_key with the master key: (key id, secret)."""
        api = self.api()
        bucket_id = api.get_bucket_by_name(bucket).id_ if bucket else None
        made = api.session.create_key(api.account_info.get_account_id(), capabilities, name, None, bucket_id, prefix)
        return made["applicationKeyId"], made["applicationKey"]

    def delete_keys(self) -> None:
        """Every key made through the API (the sandbox's own keys stay)."""
        api = self.api()
        for key in api.session.list_keys(api.account_info.get_account_id(), 1000, None)["keys"]:
            if key["keyName"] not in ("master", "nixforge-pipeline", "nixforge-reaper"):
                api.session.delete_key(key["applicationKeyId"])

    def resources(self) -> list[dict[str, Any]]:
        return [r for r in self.handle.resources() if r["provider"] == "b2"]

    def set_faults(self, faults: dict[str, Any]) -> None:
        self.handle.set_faults("b2", faults)

    def faults(self) -> dict[str, Any]:
        return self.handle.call("GET", "/faults/b2")["faults"]

    def served(self) -> dict[str, Any]:
        return self.faults()["served"]

    def public_url(self, name: str) -> str:
        return f"{self.url}/file/{self.public}/{name}"

    def clean(self) -> None:
        """Remove everything a test made; the fixture buckets stay (faults are cleared first)."""
        self.set_faults({})
        api = self.api()
        for bucket in api.list_buckets():
            for version, _folder in bucket.ls(latest_only=False, recursive=True):
                api.delete_file_version(version.id_, version.file_name)
            for unfinished in bucket.list_unfinished_large_files():
                api.cancel_large_file(unfinished.file_id)
            if bucket.name not in (self.public, self.private):
                api.delete_bucket(bucket)
        self.delete_keys()
