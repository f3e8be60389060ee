"""Buckets and file versions of the B2 emulator: metadata in memory, bytes on disk.

Every object byte lives in a file under the store's root (`<work_dir>/b2`): a small
file is one file, a large file keeps its parts as separate files and is served by
streaming them one after the other (no concatenation when it is finished). Uploads are
received in 1 MiB chunks straight to disk while their SHA-1 is computed.

Errors are `B2Error(status, code, message)`, answered as B2's JSON error body.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mimetypes
import mmap
import os
import queue
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

CHUNK = 1 << 20
BUFFERS = 4  # chunks in flight between the reading and the writing thread
DIRECT_ALIGN = 4096  # O_DIRECT: lengths (and buffer addresses) in whole pages
MIN_PART_SIZE = 5_000_000  # B2's absoluteMinimumPartSize (decimal megabytes)
RECOMMENDED_PART_SIZE = 100_000_000
MAX_PART_SIZE = 5_000_000_000
MAX_SMALL_FILE = 5_000_000_000
MAX_PARTS = 10_000
MAX_FILE_INFO = 10
HEX_AT_END = "hex_digits_at_end"
DO_NOT_VERIFY = "do_not_verify"
UNVERIFIED = "unverified:"
BUCKET_TYPES = ("allPublic", "allPrivate")
HIDE_MARKER_TYPE = "application/x-bz-hide-marker"
LARGE_FILE_SHA1 = "none"  # what B2 reports as contentSha1 of a large file


class B2Error(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "message": self.message}


def bad_request(message: str, code: str = "bad_request") -> B2Error:
    return B2Error(400, code, message)


def now_ms() -> int:
    return int(time.time() * 1000)


def check_file_name(name: Any) -> str:
    """B2's file name rules (bad_request naming the rule)."""
    if not isinstance(name, str) or not name:
        raise bad_request("fileName is required")
    if len(name.encode("utf-8")) > 1024:
        raise bad_request("File names must be at most 1024 bytes")
    if min(name) < " " or "\x7f" in name:
        raise bad_request("File names must not contain control characters")
    if name.startswith("/") or name.endswith("/") or "//" in name:
        raise bad_request("File names must not start or end with '/' nor contain '//'")
    if max(len(s.encode("utf-8")) for s in name.split("/")) > 250:
        raise bad_request("File name segments must be at most 250 bytes")
    return name


def check_bucket_name(name: Any) -> str:
    if not isinstance(name, str) or not 6 <= len(name) <= 63 or not re.fullmatch(r"[A-Za-z0-9-]+", name):
        raise bad_request(f"Invalid bucketName: {name!r} (6-63 letters, digits and '-')")
    if name.lower().startswith("b2-"):
        raise bad_request(f"Invalid bucketName: {name!r} (names starting with 'b2-' are reserved)")
    return name


def check_file_info(info: Any) -> dict[str, str]:
    if info is None:
        return {}
    if not isinstance(info, dict):
        raise bad_request("fileInfo must be an object")
    if len(info) > MAX_FILE_INFO:
        raise bad_request(f"too many file info entries: {len(info)} (at most {MAX_FILE_INFO})")
    out = {}
    for key, value in info.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,50}", str(key)):
            raise bad_request(f"Invalid file info name: {key!r}")
        out[str(key)] = str(value)
    return out


def content_type_for(name: str, content_type: str | None) -> str:
    if not content_type or content_type == "b2/x-auto":
        return mimetypes.guess_type(name)[0] or "application/octet-stream"
    return content_type


def receive(stream: BinaryIO, length: int, sha1_header: str, dest: Path) -> tuple[int, str, bool]:
    """Write `length` bytes of the request body to `dest`, checking its SHA-1.

    `sha1_header` is X-Bz-Content-Sha1: 40 hex digits, `hex_digits_at_end` (the digits
    follow the data and count in Content-Length) or `do_not_verify`.
    Returns (size, sha1, verified). Raises B2Error (dest removed) on a mismatch.
    """
    claimed = (sha1_header or "").strip().lower()
    size = length
    if claimed == HEX_AT_END:
        size = length - 40
        if size < 0:
            raise bad_request("Content-Length is too short to hold the SHA-1 at the end")
    elif claimed != DO_NOT_VERIFY and not re.fullmatch(r"[0-9a-f]{40}", claimed):
        raise bad_request("X-Bz-Content-Sha1 must be 40 hex digits, hex_digits_at_end or do_not_verify")
    digest = hashlib.sha1(usedforsecurity=False)
    try:
        with DiskWriter(dest) as out:
            copy_hashing(stream, out, size, digest)
        actual = digest.hexdigest()
        if claimed == HEX_AT_END:
            trailer = read_exact(stream, 40).decode("ascii", "replace").lower()
            claimed = trailer
        if claimed == DO_NOT_VERIFY:
            return size, actual, False
        if claimed != actual:
            raise bad_request("Checksum did not match data received")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return size, actual, True


class DiskWriter:
    """Writes a received body to disk, past the page cache when the filesystem allows it.

    On this kind of VM a buffered write of 2 GiB took 0.36 s or 3.9 s of system time,
    by whether the page cache got pages freed a moment ago or long ago (measured with
    dd): every upload timed against the emulator would carry that noise. With O_DIRECT
    the bytes go to the disk from the caller's page-aligned chunks (0.2-0.3 s for
    2 GiB); only an unaligned tail (the last chunk) is written buffered. Filesystems
    without O_DIRECT (tmpfs) get plain buffered writes.
    """

    def __init__(self, dest: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        self.direct = hasattr(os, "O_DIRECT")
        try:
            self.fd = os.open(dest, flags | (os.O_DIRECT if self.direct else 0), 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this filesystem has no O_DIRECT
                raise
            self.direct = False
            self.fd = os.open(dest, flags, 0o644)

    def _buffered(self) -> None:
        if self.direct:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.direct = False

    def write(self, view: memoryview) -> int:
        """One write(2) of `view` (it may take less, as an unbuffered file may)."""
        if self.direct and len(view) % DIRECT_ALIGN:
            self._buffered()  # the tail, or what a short write left: unaligned from here on
        try:
            return os.write(self.fd, view)
        except OSError as exc:
            if not self.direct or exc.errno != errno.EINVAL:
                raise
            self._buffered()  # accepted at open, refused at write: some filesystems do
            return os.write(self.fd, view)

    def __enter__(self) -> DiskWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)


def copy_hashing(stream: BinaryIO, out: Any, size: int, digest: Any) -> None:
    """Copy `size` bytes from `stream` to `out` (a DiskWriter or a raw file), hashing them on the way.

    Reading and hashing run here while a second thread writes the previous chunks: both
    hashlib and file writes release the GIL, so the disk and the SHA-1 overlap instead of
    taking turns. Chunks are page-aligned anonymous maps, each filled completely but the
    last, so that `out` can write them with O_DIRECT.
    """
    free: queue.Queue[mmap.mmap] = queue.Queue()
    full: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue()
    for _index in range(BUFFERS):
        free.put(mmap.mmap(-1, CHUNK))
    failure: list[OSError] = []

    def write() -> None:
        while True:
            item = full.get()
            if item is None:
                return
            buf, n = item
            try:
                with memoryview(buf) as whole:
                    view = whole[:n]
                    while view and not failure:  # a write may take only part
                        view = view[out.write(view) or 0 :]
            except OSError as exc:  # handed to the reading side, which raises it
                failure.append(exc)
            free.put(buf)

    writer = threading.Thread(target=write, name="b2-receive-writer", daemon=True)
    writer.start()
    try:
        left = size
        while left > 0 and not failure:
            buf = free.get()
            want = min(CHUNK, left)
            n = 0
            with memoryview(buf) as view:
                while n < want:
                    got = stream.readinto(view[n:want])
                    if not got:
                        free.put(buf)
                        raise ConnectionError(f"request body ended {left - n} bytes early")
                    n += got
                digest.update(view[:n])
            full.put((buf, n))
            left -= n
    finally:
        full.put(None)
        writer.join()
    if failure:
        raise failure[0]


def read_exact(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise ConnectionError("request body ended early")
        data += more
    return data


@dataclass
class Bucket:
    id: str
    name: str
    type: str
    info: dict[str, str]
    fixture: bool
    revision: int = 1
    created: int = field(default_factory=now_ms)


@dataclass
class Part:
    number: int
    size: int
    sha1: str
    path: Path
    uploaded: int


@dataclass
class FileVersion:
    id: str
    bucket_id: str
    name: str
    action: str  # upload | hide | start (an unfinished large file)
    content_type: str | None
    sha1: str
    info: dict[str, str]
    size: int
    uploaded: int
    seq: int
    segments: list[tuple[Path, int]] = field(default_factory=list)  # (path, size), in order
    parts: dict[int, Part] = field(default_factory=dict)  # while action == "start"


class Store:
    def __init__(self, root: Path, account_id: str) -> None:
        self.root = root
        self.account_id = account_id
        self.lock = threading.RLock()
        self.buckets: dict[str, Bucket] = {}
        self.files: dict[str, FileVersion] = {}
        self.seq = 0
        shutil.rmtree(root, ignore_errors=True)  # nothing survives a restart, as `down` wipes it
        (root / "incoming").mkdir(parents=True)
        (root / "files").mkdir()

    # -- disk ----------------------------------------------------------------------
    def incoming(self) -> Path:
        return self.root / "incoming" / secrets.token_hex(12)

    def _dir(self, file_id: str) -> Path:
        return self.root / "files" / file_id

    def _drop_disk(self, file_id: str) -> None:
        shutil.rmtree(self._dir(file_id), ignore_errors=True)

    # -- ids -----------------------------------------------------------------------
    def _new_file_id(self, bucket_id: str) -> str:
        stamp = time.strftime("d%Y%m%d_m%H%M%S", time.gmtime())
        return f"4_z{bucket_id}_f{secrets.token_hex(12)}_{stamp}_c000_v0001000_t{secrets.randbelow(10000):04d}"

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # -- buckets -------------------------------------------------------------------
    def create_bucket(self, name: Any, type_: Any, info: Any = None, fixture: bool = False) -> Bucket:
        check_bucket_name(name)
        if type_ not in BUCKET_TYPES:
            raise bad_request(f"Invalid bucketType {type_!r}: must be one of {', '.join(BUCKET_TYPES)}")
        with self.lock:
            if any(b.name == name for b in self.buckets.values()):
                raise bad_request(f"Bucket name is already in use: {name}", "duplicate_bucket_name")
            bucket = Bucket(secrets.token_hex(12), name, type_, dict(info or {}), fixture)
            self.buckets[bucket.id] = bucket
            return bucket

    def bucket(self, bucket_id: Any) -> Bucket:
        with self.lock:
            bucket = self.buckets.get(bucket_id) if isinstance(bucket_id, str) else None
        if bucket is None:
            raise bad_request(f"Invalid bucketId: {bucket_id}", "bad_bucket_id")
        return bucket

    def bucket_by_name(self, name: str) -> Bucket | None:
        with self.lock:
            return next((b for b in self.buckets.values() if b.name == name), None)

    def delete_bucket(self, bucket_id: Any) -> Bucket:
        with self.lock:
            bucket = self.bucket(bucket_id)
            if any(f.bucket_id == bucket.id for f in self.files.values()):
                raise bad_request(f"Cannot delete non-empty bucket {bucket.name}", "cannot_delete_non_empty_bucket")
            del self.buckets[bucket.id]
            return bucket

    # -- small files ---------------------------------------------------------------
    def add_upload(
        self, bucket: Bucket, name: str, content_type: str | None, info: dict[str, str], tmp: Path, size: int, sha1: str
    ) -> FileVersion:
        with self.lock:
            if bucket.id not in self.buckets:
                tmp.unlink(missing_ok=True)
                raise bad_request(f"Invalid bucketId: {bucket.id}", "bad_bucket_id")
            file_id = self._new_file_id(bucket.id)
            directory = self._dir(file_id)
            directory.mkdir()
            data = directory / "data"
            os.replace(tmp, data)
            version = FileVersion(
                file_id, bucket.id, name, "upload", content_type_for(name, content_type), sha1, info, size,
                now_ms(), self._next_seq(), segments=[(data, size)],
            )  # fmt: skip
            self.files[file_id] = version
            return version

    # -- large files ---------------------------------------------------------------
    def start_large(self, bucket: Bucket, name: str, content_type: str | None, info: dict[str, str]) -> FileVersion:
        with self.lock:
            file_id = self._new_file_id(bucket.id)
            self._dir(file_id).mkdir()
            version = FileVersion(
                file_id, bucket.id, name, "start", content_type_for(name, content_type), LARGE_FILE_SHA1, info, 0,
                now_ms(), self._next_seq(),
            )  # fmt: skip
            self.files[file_id] = version
            return version

    def unfinished(self, file_id: Any) -> FileVersion:
        with self.lock:
            version = self.files.get(file_id) if isinstance(file_id, str) else None
        if version is None or version.action != "start":
            raise bad_request(f"No active upload for: {file_id}")
        return version

    def add_part(self, file_id: str, number: int, tmp: Path, size: int, sha1: str) -> Part:
        with self.lock:
            try:
                version = self.unfinished(file_id)
            except B2Error:
                tmp.unlink(missing_ok=True)
                raise
            path = self._dir(file_id) / f"part-{number:05d}"
            os.replace(tmp, path)  # a part uploaded again replaces the earlier one
            part = Part(number, size, sha1, path, now_ms())
            version.parts[number] = part
            return part

    def finish_large(self, file_id: Any, sha1s: Any) -> FileVersion:
        if not isinstance(sha1s, list) or not all(isinstance(s, str) for s in sha1s):
            raise bad_request("partSha1Array must be a list of SHA-1 strings")
        with self.lock:
            version = self.unfinished(file_id)
            parts = version.parts
            if len(sha1s) < 2:
                raise bad_request("large files must have at least 2 parts")
            for number in range(1, len(sha1s) + 1):
                if number not in parts:
                    raise bad_request(f"Part number {number} has not been uploaded", "missing_part")
            if len(parts) != len(sha1s):
                extra = sorted(set(parts) - set(range(1, len(sha1s) + 1)))
                raise bad_request(f"Parts {extra} were uploaded but are not in partSha1Array", "part_sha1_mismatch")
            for number, sha1 in enumerate(sha1s, 1):
                if parts[number].sha1 != sha1.lower():
                    raise bad_request(f"Part number {number} has wrong SHA1", "part_sha1_mismatch")
            for number in range(1, len(sha1s)):
                if parts[number].size < MIN_PART_SIZE:
                    raise bad_request(
                        f"Part number {number} is smaller than the minimum part size {MIN_PART_SIZE} "
                        f"({parts[number].size} bytes); only the last part may be smaller"
                    )
            ordered = [parts[n] for n in range(1, len(sha1s) + 1)]
            version.segments = [(p.path, p.size) for p in ordered]
            version.size = sum(p.size for p in ordered)
            version.action = "upload"
            version.parts = {}
            version.uploaded = now_ms()
            version.seq = self._next_seq()
            return version

    def cancel_large(self, file_id: Any) -> FileVersion:
        with self.lock:
            version = self.unfinished(file_id)
            del self.files[version.id]
        self._drop_disk(version.id)
        return version

    def list_parts(self, file_id: Any, start: int, count: int) -> tuple[list[Part], int | None]:
        with self.lock:
            version = self.unfinished(file_id)
            numbers = sorted(n for n in version.parts if n >= start)
            page = [version.parts[n] for n in numbers[:count]]
            return page, (numbers[count] if len(numbers) > count else None)

    def list_unfinished(
        self, bucket: Bucket, prefix: str, start_id: str | None, count: int
    ) -> tuple[list[FileVersion], str | None]:
        with self.lock:
            items = sorted(
                (f for f in self.files.values() if f.bucket_id == bucket.id and f.action == "start"),
                key=lambda f: (f.name, f.seq),
            )
        items = [f for f in items if f.name.startswith(prefix)]
        if start_id:
            ids = [f.id for f in items]
            items = items[ids.index(start_id) :] if start_id in ids else []
        return items[:count], (items[count].id if len(items) > count else None)

    # -- listing, hiding, deleting -------------------------------------------------
    def _versions(self, bucket: Bucket, prefix: str) -> list[FileVersion]:
        """B2's order: names ascending, the newest version of a name first."""
        with self.lock:
            items = [f for f in self.files.values() if f.bucket_id == bucket.id and f.name.startswith(prefix)]
        return sorted(items, key=lambda f: (f.name, -f.seq))

    def latest(self, bucket: Bucket, name: str) -> FileVersion | None:
        """The version a download by name serves: None when hidden or absent."""
        with self.lock:
            versions = [f for f in self.files.values() if f.bucket_id == bucket.id and f.name == name]
        versions = [f for f in versions if f.action != "start"]
        if not versions:
            return None
        newest = max(versions, key=lambda f: f.seq)
        return newest if newest.action == "upload" else None

    def list_names(
        self, bucket: Bucket, start: str | None, count: int, prefix: str, delimiter: str | None
    ) -> tuple[list[FileVersion | str], str | None]:
        seen: set[str] = set()
        current: list[FileVersion | str] = []
        for version in self._versions(bucket, prefix):
            if version.action == "start" or version.name in seen:
                continue
            seen.add(version.name)
            if version.action != "upload":
                continue
            if delimiter:
                rest = version.name[len(prefix) :]
                if delimiter in rest:
                    folder = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                    if not current or current[-1] != folder:
                        current.append(folder)
                    continue
            current.append(version)

        def key(item: FileVersion | str) -> str:
            return item if isinstance(item, str) else item.name

        if start:
            current = [i for i in current if key(i) >= start]
        nxt = key(current[count]) if len(current) > count else None
        return current[:count], nxt

    def list_versions(
        self, bucket: Bucket, start_name: str | None, start_id: str | None, count: int, prefix: str
    ) -> tuple[list[FileVersion], str | None, str | None]:
        items = self._versions(bucket, prefix)
        if start_name:
            items = [f for f in items if f.name >= start_name]
            if start_id:
                first = next((i for i, f in enumerate(items) if f.id == start_id), None)
                if first is not None:
                    items = items[first:]
        if len(items) > count:
            return items[:count], items[count].name, items[count].id
        return items, None, None

    def hide(self, bucket: Bucket, name: str) -> FileVersion:
        with self.lock:
            versions = [f for f in self.files.values() if f.bucket_id == bucket.id and f.name == name]
            finished = [f for f in versions if f.action != "start"]
            if not finished:
                raise bad_request(f"File not present: {name}", "no_such_file")
            if max(finished, key=lambda f: f.seq).action == "hide":
                raise bad_request(f"File already hidden: {name}", "already_hidden")
            file_id = self._new_file_id(bucket.id)
            version = FileVersion(
                file_id, bucket.id, name, "hide", HIDE_MARKER_TYPE, LARGE_FILE_SHA1, {}, 0, now_ms(), self._next_seq()
            )
            self.files[file_id] = version
            return version

    def get(self, file_id: Any) -> FileVersion | None:
        with self.lock:
            return self.files.get(file_id) if isinstance(file_id, str) else None

    def delete_version(self, file_id: Any, name: Any) -> FileVersion:
        with self.lock:
            version = self.get(file_id)
            if version is None or version.name != name:
                raise bad_request(f"File not present: {name} {file_id}", "file_not_present")
            del self.files[version.id]
        self._drop_disk(version.id)
        return version

    # -- sandbox -------------------------------------------------------------------
    def all_files(self) -> list[FileVersion]:
        with self.lock:
            return sorted(self.files.values(), key=lambda f: f.seq)

    def reset(self) -> None:
        """Every file version and unfinished large file goes, and the buckets not fixtures."""
        with self.lock:
            ids = list(self.files)
            self.files.clear()
            self.buckets = {k: b for k, b in self.buckets.items() if b.fixture}
        for file_id in ids:
            self._drop_disk(file_id)
        for leftover in (self.root / "incoming").iterdir():
            leftover.unlink(missing_ok=True)
