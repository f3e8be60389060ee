"""Test helpers for the sandbox's B2 (needs b2sdk; imported by tests only, never by the daemon).

from nfsandbox.b2.testing import B2Sandbox
b2 = B2Sandbox(sandbox_handle)        # nfsandbox.testing.SandboxHandle
api = b2.api()                        # an authorized b2sdk B2Api
b2.public, b2.private                 # the fixture buckets' names
b2.set_faults({...}); b2.served()     # knobs and the faults served so far
b2.resources()                        # the B2 part of `sandboxctl resources --json`
b2.clean()                            # delete every version, unfinished file, API bucket
"""

from __future__ import annotations

from typing import Any

from b2sdk.v2 import B2Api, InMemoryAccountInfo


class B2Sandbox:
    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.env = handle.env()
        self.url = self.env["B2_API_URL"]
        self.key_id = self.env["B2_APPLICATION_KEY_ID"]
        self.key = self.env["B2_APPLICATION_KEY"]
        self.public = self.env["NIXFORGE_SANDBOX_B2_PUBLIC_BUCKET"]
        self.private = self.env["NIXFORGE_SANDBOX_B2_PRIVATE_BUCKET"]

    def api(self) -> B2Api:
        api = B2Api(InMemoryAccountInfo())
        api.authorize_account(self.url, self.key_id, self.key)
        return api

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
