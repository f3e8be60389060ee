# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the B2 upload engine; no stable interface.
"""The upload engine behind ``B2Client.upload``: one read of the file, parts in parallel.

b2sdk's own ``Bucket.upload`` reads a large file twice: it computes every part's sha1 in
the calling thread, one part after the other, before sending it (to be able to resume),
and the whole file's sha1 before that. On a busy machine that doubles the work and
serialises it. Here every byte is read once per attempt: each part streams from disk
in blocks, its sha1 computed while sending and appended after the data
(``X-Bz-Content-Sha1: hex_digits_at_end``, which B2 checks), parts go up ``threads`` at a
time. b2sdk still does the HTTP (its session: upload URL pool, token refresh, B2's error
translation); the retries of each part are ours (b2sdk tries a part request once).

When the caller knows the expected sha256 (``verify``), it is checked in the same pass:
a thread hashes the file sequentially while the parts go up (reading from the page cache
the parts just filled), and a mismatch cancels the large file before it is finished.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable, Dict, List, Mapping, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError, UserInputError

BLOCK = 1024 * 1024
HEX_DIGITS_AT_END = "hex_digits_at_end"
CONTENT_TYPE = "b2/x-auto"


class PartStream:
    """Bytes ``[offset, offset + length)`` of a file followed by their sha1 in hex (40 bytes).

    ``seek(0)`` starts again (b2sdk rewinds a body before it retries a request). With
    ``expected_sha256`` the same read also feeds a sha256, and a mismatch breaks the
    request before the trailer, so that B2 never stores the file (single-request uploads).
    """

    def __init__(self, path: str, offset: int, length: int, expected_sha256: Optional[str] = None) -> None:
        self.path = path
        self.offset = offset
        self.length = length
        self.expected_sha256 = expected_sha256
        self.actual_sha256: Optional[str] = None
        self.handle = open(path, "rb")
        self.closed = False
        self.seek(0)

    def __len__(self) -> int:
        return self.length + 40

    def seek(self, position: int, whence: int = 0) -> int:
        if position != 0 or whence != 0:
            raise OSError("PartStream can only rewind to the start")
        self.handle.seek(self.offset)
        self.position = 0
        self.sha1 = hashlib.sha1()  # noqa: S324 - B2's integrity checksum
        self.sha256 = hashlib.sha256() if self.expected_sha256 else None
        self.trailer = b""
        return 0

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = BLOCK
        out = b""
        if self.position < self.length:
            # at least a block per call: urllib3 asks for 16 KiB at a time, and at that size the
            # Python work per call (not the hashing or the copying) is what limits the throughput
            data = self.handle.read(min(max(size, BLOCK), self.length - self.position))
            if not data:
                raise OSError("%s is shorter than expected (changed while uploading?)" % self.path)
            self.sha1.update(data)
            if self.sha256 is not None:
                self.sha256.update(data)
            self.position += len(data)
            out = data
            size -= len(data)
        if self.position >= self.length and size > 0:
            if self.sha256 is not None and self.actual_sha256 is None:
                self.actual_sha256 = self.sha256.hexdigest()
                if self.actual_sha256 != self.expected_sha256:
                    # break the request before the checksum trailer: B2 stores nothing
                    raise OSError("sha256 mismatch, upload aborted")
            if not self.trailer:
                self.trailer = self.sha1.hexdigest().encode()
            done = self.position - self.length
            tail = self.trailer[done : done + size]
            self.position += len(tail)
            out += tail
        return out

    @property
    def hash(self) -> str:
        return self.sha1.hexdigest()

    def close(self) -> None:
        if not self.closed:
            self.handle.close()
            self.closed = True

    def __enter__(self) -> PartStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SequentialHasher(threading.Thread):
    """sha256 of a whole file, read in order, in a thread of its own."""

    def __init__(self, path: str, stop: threading.Event) -> None:
        super().__init__(name="b2-sha256", daemon=True)
        self.path = path
        self.stop = stop
        self.digest: Optional[str] = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            sha256 = hashlib.sha256()
            with open(self.path, "rb") as handle:
                while not self.stop.is_set():
                    block = handle.read(8 * BLOCK)
                    if not block:
                        self.digest = sha256.hexdigest()
                        return
                    sha256.update(block)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc


def matches(entry: Mapping[str, Any], size: int, info: Mapping[str, str]) -> bool:
    """Whether a listed version is the large file we finished: its size, B2's "none" for the
    whole-file sha1 of a large file (the parts' sha1s were checked by B2 at the finish), and
    the file info it was started with (the build identity and the sha256 of the bytes)."""
    stored = entry.get("fileInfo") or {}
    same_info = all(stored.get(k) == v for k, v in info.items())
    return entry.get("contentLength") == size and entry.get("contentSha1") in ("none", None) and same_info


def mismatch(path: str, actual: str, expected: str) -> UserInputError:
    return UserInputError(
        "%s has sha256 %s, not %s" % (path, actual, expected),
        hint="Check that 'src' is the artifact the checksum belongs to; the upload was not finished",
        parameter="sha256",
    )


class Uploader:
    """One upload of one file through a b2sdk ``B2Session``."""

    def __init__(
        self,
        session: Any,
        call: Callable[..., Any],
        threads: int,
    ) -> None:
        self.session = session
        self.call = call  # the client's call(fn, *args, what=...): our retries, errors translated
        self.threads = threads
        self.large_file_id: Optional[str] = None
        self.finish_recovered = False  # the finish's answer was lost, the file found finished

    def upload(
        self,
        bucket_id: str,
        path: str,
        name: str,
        size: int,
        file_info: Mapping[str, str],
        part_size: int,
        verify: Optional[str] = None,
    ) -> Dict[str, Any]:
        if size <= part_size:
            return self.small(bucket_id, path, name, size, file_info, verify)
        return self.large(bucket_id, path, name, size, file_info, part_size, verify)

    def small(
        self, bucket_id: str, path: str, name: str, size: int, info: Mapping[str, str], verify: Optional[str]
    ) -> Dict[str, Any]:
        def attempt() -> Any:
            with PartStream(path, 0, size, expected_sha256=verify) as stream:
                try:
                    return self.session.upload_file(
                        bucket_id, name, len(stream), CONTENT_TYPE, HEX_DIGITS_AT_END, dict(info), stream
                    )
                except Exception:
                    if verify and stream.actual_sha256 not in (None, verify):
                        raise mismatch(path, str(stream.actual_sha256), verify) from None
                    raise

        return self.call(attempt, what="Uploading %s" % name, upload=True)

    def large(
        self,
        bucket_id: str,
        path: str,
        name: str,
        size: int,
        info: Mapping[str, str],
        part_size: int,
        verify: Optional[str],
    ) -> Dict[str, Any]:
        started = self.call(
            self.session.start_large_file, bucket_id, name, CONTENT_TYPE, dict(info), what="Starting %s" % name
        )
        self.large_file_id = file_id = started["fileId"]
        stop = threading.Event()
        hasher = SequentialHasher(path, stop) if verify else None
        try:
            if hasher is not None:
                hasher.start()
            sha1s = self.parts(file_id, path, size, part_size)
            if hasher is not None:
                hasher.join()
                if hasher.error is not None:
                    raise hasher.error
                if hasher.digest != verify:
                    raise mismatch(path, str(hasher.digest), verify or "")
            return self.finish(bucket_id, file_id, name, size, sha1s, info)
        except BaseException:
            stop.set()
            self.cancel(file_id, name)
            raise

    def finish(
        self, bucket_id: str, file_id: str, name: str, size: int, sha1s: List[str], info: Mapping[str, str]
    ) -> Dict[str, Any]:
        """b2_finish_large_file; when its answer is lost (a 5xx, a dropped connection, then B2's
        "no active upload" to the retry), B2 says to ask for the file rather than upload again:
        a finished version of this very large file with the size and file info (our sha256)
        it was started with is the upload done. Anything else fails as the finish did."""
        try:
            return self.call(self.session.finish_large_file, file_id, sha1s, what="Finishing %s" % name)
        except Exception:
            found = self.finished(bucket_id, file_id, name)
            if found is None or not matches(found, size, info):
                raise
            self.finish_recovered = True
            return found

    def finished(self, bucket_id: str, file_id: str, name: str) -> Optional[Dict[str, Any]]:
        """The finished version ``file_id`` of ``name`` if B2 lists it (listFiles, no readFiles needed)."""
        page = self.call(
            self.session.list_file_versions,
            bucket_id,
            name,
            file_id,
            1,
            name,
            what="Looking for %s after its finish went unanswered" % name,
            needs="listFiles",
        )
        for entry in page.get("files") or []:
            if entry.get("fileId") == file_id and entry.get("action") == "upload":
                return dict(entry)
        return None

    def parts(self, file_id: str, path: str, size: int, part_size: int) -> List[str]:
        """Upload every part, ``threads`` at a time; the sha1s in part order."""
        stop = threading.Event()  # set when one part failed: the others give up
        ranges = [(n + 1, offset, min(part_size, size - offset)) for n, offset in enumerate(range(0, size, part_size))]

        def one(number: int, offset: int, length: int) -> str:
            def attempt() -> str:
                if stop.is_set():
                    raise InterruptedError("another part failed")
                with PartStream(path, offset, length) as stream:
                    response = self.session.upload_part(file_id, number, len(stream), HEX_DIGITS_AT_END, stream)
                    stored = response.get("contentSha1")
                    if stored not in (None, stream.hash):
                        raise ProviderError(
                            "B2 stored part %d with sha1 %s, not %s" % (number, stored, stream.hash),
                            hint="The bytes changed on the way; run again (the unfinished upload was cancelled)",
                            what="Uploading part %d of %s" % (number, file_id),
                        )
                    return stream.hash

            return self.call(attempt, what="Uploading part %d of %s" % (number, file_id), upload=True)

        pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="b2-part")
        futures = [pool.submit(one, *r) for r in ranges]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            return [f.result() for f in futures]
        finally:
            stop.set()
            for future in futures:
                future.cancel()  # parts not started yet
            pool.shutdown(wait=True)

    def cancel(self, file_id: str, name: str) -> None:
        try:
            self.call(self.session.cancel_large_file, file_id, what="Cancelling %s" % name)
            self.large_file_id = None
        except Exception:  # noqa: BLE001, S110 - the module lists and cancels leftovers again
            pass
