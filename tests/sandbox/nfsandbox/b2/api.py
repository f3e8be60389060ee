"""Request handling of the B2 emulator (the native API as b2sdk 2.x calls it), no HTTP here.

`B2API.handle(Request)` answers one request with a `Response`: a JSON payload, or a
download streamed from the store's files (`segments`). Upload bodies are read from
`Request.stream` straight to disk. API versions v1-v4 share the handlers and answer in
their own shapes (`views.py`). Every call with an account token is checked against the
application key the token came from (`keys.py`: capability, buckets, name prefix).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable
from urllib.parse import quote, unquote, unquote_plus

from . import views
from .faults import B2Faults
from .keys import CALL_CAPABILITY, CAPABILITIES, AppKey, new_key, parse_create_key
from .store import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MAX_SMALL_FILE,
    UNVERIFIED,
    B2Error,
    Bucket,
    FileVersion,
    Store,
    bad_request,
    check_file_info,
    check_file_name,
    receive,
)

log = logging.getLogger("nfsandbox.b2")

__all__ = ["B2API", "CAPABILITIES", "Request", "Response"]

TOKEN_TTL = 24 * 3600.0  # account and upload tokens, as on B2
MAX_DOWNLOAD_AUTH = 604800
MAX_JSON_BODY = 1 << 20
MAX_TOKENS = 20000
MAX_NAME_AND_INFO = 7000  # B2's limit on the upload headers they travel in
JSON_HEADERS = {"Cache-Control": "max-age=0, no-cache, no-store"}
SPECIAL_INFO_HEADERS = {
    "b2-content-disposition": "Content-Disposition",
    "b2-content-language": "Content-Language",
    "b2-expires": "Expires",
    "b2-cache-control": "Cache-Control",
    "b2-content-encoding": "Content-Encoding",
}
DOWNLOAD_OVERRIDES = {
    "b2ContentDisposition": "Content-Disposition",
    "b2ContentLanguage": "Content-Language",
    "b2Expires": "Expires",
    "b2CacheControl": "Cache-Control",
    "b2ContentEncoding": "Content-Encoding",
    "b2ContentType": "Content-Type",
}
UPLOAD_CALLS = ("b2_upload_file", "b2_upload_part")
LOST_MESSAGE = "Internal server error (sandbox fault: the call was carried out, its answer lost)"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any  # case-insensitive .get(), e.g. http.client.HTTPMessage
    stream: BinaryIO | None = None
    length: int = 0


@dataclass
class Response:
    status: int
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    segments: list[tuple[Path, int, int]] | None = None  # (path, offset, length) of the body
    length: int = 0  # body length when `segments` is set


@dataclass
class Token:
    value: str
    kind: str  # account | upload | download
    issued: float
    target: str = ""  # upload: the bucket or large file id; download: the bucket id
    prefix: str = ""  # download: fileNamePrefix
    valid_for: float = 0.0  # download: validDurationInSeconds
    busy: bool = False  # upload: an upload is running with it (B2 allows one at a time)
    key_id: str = ""  # account and upload: the application key it was issued to


@dataclass
class Ctx:
    """What a handler knows of its request besides the parameters."""

    call: str
    version: str
    key: AppKey


class Paced:
    """An upload body read at most at `rate` bytes/s (the fault knob `upload_rate`)."""

    def __init__(
        self,
        stream: BinaryIO,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.stream = stream
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self.started = clock()
        self.taken = 0

    def _pace(self, n: int) -> None:
        self.taken += n
        ahead = self.started + self.taken / self.rate - self.clock()
        if ahead > 0:
            self.sleep(ahead)

    def readinto(self, view: Any) -> int:
        n = self.stream.readinto(view) or 0
        self._pace(n)
        return n

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self._pace(len(data))
        return data


class Corrupted:
    """An upload body whose first byte arrives altered (the fault knob `corrupt_upload`)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.done = False

    def _alter(self, data: bytes) -> bytes:
        if data and not self.done:
            self.done = True
            return bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    def readinto(self, view: Any) -> int:
        n = self.stream.readinto(view) or 0
        if n and not self.done:
            self.done = True
            view[0] ^= 0xFF
        return n

    def read(self, size: int = -1) -> bytes:
        return self._alter(self.stream.read(size))


def b2_encode(value: str) -> str:
    return quote(value.encode("utf-8"))


class B2API:
    def __init__(
        self,
        root: Path,
        base_url: str,
        faults: B2Faults | None = None,
        key_id: str | None = None,
        key: str | None = None,
        account_id: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # where upload URLs point (B2's upload pods are hosts of their own): the sandbox
        # sets an address its builder hosts reach too; default: the API's own
        self.upload_base_url = ""
        self.account_id = account_id or secrets.token_hex(6)
        self.faults = faults or B2Faults()
        self.store = Store(root, self.account_id)
        self.lock = threading.Lock()
        self.tokens: dict[str, Token] = {}
        self.ended: set[str] = set()  # upload tokens a 503 ended (bounded like the tokens)
        self.keys: dict[str, AppKey] = {}
        self.key_serial = 0
        master = self.add_key("master", list(CAPABILITIES))
        if key_id:
            del self.keys[master.key_id]
            master.key_id = key_id
            self.keys[key_id] = master
        if key:
            master.secret = key
        self.key_id, self.key = master.key_id, master.secret  # the master key (all capabilities)
        self.calls: dict[str, Callable[[dict[str, Any], Ctx], Any]] = {
            "b2_list_buckets": self._list_buckets,
            "b2_create_bucket": self._create_bucket,
            "b2_update_bucket": self._update_bucket,
            "b2_delete_bucket": self._delete_bucket,
            "b2_get_upload_url": self._get_upload_url,
            "b2_get_upload_part_url": self._get_upload_part_url,
            "b2_start_large_file": self._start_large_file,
            "b2_finish_large_file": self._finish_large_file,
            "b2_cancel_large_file": self._cancel_large_file,
            "b2_list_parts": self._list_parts,
            "b2_list_unfinished_large_files": self._list_unfinished,
            "b2_list_file_names": self._list_file_names,
            "b2_list_file_versions": self._list_file_versions,
            "b2_hide_file": self._hide_file,
            "b2_delete_file_version": self._delete_file_version,
            "b2_get_file_info": self._get_file_info,
            "b2_get_download_authorization": self._get_download_authorization,
            "b2_create_key": self._create_key,
            "b2_list_keys": self._list_keys,
            "b2_delete_key": self._delete_key,
        }

    # -- keys ----------------------------------------------------------------------
    def add_key(
        self,
        name: str,
        capabilities: list[str],
        bucket_ids: list[str] | None = None,
        name_prefix: str | None = None,
        expires_ms: int | None = None,
        fixture: bool = True,
    ) -> AppKey:
        """A new application key (fixture keys are the sandbox's own: not resources, not deletable)."""
        with self.lock:
            self.key_serial += 1
            made = new_key(self.account_id, self.key_serial, name, capabilities, bucket_ids, name_prefix, expires_ms)
            made.fixture = fixture
            self.keys[made.key_id] = made
        return made

    def key_of(self, token: Token) -> AppKey:
        key = self.keys.get(token.key_id)
        if key is None:  # deleted since: its tokens die with it
            raise B2Error(401, "bad_auth_token", "Invalid authorization token (its application key was deleted)")
        if key.expired():
            raise B2Error(401, "unauthorized", f"application key {key.name!r} has expired")
        return key

    # -- entry ---------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        try:
            return self._route(req)
        except B2Error as err:
            return Response(err.status, err.body(), {**JSON_HEADERS, **err.headers})

    def _route(self, req: Request) -> Response:
        match = re.fullmatch(r"/b2api/(v[1-4])/(b2_[a-z_]+)(?:/(.*))?", req.path)
        if match:
            version, call, rest = match.groups()
            if call == "b2_authorize_account":
                return self._authorize(req, version)
            if call in UPLOAD_CALLS:
                return self._upload(req, call, rest or "", version)
            if call == "b2_download_file_by_id":
                return self._download_by_id(req)
            handler = self.calls.get(call)
            if handler is None:
                raise bad_request(f"{call} is not implemented by the sandbox's B2")
            if req.method not in ("GET", "POST"):
                raise B2Error(405, "method_not_allowed", f"{req.method} is not allowed on {call}")
            token = self._account_token(req.headers.get("Authorization"), call)
            key = self.key_of(token)
            key.lacks(CALL_CAPABILITY[call], call)
            self._fault(call)
            payload = handler(self._params(req), Ctx(call, version, key))
            self._lose(call)
            return Response(200, payload, dict(JSON_HEADERS))
        match = re.fullmatch(r"/file/([^/]+)/(.+)", req.path)
        if match and req.method in ("GET", "HEAD"):
            return self._download_by_name(req, unquote(match.group(1)), unquote_plus(match.group(2)))
        raise B2Error(404, "not_found", f"no such API or file: {req.method} {req.path}")

    def _fault(self, call: str, token: Token | None = None) -> None:
        status = self.faults.pick(call)
        if status is None:
            return
        headers = {"Retry-After": str(self.faults.get("retry_after"))}
        if status == 429:
            raise B2Error(429, "too_many_requests", "Too many requests, slow down (sandbox fault)", headers)
        if token is not None:
            # B2 answers an upload it cannot take with 503: that URL and its token are done for,
            # the client must ask for a new upload URL
            with self.lock:
                self.tokens.pop(token.value, None)
                if len(self.ended) > MAX_TOKENS:
                    self.ended.clear()
                self.ended.add(token.value)
        raise B2Error(503, "service_unavailable", "Service temporarily unavailable (sandbox fault)", headers)

    def _lose(self, call: str) -> None:
        """The call was carried out; when the lost-answer knob says so, its answer never arrives."""
        if self.faults.lost(call):
            log.info("b2: answer to %s lost (carried out, answered 500)", call)
            raise B2Error(500, "internal_error", LOST_MESSAGE)

    def _params(self, req: Request) -> dict[str, Any]:
        if req.method == "GET":
            return {k: v[0] for k, v in req.query.items() if v}
        if req.length > MAX_JSON_BODY:
            raise bad_request("request body too large", "bad_json")
        raw = req.stream.read(req.length) if req.stream is not None and req.length else b""
        if not raw.strip():
            return {}
        try:
            params = json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"request body is not JSON: {exc}", "bad_json") from None
        if not isinstance(params, dict):
            raise bad_request("request body must be a JSON object", "bad_json")
        return {k: v for k, v in params.items() if v is not None}  # b2sdk sends unset params as null

    # -- tokens --------------------------------------------------------------------
    def _issue(self, kind: str, key_id: str = "", target: str = "", prefix: str = "", valid_for: float = 0.0) -> str:
        value = f"4_{key_id or self.key_id}_{secrets.token_urlsafe(30)}"
        if kind == "download":
            value = "3_" + value[2:]
        with self.lock:
            if len(self.tokens) > MAX_TOKENS:
                self._prune()
            self.tokens[value] = Token(value, kind, time.time(), target, prefix, valid_for, key_id=key_id)
        return value

    def _prune(self) -> None:
        """Forget tokens that expired (called with the lock held; keeps the table bounded)."""
        limit = time.time() - max(TOKEN_TTL, MAX_DOWNLOAD_AUTH)
        self.tokens = {k: t for k, t in self.tokens.items() if t.issued > limit}

    def _check(self, value: str | None, kinds: tuple[str, ...], call: str) -> Token:
        token = self.tokens.get(value or "")
        if token is None and value in self.ended:
            self.faults.count_reused(call)
            raise B2Error(401, "bad_auth_token", "Invalid authorization token (its upload URL ended with a 503)")
        if token is None or token.kind not in kinds:
            if not value:
                raise B2Error(401, "bad_auth_token", "Authorization header is missing")
            raise B2Error(401, "bad_auth_token", "Invalid authorization token")
        ttl = token.valid_for if token.kind == "download" else self.faults.token_ttl(TOKEN_TTL)
        if time.time() > token.issued + ttl:
            self.faults.count_expired(call)
            raise B2Error(401, "expired_auth_token", "Authorization token has expired")
        return token

    def _account_token(self, value: str | None, call: str) -> Token:
        return self._check(value, ("account",), call)

    def _authorize(self, req: Request, version: str) -> Response:
        header = req.headers.get("Authorization") or ""
        key_id = secret = None
        if header.startswith("Basic "):
            try:
                key_id, _sep, secret = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                pass
        key = self.keys.get(key_id or "")
        if key is None or not secret or not secrets.compare_digest(secret, key.secret) or key.expired():
            raise B2Error(401, "unauthorized", "application key id or application key is not valid")
        self._fault("b2_authorize_account")
        token = self._issue("account", key.key_id)
        with self.store.lock:
            buckets = dict(self.store.buckets)
        body = views.authorize_view(version, self.account_id, token, key, self.base_url, buckets)
        return Response(200, body, dict(JSON_HEADERS))

    # -- restrictions --------------------------------------------------------------
    def _bucket(self, ctx: Ctx, bucket_id: Any) -> Bucket:
        """The bucket of a request, when the key may use it (unauthorized first, as B2 hides the rest)."""
        with self.store.lock:
            found = self.store.buckets.get(bucket_id) if isinstance(bucket_id, str) else None
        ctx.key.bucket_allowed(found, ctx.call)
        return self.store.bucket(bucket_id)

    def _file(self, ctx: Ctx, file_id: Any, name: Any = None) -> FileVersion | None:
        """The file version of a request (None when there is none), checked against the key."""
        found = self.store.get(file_id)
        if found is None:
            if ctx.key.bucket_ids is not None or ctx.key.name_prefix:
                ctx.key.name_allowed(name if isinstance(name, str) else None, ctx.call)
            return None
        with self.store.lock:
            ctx.key.bucket_allowed(self.store.buckets.get(found.bucket_id), ctx.call)
        ctx.key.name_allowed(found.name, ctx.call)
        return found

    # -- buckets -------------------------------------------------------------------
    def _check_account(self, params: dict[str, Any]) -> None:
        if params.get("accountId") != self.account_id:
            raise B2Error(401, "unauthorized", f"accountId {params.get('accountId')!r} does not match the token")

    def _list_buckets(self, params: dict[str, Any], ctx: Ctx) -> Any:
        self._check_account(params)
        types = params.get("bucketTypes") or ["all"]
        with self.store.lock:
            buckets = sorted(self.store.buckets.values(), key=lambda b: b.name)
        chosen = [
            b for b in buckets if params.get("bucketId") in (None, b.id) and params.get("bucketName") in (None, b.name)
        ]
        if ctx.key.bucket_ids is not None:
            if params.get("bucketId") is None and params.get("bucketName") is None:
                raise B2Error(
                    401, "unauthorized", "the application key is restricted to buckets: give bucketId or bucketName"
                )
            for bucket in chosen:
                ctx.key.bucket_allowed(bucket, ctx.call)
        out = [views.bucket_view(ctx.version, self.account_id, b) for b in chosen if "all" in types or b.type in types]
        return {"buckets": out}

    def _create_bucket(self, params: dict[str, Any], ctx: Ctx) -> Any:
        self._check_account(params)
        if ctx.key.bucket_ids is not None:
            raise B2Error(401, "unauthorized", "a key restricted to buckets cannot create buckets")
        bucket = self.store.create_bucket(params.get("bucketName"), params.get("bucketType"), params.get("bucketInfo"))
        log.info("b2: bucket %s (%s) created", bucket.name, bucket.type)
        return views.bucket_view(ctx.version, self.account_id, bucket)

    def _update_bucket(self, params: dict[str, Any], ctx: Ctx) -> Any:
        self._check_account(params)
        with self.store.lock:
            bucket = self._bucket(ctx, params.get("bucketId"))
            if "ifRevisionIs" in params and params["ifRevisionIs"] != bucket.revision:
                raise B2Error(409, "conflict", f"bucket revision is {bucket.revision}, not {params['ifRevisionIs']}")
            if "bucketType" in params:
                if params["bucketType"] not in ("allPublic", "allPrivate"):
                    raise bad_request(f"Invalid bucketType {params['bucketType']!r}")
                bucket.type = params["bucketType"]
            if isinstance(params.get("bucketInfo"), dict):
                bucket.info = {str(k): str(v) for k, v in params["bucketInfo"].items()}
            bucket.revision += 1
            return views.bucket_view(ctx.version, self.account_id, bucket)

    def _delete_bucket(self, params: dict[str, Any], ctx: Ctx) -> Any:
        self._check_account(params)
        self._bucket(ctx, params.get("bucketId"))
        bucket = self.store.delete_bucket(params.get("bucketId"))
        log.info("b2: bucket %s deleted", bucket.name)
        return views.bucket_view(ctx.version, self.account_id, bucket)

    # -- keys ----------------------------------------------------------------------
    def _create_key(self, params: dict[str, Any], ctx: Ctx) -> Any:
        self._check_account(params)
        with self.store.lock:
            buckets = dict(self.store.buckets)
        spec = parse_create_key(params, ctx.version, buckets)
        made = self.add_key(fixture=False, **spec)
        log.info("b2: application key %s (%s) created", made.name, made.key_id)
        return {**made.view(ctx.version, with_secret=True), "accountId": self.account_id}

    def _list_keys(self, params: dict[str, Any], ctx: Ctx) -> Any:
        self._check_account(params)
        count = int_param(params, "maxKeyCount", 100, 1, 10000)
        with self.lock:
            keys = sorted(self.keys.values(), key=lambda k: k.key_id)
        start = params.get("startApplicationKeyId")
        if start:
            keys = [k for k in keys if k.key_id >= start]
        views_ = [{**k.view(ctx.version), "accountId": self.account_id} for k in keys[:count]]
        return {"keys": views_, "nextApplicationKeyId": keys[count].key_id if len(keys) > count else None}

    def _delete_key(self, params: dict[str, Any], ctx: Ctx) -> Any:
        key_id = params.get("applicationKeyId")
        with self.lock:
            key = self.keys.get(key_id) if isinstance(key_id, str) else None
            if key is None:
                raise bad_request(f"Invalid applicationKeyId: {key_id}", "bad_request")
            if key.fixture:
                raise bad_request(f"the sandbox's own key {key.name!r} cannot be deleted (it is a fixture)")
            del self.keys[key.key_id]
        log.info("b2: application key %s (%s) deleted", key.name, key.key_id)
        return {**key.view(ctx.version), "accountId": self.account_id}

    # -- uploads -------------------------------------------------------------------
    def _get_upload_url(self, params: dict[str, Any], ctx: Ctx) -> Any:
        bucket = self._bucket(ctx, params.get("bucketId"))
        url = f"{self.upload_base_url or self.base_url}/b2api/{ctx.version}/b2_upload_file/{bucket.id}/{upload_pod()}"
        return {
            "bucketId": bucket.id,
            "uploadUrl": url,
            "authorizationToken": self._issue("upload", ctx.key.key_id, bucket.id),
        }

    def _get_upload_part_url(self, params: dict[str, Any], ctx: Ctx) -> Any:
        self._file(ctx, params.get("fileId"))
        version = self.store.unfinished(params.get("fileId"))
        url = f"{self.upload_base_url or self.base_url}/b2api/{ctx.version}/b2_upload_part/{version.id}/{upload_pod()}"
        return {
            "fileId": version.id,
            "uploadUrl": url,
            "authorizationToken": self._issue("upload", ctx.key.key_id, version.id),
        }

    def _upload(self, req: Request, call: str, rest: str, version: str) -> Response:
        if req.method != "POST":
            raise B2Error(405, "method_not_allowed", f"{call} takes POST")
        target = rest.split("/", 1)[0]
        token = self._check(req.headers.get("Authorization"), ("upload",), call)
        if token.target != target:
            raise B2Error(401, "bad_auth_token", "the authorization token is not the one of this upload URL")
        key = self.key_of(token)
        self._fault(call, token)
        length_header = req.headers.get("Content-Length")
        if length_header is None or not str(length_header).isdigit():
            raise B2Error(411, "bad_request", "Content-Length is required")
        length = int(length_header)
        sha1_header = req.headers.get("X-Bz-Content-Sha1") or ""
        with self.lock:
            if token.busy:
                # B2's words, which b2sdk parses into UploadTokenUsedConcurrently
                raise bad_request(f"more than one upload using auth token {token.value}", "auth_token_limit")
            token.busy = True
        rate = self.faults.get("upload_rate")
        if rate and req.stream is not None:
            req.stream = Paced(req.stream, rate * 1_000_000)
        if req.stream is not None and self.faults.corrupt(call):
            req.stream = Corrupted(req.stream)
        ctx = Ctx(call, version, key)
        try:
            if call == "b2_upload_file":
                payload = self._upload_file(req, ctx, target, length, sha1_header)
            else:
                payload = self._upload_part(req, target, length, sha1_header)
        finally:
            token.busy = False
        self._lose(call)
        return Response(200, payload, dict(JSON_HEADERS))

    def _upload_file(self, req: Request, ctx: Ctx, bucket_id: str, length: int, sha1_header: str) -> Any:
        bucket = self.store.bucket(bucket_id)
        name = check_file_name(unquote_plus(req.headers.get("X-Bz-File-Name") or ""))
        ctx.key.name_allowed(name, ctx.call)
        if length > MAX_SMALL_FILE + 40:
            raise bad_request(f"files over {MAX_SMALL_FILE} bytes must be uploaded as large files")
        info = {}
        for key, value in req.headers.items():
            if key.lower().startswith("x-bz-info-"):
                info[key[len("x-bz-info-") :]] = unquote_plus(value)
        info = check_file_info(info)
        header_bytes = len(name.encode()) + sum(len(k) + len(v.encode()) for k, v in info.items())
        if header_bytes > MAX_NAME_AND_INFO:
            raise bad_request(f"file name and file info take {header_bytes} bytes, more than {MAX_NAME_AND_INFO}")
        tmp = self.store.incoming()
        size, sha1, verified = receive(req.stream, length, sha1_header, tmp)
        version = self.store.add_upload(
            bucket, name, req.headers.get("Content-Type"), info, tmp, size, sha1 if verified else UNVERIFIED + sha1
        )
        log.info("b2: %s/%s uploaded (%d bytes, %s)", bucket.name, name, size, version.id)
        return views.file_view(ctx.version, self.account_id, version)

    def _upload_part(self, req: Request, file_id: str, length: int, sha1_header: str) -> Any:
        self.store.unfinished(file_id)
        raw = req.headers.get("X-Bz-Part-Number") or ""
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_PARTS:
            raise bad_request(f"X-Bz-Part-Number must be 1..{MAX_PARTS}, not {raw!r}")
        if length > MAX_PART_SIZE + 40:
            raise bad_request(f"parts must be at most {MAX_PART_SIZE} bytes")
        tmp = self.store.incoming()
        size, sha1, _verified = receive(req.stream, length, sha1_header, tmp)
        part = self.store.add_part(file_id, int(raw), tmp, size, sha1)
        return {
            "fileId": file_id,
            "partNumber": part.number,
            "contentLength": part.size,
            "contentSha1": part.sha1,
            "contentMd5": None,
            "uploadTimestamp": part.uploaded,
        }

    # -- large files ---------------------------------------------------------------
    def _start_large_file(self, params: dict[str, Any], ctx: Ctx) -> Any:
        bucket = self._bucket(ctx, params.get("bucketId"))
        name = check_file_name(params.get("fileName"))
        ctx.key.name_allowed(name, ctx.call)
        info = check_file_info(params.get("fileInfo"))
        version = self.store.start_large(bucket, name, params.get("contentType"), info)
        return views.file_view(ctx.version, self.account_id, version)

    def _finish_large_file(self, params: dict[str, Any], ctx: Ctx) -> Any:
        self._file(ctx, params.get("fileId"))
        version = self.store.finish_large(params.get("fileId"), params.get("partSha1Array"))
        log.info("b2: large file %s finished (%d bytes, %d parts)", version.name, version.size, len(version.segments))
        return views.file_view(ctx.version, self.account_id, version)

    def _cancel_large_file(self, params: dict[str, Any], ctx: Ctx) -> Any:
        self._file(ctx, params.get("fileId"))
        version = self.store.cancel_large(params.get("fileId"))
        return {
            "accountId": self.account_id,
            "bucketId": version.bucket_id,
            "fileId": version.id,
            "fileName": version.name,
        }

    def _list_parts(self, params: dict[str, Any], ctx: Ctx) -> Any:
        self._file(ctx, params.get("fileId"))
        start = int_param(params, "startPartNumber", 1, 1, MAX_PARTS)
        count = int_param(params, "maxPartCount", 100, 1, 1000)
        parts, nxt = self.store.list_parts(params.get("fileId"), start, count)
        views_ = [
            {"fileId": params["fileId"], "partNumber": p.number, "contentLength": p.size, "contentSha1": p.sha1,
             "contentMd5": None, "uploadTimestamp": p.uploaded}
            for p in parts
        ]  # fmt: skip
        return {"parts": views_, "nextPartNumber": nxt}

    def _list_unfinished(self, params: dict[str, Any], ctx: Ctx) -> Any:
        bucket = self._bucket(ctx, params.get("bucketId"))
        count = int_param(params, "maxFileCount", 100, 1, 100)
        prefix = params.get("namePrefix") or ""
        ctx.key.name_allowed(prefix, ctx.call, "namePrefix")
        files, nxt = self.store.list_unfinished(bucket, prefix, params.get("startFileId"), count)
        return {"files": [views.file_view(ctx.version, self.account_id, f) for f in files], "nextFileId": nxt}

    # -- listing, hiding, deleting -------------------------------------------------
    def _list_file_names(self, params: dict[str, Any], ctx: Ctx) -> Any:
        bucket = self._bucket(ctx, params.get("bucketId"))
        count = int_param(params, "maxFileCount", 100, 1, 10000)
        prefix = params.get("prefix") or ""
        ctx.key.name_allowed(prefix, ctx.call, "prefix")
        items, nxt = self.store.list_names(bucket, params.get("startFileName"), count, prefix, params.get("delimiter"))
        files = [
            views.folder_view(ctx.version, i)
            if isinstance(i, str)
            else views.file_view(ctx.version, self.account_id, i)
            for i in items
        ]
        return {"files": files, "nextFileName": nxt}

    def _list_file_versions(self, params: dict[str, Any], ctx: Ctx) -> Any:
        bucket = self._bucket(ctx, params.get("bucketId"))
        count = int_param(params, "maxFileCount", 100, 1, 10000)
        prefix = params.get("prefix") or ""
        ctx.key.name_allowed(prefix, ctx.call, "prefix")
        items, next_name, next_id = self.store.list_versions(
            bucket, params.get("startFileName"), params.get("startFileId"), count, prefix
        )
        files = [views.file_view(ctx.version, self.account_id, f) for f in items]
        return {"files": files, "nextFileName": next_name, "nextFileId": next_id}

    def _hide_file(self, params: dict[str, Any], ctx: Ctx) -> Any:
        bucket = self._bucket(ctx, params.get("bucketId"))
        name = check_file_name(params.get("fileName"))
        ctx.key.name_allowed(name, ctx.call)
        return views.file_view(ctx.version, self.account_id, self.store.hide(bucket, name))

    def _delete_file_version(self, params: dict[str, Any], ctx: Ctx) -> Any:
        self._file(ctx, params.get("fileId"), params.get("fileName"))
        version = self.store.delete_version(params.get("fileId"), params.get("fileName"))
        log.info("b2: version %s of %s deleted", version.id, version.name)
        return {"fileId": version.id, "fileName": version.name}

    def _get_file_info(self, params: dict[str, Any], ctx: Ctx) -> Any:
        version = self._file(ctx, params.get("fileId"))
        if version is None:
            raise B2Error(404, "not_found", f"File not present: {params.get('fileId')}")
        return views.file_view(ctx.version, self.account_id, version)

    def _get_download_authorization(self, params: dict[str, Any], ctx: Ctx) -> Any:
        bucket = self._bucket(ctx, params.get("bucketId"))
        prefix = params.get("fileNamePrefix")
        if not isinstance(prefix, str):
            raise bad_request("fileNamePrefix is required")
        ctx.key.name_allowed(prefix, ctx.call, "fileNamePrefix")
        duration = int_param(params, "validDurationInSeconds", None, 1, MAX_DOWNLOAD_AUTH)
        token = self._issue("download", ctx.key.key_id, bucket.id, prefix, float(duration))
        return {"bucketId": bucket.id, "fileNamePrefix": prefix, "authorizationToken": token}

    # -- downloads -----------------------------------------------------------------
    def _download_by_name(self, req: Request, bucket_name: str, name: str) -> Response:
        call = "b2_download_file_by_name"
        bucket = self.store.bucket_by_name(bucket_name)
        if bucket is None:
            raise B2Error(404, "not_found", f"Bucket does not exist: {bucket_name}")
        self._download_auth(req, bucket, name, call)
        self._fault(call)
        version = self.store.latest(bucket, name)
        if version is None:
            raise B2Error(404, "not_found", f"File with such name does not exist: {name}")
        return self._serve(req, version)

    def _download_by_id(self, req: Request) -> Response:
        call = "b2_download_file_by_id"
        if req.method not in ("GET", "HEAD", "POST"):
            raise B2Error(405, "method_not_allowed", f"{req.method} is not allowed on {call}")
        params = self._params(req) if req.method == "POST" else {k: v[0] for k, v in req.query.items() if v}
        version = self.store.get(params.get("fileId"))
        if version is None or version.action != "upload":
            bucket = None
        else:
            bucket = self.store.buckets.get(version.bucket_id)
        if bucket is None or version is None:
            # authentication still comes first, as on B2, so that ids cannot be probed
            self._check(auth_of(req), ("account",), call)
            raise B2Error(404, "not_found", f"File not present: {params.get('fileId')}")
        self._download_auth(req, bucket, version.name, call)
        self._fault(call)
        return self._serve(req, version)

    def _download_auth(self, req: Request, bucket: Bucket, name: str, call: str) -> None:
        if bucket.type == "allPublic":
            return
        value = auth_of(req)
        if not value:
            raise B2Error(401, "unauthorized", f"bucket {bucket.name} is private: an authorization token is required")
        token = self._check(value, ("account", "download"), call)
        if token.kind == "download":
            if token.target != bucket.id or not name.startswith(token.prefix):
                raise B2Error(401, "unauthorized", "the download authorization does not cover this file")
            return
        key = self.key_of(token)
        key.lacks(CALL_CAPABILITY[call], call)
        key.bucket_allowed(bucket, call)
        key.name_allowed(name, call)

    def _serve(self, req: Request, version: FileVersion) -> Response:
        size = version.size
        headers = {
            "Content-Type": version.content_type or "application/octet-stream",
            "Accept-Ranges": "bytes",
            "x-bz-file-id": version.id,
            "x-bz-file-name": b2_encode(version.name),
            "x-bz-content-sha1": version.sha1,
            "x-bz-upload-timestamp": str(version.uploaded),
            "Cache-Control": "max-age=0",
        }
        for key, value in version.info.items():
            if key.lower() in SPECIAL_INFO_HEADERS:
                headers[SPECIAL_INFO_HEADERS[key.lower()]] = value
            else:
                headers[f"x-bz-info-{key}"] = b2_encode(value)
        for param, header in DOWNLOAD_OVERRIDES.items():
            if req.query.get(param):
                headers[header] = req.query[param][0]
        status, start, end = 200, 0, size - 1
        wanted = parse_range(req.headers.get("Range"), size)
        if wanted == "unsatisfiable":
            message = f"The range {req.headers.get('Range')} is not satisfiable for {size} bytes"
            raise B2Error(416, "range_not_satisfiable", message, {"Content-Range": f"bytes */{size}"})
        if isinstance(wanted, tuple):
            status, (start, end) = 206, wanted
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        return Response(status, None, headers, segments=slice_segments(version.segments, start, length), length=length)

    # -- sandbox -------------------------------------------------------------------
    def resources(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self.store.lock:
            buckets = dict(self.store.buckets)
        for bucket in buckets.values():
            if not bucket.fixture:
                out.append({"type": "b2_bucket", "id": bucket.id, "name": bucket.name, "bucket_type": bucket.type})
        for version in self.store.all_files():
            bucket = buckets.get(version.bucket_id)
            out.append(
                {
                    "type": "b2_large_file" if version.action == "start" else "b2_file",
                    "id": version.id,
                    "bucket": bucket.name if bucket else version.bucket_id,
                    "name": version.name,
                    "action": version.action,
                    "size": version.size,
                    "parts": len(version.parts) if version.action == "start" else None,
                    "fileInfo": dict(version.info),
                    "tags": {k: v for k, v in version.info.items() if k.startswith("nixforge-")},
                }
            )
        with self.lock:
            keys = [k for k in self.keys.values() if not k.fixture]
        for key in keys:
            out.append({"type": "b2_key", "id": key.key_id, "name": key.name, "capabilities": list(key.capabilities)})
        return out

    def reset(self) -> None:
        self.store.reset()
        self.faults.reset()
        with self.lock:
            self.keys = {k: v for k, v in self.keys.items() if v.fixture}


def upload_pod() -> str:
    """The pod part of an upload URL (B2's look; the emulator does not read it)."""
    return f"c000_v0001000_t{secrets.randbelow(10000):04d}"


def auth_of(req: Request) -> str | None:
    value = req.headers.get("Authorization")
    if not value and req.query.get("Authorization"):
        value = req.query["Authorization"][0]
    return value or None


def int_param(params: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int:
    value = params.get(name, default)
    if value is None:
        raise bad_request(f"{name} is required")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise bad_request(f"{name} must be an integer, not {value!r}") from None
    if not low <= number <= high:
        raise bad_request(f"{name} must be within {low}..{high}, not {number}")
    return number


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(first, last) of a single `bytes=` range, None to serve it all, or "unsatisfiable"."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or match.groups() == ("", ""):
        return None  # malformed or several ranges: the whole file, as HTTP allows
    first, last = match.groups()
    if first == "":
        count = int(last)
        if count == 0 or size == 0:
            return "unsatisfiable"
        return max(size - count, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


def slice_segments(segments: list[tuple[Path, int]], start: int, length: int) -> list[tuple[Path, int, int]]:
    """The (path, offset, length) pieces holding bytes start..start+length-1 of a file."""
    out = []
    pos = 0
    for path, size in segments:
        if length <= 0:
            break
        if start < pos + size:
            offset = max(start - pos, 0)
            take = min(size - offset, length)
            out.append((path, offset, take))
            length -= take
            start += take
        pos += size
    return out
