# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the B2 client (b2sdk behind one door); no stable interface.
"""b2sdk behind one door: authorization, retries, errors, names, hashing, URLs.

    client = b2_client(module.params)        # UserInputError for missing credentials
    client.authorize()                        # the first call: a bad key fails here
    bucket = client.bucket("images")          # UserInputError naming 'bucket'
    versions = client.versions(bucket, prefix="nixforge/do-42/")

b2sdk retries its own HTTP calls (5 tries, ``Retry-After`` honoured); every call made
here is wrapped once more in the collection's retry policy, so a burst of 429/503
answers longer than b2sdk's budget still ends well. Failures become
``UserInputError`` (naming the parameter to fix) or ``ProviderError``, with the
application key, the account authorization token and download tokens masked.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import os
import re
import time
import traceback
from typing import Any, Callable, Dict, List, Mapping, Optional, Set
from urllib.parse import quote

from ansible.module_utils.basic import env_fallback
from ansible_collections.nixforge.images.plugins.module_utils._b2._transport import (
    is_certificate_error,
    session_factory,
)
from ansible_collections.nixforge.images.plugins.module_utils._b2._upload import Uploader
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import (
    NixforgeError,
    ProviderError,
    UserInputError,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import RetryingClient, RetryPolicy

try:
    from b2sdk.v2 import B2Api, B2HttpApiConfig, InMemoryAccountInfo
    from b2sdk.v2 import exception as b2_exceptions

    HAS_B2SDK = True
    B2SDK_IMPORT_ERROR: Optional[str] = None
    B2Error: Any = b2_exceptions.B2Error
except ImportError:  # pragma: no cover - exercised only without b2sdk
    HAS_B2SDK = False
    B2SDK_IMPORT_ERROR = traceback.format_exc()
    b2_exceptions = None
    B2Error = Exception

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_PART_SIZE",
    "FILE_INFO_SHA256",
    "HAS_B2SDK",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MINIMUM_CAPABILITIES",
    "MIN_PART_SIZE",
    "REQUIRED_LIBRARIES",
    "B2Client",
    "FileDigest",
    "b2_argument_spec",
    "b2_client",
    "build_prefix",
    "generate_name",
    "hash_file",
    "is_retryable_b2_error",
    "is_retryable_upload_error",
    "normalize_api_url",
    "parse_size",
    "translate_b2_error",
    "validate_object_name",
]

REQUIRED_LIBRARIES = [("b2sdk", HAS_B2SDK, B2SDK_IMPORT_ERROR)]
DEFAULT_API_URL = "https://api.backblazeb2.com"
KEY_ID_ENV = "B2_APPLICATION_KEY_ID"
KEY_ENV = "B2_APPLICATION_KEY"
API_URL_ENV = "B2_API_URL"
CA_BUNDLE_ENV = "B2_CA_BUNDLE"
# The least a key needs for b2_object and b2_build_info (on the bucket, for names under
# nixforge/): the bucket and its type, listing (adoption, clean-up, a lost finish), uploads
# and large files (writeFiles also cancels them), deleting versions. url_mode=authorized
# adds shareFiles. readFiles is never needed.
MINIMUM_CAPABILITIES = ("listBuckets", "listFiles", "writeFiles", "deleteFiles")
KEY_HINT = (
    "Use an application key with the capabilities %s (and shareFiles for url_mode=authorized) on 'bucket', "
    "restricted to that bucket and a name prefix that covers 'nixforge/' if you like" % ", ".join(MINIMUM_CAPABILITIES)
)
# B2's limits (decimal units, as B2 counts them).
MIN_PART_SIZE = 5 * 1000 * 1000
MAX_PART_SIZE = 5 * 1000 * 1000 * 1000
DEFAULT_PART_SIZE = 100 * 1000 * 1000
MAX_PARTS = 10000
FILE_INFO_SHA256 = "sha256"
NAME_ROOT = "nixforge"
HASH_CHUNK = 8 * 1024 * 1024
DEFAULT_POLICY = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=20.0, max_total_delay=90.0)
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.I)


def b2_argument_spec() -> Dict[str, Any]:
    """Options of ``doc_fragments/b2.py`` (keep both in step)."""
    return dict(
        application_key_id=dict(type="str", no_log=True, fallback=(env_fallback, [KEY_ID_ENV])),
        application_key=dict(type="str", no_log=True, fallback=(env_fallback, [KEY_ENV])),
        api_url=dict(type="str", aliases=["realm"], fallback=(env_fallback, [API_URL_ENV]), default=DEFAULT_API_URL),
        ca_bundle=dict(type="path", fallback=(env_fallback, [CA_BUNDLE_ENV])),
    )


def normalize_api_url(value: Optional[str]) -> str:
    """An ``http(s)://host[:port]`` realm URL without a trailing slash."""
    text = (value or DEFAULT_API_URL).strip().rstrip("/")
    if not re.match(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/]*)?$", text):
        raise UserInputError(
            "%r is not an http(s) URL" % (value,),
            hint="Write it like 'https://api.backblazeb2.com' (the B2 realm URL)",
            parameter="api_url",
        )
    return text


def parse_size(value: Any, parameter: str = "part_size") -> int:
    """Bytes from ``104857600``, ``100MB`` (decimal), ``100MiB`` (binary), ``5M``..."""
    match = _SIZE_RE.match(str(value))
    if value is None or isinstance(value, bool) or not match:
        raise UserInputError(
            "%r is not a size" % (value,), hint="Give bytes or a size like '100MB' or '64MiB'", parameter=parameter
        )
    unit = (match.group(2) or "").lower()
    base = 1024 if "i" in unit else 1000
    power = "bkmgt".index(unit[0]) if unit else 0
    return int(float(match.group(1)) * base**power)


def build_prefix(build_id: str) -> str:
    """Where the objects of one build live: ``nixforge/<build_id>/``."""
    return "%s/%s/" % (NAME_ROOT, build_id)


def generate_name(build_id: str, src: str, random_hex: Optional[Callable[[int], str]] = None) -> str:
    """``nixforge/<build_id>/<32 random hex>/<basename>``: unguessable, as the URL may be public."""
    token = (random_hex or (lambda n: binascii.hexlify(os.urandom(n)).decode()))(16)
    return "%s%s/%s" % (build_prefix(build_id), token, os.path.basename(src))


def validate_object_name(name: str, parameter: str = "name") -> str:
    """B2's file name rules: 1 to 1024 UTF-8 bytes, no control characters, no empty segments."""
    encoded = name.encode("utf-8")
    problem = None
    if not name or len(encoded) > 1024:
        problem = "must be 1 to 1024 bytes of UTF-8"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "must not contain control characters"
    elif name.startswith("/") or name.endswith("/") or "//" in name:
        problem = "must not start or end with '/' nor contain '//'"
    if problem:
        raise UserInputError(
            "%r is not a valid B2 file name: it %s" % (name, problem),
            hint="Give a name like 'images/nixos.qcow2.gz', or leave 'name' unset for a generated one",
            parameter=parameter,
        )
    return name


class FileDigest:
    """Size and sha256 of a local file."""

    def __init__(self, size: int, sha256: str) -> None:
        self.size = size
        self.sha256 = sha256


def hash_file(path: str, chunk: int = HASH_CHUNK) -> FileDigest:
    """The sha256 of a file, from one streaming read."""
    sha256 = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            sha256.update(block)
            size += len(block)
    return FileDigest(size, sha256.hexdigest())


# -- errors ------------------------------------------------------------------------


def _is(exc: BaseException, *names: str) -> bool:
    """Whether ``exc`` is one of b2sdk's exceptions of these class names (by name: b2sdk may be missing)."""
    for name in names:
        cls = getattr(b2_exceptions, name, None) if b2_exceptions is not None else None
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def is_retryable_b2_error(exc: BaseException) -> bool:
    """Throttling, 5xx, timeouts and dropped connections; never a refusal of the input."""
    if not isinstance(exc, B2Error) or _is(exc, "Unauthorized", "AccessDenied"):
        return False
    if _is(exc, "MaxRetriesExceeded"):
        # an upload that ran out of b2sdk's attempts: retry only when every cause was transient
        causes = getattr(exc, "exception_info_list", None) or []
        return all(isinstance(c, B2Error) and is_retryable_b2_error(c) for c in causes)
    try:
        return bool(exc.should_retry_http())
    except Exception:  # noqa: BLE001 - a foreign error type: not ours to retry
        return False


def is_retryable_upload_error(exc: BaseException) -> bool:
    """For one upload request: also what B2 answers to "take another upload URL" (an expired or
    busy upload token); the failed URL is not reused, so the next attempt gets a new one."""
    if is_retryable_b2_error(exc):
        return True
    if _is(exc, "Unauthorized") and getattr(exc, "code", None) == "unauthorized":
        return False  # the key may not write there (capability, bucket, prefix): no new URL helps
    try:
        return isinstance(exc, B2Error) and bool(exc.should_retry_upload())
    except Exception:  # noqa: BLE001 - a foreign error type
        return False


def _b2_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def _access_error(exc: BaseException, what: str, needs: Optional[str], text: str) -> Optional[NixforgeError]:
    """The errors of trust and of the key: the certificate, the credentials, what the key may do."""
    code = getattr(exc, "code", None)
    if is_certificate_error(exc):
        return UserInputError(
            "the TLS certificate of the B2 endpoint was not trusted (%s)" % text,
            hint="Give the CA that signed the endpoint's certificate in 'ca_bundle' (or %s); without it the "
            "system's CAs (or REQUESTS_CA_BUNDLE) are trusted, which is what Backblaze's own endpoints need"
            % CA_BUNDLE_ENV,
            parameter="ca_bundle",
            what=what,
        )
    if _is(exc, "Unauthorized") and needs and code == "unauthorized":
        return UserInputError(
            "B2 refused the application key for this call, which needs the %s capability on the bucket "
            "and names under the key's prefix (%s)" % (needs, text),
            hint=KEY_HINT,
            parameter="application_key_id",
            what=what,
            code=code,
        )
    if _is(exc, "Unauthorized"):  # at authorization: the key itself
        return UserInputError(
            "B2 refused the credentials (%s)" % text,
            hint="Check 'application_key_id' and 'application_key' (or %s / %s) and 'api_url'" % (KEY_ID_ENV, KEY_ENV),
            parameter="application_key",
            what=what,
            code=code,
        )
    if _is(exc, "RestrictedBucket"):
        return UserInputError(
            "the application key is restricted to another bucket (%s)" % text,
            hint="Set 'bucket' to the key's bucket, or use a key for this bucket. " + KEY_HINT,
            parameter="bucket",
            what=what,
        )
    if _is(exc, "NotAllowedByAppKeyError", "AccessDenied"):
        return UserInputError(
            "the application key may not do this%s (%s)" % (" (it needs %s)" % needs if needs else "", text),
            hint=KEY_HINT,
            parameter="application_key_id",
            what=what,
            code=code,
        )
    return None


def translate_b2_error(
    exc: BaseException, what: str, parameter: Optional[str] = None, needs: Optional[str] = None
) -> NixforgeError:
    """A b2sdk exception as the collection's error, naming the parameter to fix where one is at fault
    (``needs``: the key capability the call takes, named when B2 refuses the key)."""
    text = _b2_text(exc)
    code = getattr(exc, "code", None)
    access = _access_error(exc, what, needs, text)
    if access is not None:
        return access
    if _is(exc, "InvalidJsonResponse"):
        return UserInputError(
            "the endpoint did not answer like the B2 native API (%s)" % text,
            hint="Set 'api_url' to a B2 realm URL such as 'https://api.backblazeb2.com' (not an S3 endpoint)",
            parameter="api_url",
            what=what,
        )
    if _is(exc, "NonExistentBucket", "BucketIdNotFound"):
        return UserInputError(
            "the bucket does not exist or the key cannot see it (%s)" % text,
            hint="Check 'bucket', and that the application key is not restricted to another bucket",
            parameter="bucket",
            what=what,
        )
    if _is(exc, "B2ConnectionError", "B2RequestTimeout", "UnknownHost"):
        return ProviderError(
            "B2 did not answer (%s)" % text, hint="Check 'api_url' and the network", what=what, retryable=True
        )
    if is_retryable_b2_error(exc):
        return ProviderError(
            text, hint="B2 kept throttling or failing after retries; try again later", what=what, retryable=True
        )
    if _is(exc, "BadRequest", "InvalidUserInput") and parameter:
        return UserInputError(text, hint="Check the parameter '%s'" % parameter, parameter=parameter, what=what)
    return ProviderError(text, what=what, code=code if isinstance(code, str) else None)


# -- client ------------------------------------------------------------------------


def _version_dict(entry: Mapping[str, Any]) -> Dict[str, Any]:
    """One entry of ``b2_list_file_versions`` / ``b2_list_unfinished_large_files``."""
    return {
        "file_id": entry.get("fileId"),
        "name": entry.get("fileName"),
        "size": entry.get("contentLength") or 0,
        "action": entry.get("action") or "upload",
        "file_info": dict(entry.get("fileInfo") or {}),
        "upload_timestamp": entry.get("uploadTimestamp"),
    }


class B2Client(RetryingClient):
    """A b2sdk ``B2Api`` whose calls retry with our policy and raise ``NixforgeError``."""

    def __init__(
        self,
        api: Any,
        realm: str,
        key_id: str,
        key: str,
        policy: Optional[RetryPolicy] = None,
        sleep: Optional[Callable[[float], None]] = None,
    ) -> None:
        self.api = api
        self.realm = realm
        self._key_id = key_id
        self._key = key
        super().__init__(policy or DEFAULT_POLICY, [key, key_id], sleep)

    def add_secret(self, value: Optional[str]) -> None:
        if value and value not in self.secrets:
            self.secrets.append(value)

    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        what: str,
        parameter: Optional[str] = None,
        classify: Callable[[BaseException], bool] = is_retryable_b2_error,
        needs: Optional[str] = None,
        **kw: Any,
    ) -> Any:
        """``fn(*args, **kw)`` with retries; a b2sdk error becomes a ``NixforgeError`` (``needs``: the
        key capability the call takes, named if B2 refuses the key)."""

        def classify_and_wait(exc: BaseException) -> bool:
            # B2 says how long to wait in Retry-After (429 and 503): at least that, then our backoff
            retry = classify(exc)
            after = getattr(exc, "retry_after_seconds", None)
            if retry and after:
                (self._sleep or time.sleep)(min(float(after), 60.0))
            return retry

        try:
            return self._with_retry(fn, classify_and_wait, *args, **kw)
        except NixforgeError:
            raise
        except B2Error as exc:
            raise self._masked(translate_b2_error(exc, what, parameter, needs)) from None

    def authorize(self) -> None:
        self.call(self.api.authorize_account, self.realm, self._key_id, self._key, what="Authorizing with B2")
        self.add_secret(self.api.account_info.get_account_auth_token())

    @property
    def absolute_minimum_part_size(self) -> int:
        return int(self.api.account_info.get_absolute_minimum_part_size() or MIN_PART_SIZE)

    def bucket(self, name: str) -> Any:
        """The bucket, asked of B2 (a key restricted to it makes b2sdk answer from the key's data,
        without the bucket's type, which url_mode=public checks)."""
        found = self.call(
            self.api.list_buckets,
            bucket_name=name,
            what="Looking up bucket %r" % name,
            parameter="bucket",
            needs="listBuckets",
        )
        if not found:
            raise UserInputError(
                "bucket %r does not exist or the application key cannot see it" % name,
                hint="Check 'bucket', and that the application key is not restricted to another bucket",
                parameter="bucket",
            )
        return found[0]

    def versions(self, bucket: Any, prefix: str, exact: bool = False) -> List[Dict[str, Any]]:
        """Every file version (uploads and hide markers) whose name starts with ``prefix``
        (``exact``: whose name is ``prefix``), newest first for each name."""
        found: List[Dict[str, Any]] = []
        start_name, start_id = prefix, None
        while True:
            page = self.call(
                self.api.session.list_file_versions,
                bucket.id_,
                start_name,
                start_id,
                1000,
                prefix,
                what="Listing file versions under %r" % prefix,
                needs="listFiles",
            )
            # "start" entries are unfinished large files: unfinished() lists them, cancel removes them
            found.extend(_version_dict(e) for e in page.get("files") or [] if e.get("action") in ("upload", "hide"))
            start_name, start_id = page.get("nextFileName"), page.get("nextFileId")
            if not start_name:
                break
        return [v for v in found if v["name"] == prefix] if exact else found

    def unfinished(self, bucket: Any, prefix: str) -> List[Dict[str, Any]]:
        """Every unfinished large file whose name starts with ``prefix``."""
        found: List[Dict[str, Any]] = []
        start_id = None
        while True:
            page = self.call(
                self.api.session.list_unfinished_large_files,
                bucket.id_,
                start_id,
                100,
                prefix,
                what="Listing unfinished large files under %r" % prefix,
                needs="listFiles",
            )
            found.extend(_version_dict(e) for e in page.get("files") or [])
            start_id = page.get("nextFileId")
            if not start_id:
                return found

    def existing_ids(self, bucket: Any, name: str) -> Set[str]:
        """File ids of what exists of ``name`` now (unfinished large files and versions)."""
        ids = {v["file_id"] for v in self.unfinished(bucket, name) if v["name"] == name}
        return ids | {v["file_id"] for v in self.versions(bucket, name, exact=True)}

    def remove_new(
        self, bucket: Any, name: str, before: Set[str], marks: Mapping[str, str], keep: Optional[str] = None
    ) -> None:
        """Cancel the unfinished large files of ``name`` not in ``before``, and delete its new
        versions whose file info carries every entry of ``marks`` (but ``keep``): what one
        upload's requests made, those whose answer was lost (and were retried) included."""
        for entry in self.unfinished(bucket, name):
            if entry["name"] == name and entry["file_id"] not in before:
                self.cancel_large_file(bucket, entry["file_id"], name)
        spared = before | {keep}
        for entry in self.versions(bucket, name, exact=True):
            ours = all(entry["file_info"].get(k) == v for k, v in marks.items())
            if entry["action"] == "upload" and entry["file_id"] not in spared and ours:
                self.delete_version(entry["file_id"], name)

    def _still_unfinished(self, bucket: Any, name: str, file_id: str) -> bool:
        try:
            return any(v["file_id"] == file_id for v in self.unfinished(bucket, name))
        except NixforgeError:  # cannot list (a key without listFiles): the refusal stands
            return True

    def delete_version(self, file_id: str, name: str) -> None:
        def delete() -> None:
            try:
                self.api.session.delete_file_version(file_id, name)
            except B2Error as exc:
                # gone already: a retried call that had succeeded
                if not _is(exc, "FileNotPresent", "FileOrBucketNotFound"):
                    raise

        self.call(delete, what="Deleting %s (version %s)" % (name, file_id), needs="deleteFiles")

    def cancel_large_file(self, bucket: Any, file_id: str, name: str) -> None:
        def cancel() -> None:
            try:
                self.api.session.cancel_large_file(file_id)
            except B2Error as exc:
                # gone already: a retried call whose first answer was lost ("No active upload")
                gone = _is(exc, "BadRequest") and "no active upload" in str(exc).lower()
                if gone or _is(exc, "FileNotPresent", "FileOrBucketNotFound"):
                    return
                # B2 cannot tell a key restricted to a name prefix which name an unknown file id
                # had, so a retry (b2sdk's or ours) after a lost answer is refused, not told
                # "gone": the file is gone if it is no longer listed
                if _is(exc, "Unauthorized") and not self._still_unfinished(bucket, name, file_id):
                    return
                raise

        self.call(cancel, what="Cancelling the unfinished large file %s (%s)" % (name, file_id), needs="writeFiles")

    def upload(
        self,
        bucket: Any,
        path: str,
        name: str,
        file_info: Mapping[str, str],
        size: int,
        part_size: int,
        threads: int,
        verify: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Upload ``path`` as ``name``: one request up to ``part_size``, parallel parts above,
        every byte read once (see ``_b2_upload``); with ``verify`` the sha256 is checked in the
        same pass and a mismatch fails before the upload is finished."""

        def call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
            if kw.pop("upload", False):
                kw["classify"] = is_retryable_upload_error
            kw.setdefault("needs", "writeFiles")
            return self.call(fn, *args, **kw)

        engine = Uploader(self.api.session, call, threads)
        response = engine.upload(bucket.id_, path, name, size, file_info, part_size, verify)
        return dict(_version_dict(response), finish_recovered=engine.finish_recovered)

    def public_url(self, bucket_name: str, name: str) -> str:
        return "%s/file/%s/%s" % (self.api.account_info.get_download_url(), bucket_name, quote(name, safe="/"))

    def authorized_url(self, bucket: Any, name: str, seconds: int) -> str:
        """The public URL plus a download authorization token for exactly this name."""
        token = self.call(
            bucket.get_download_authorization,
            name,
            seconds,
            what="Authorizing the download of %s" % name,
            needs="shareFiles",
        )
        self.add_secret(token)
        return "%s?Authorization=%s" % (self.public_url(bucket.name, name), quote(token, safe=""))


def b2_client(params: Mapping[str, Any], threads: int = 4, policy: Optional[RetryPolicy] = None) -> B2Client:
    """Build a client from the ``b2_argument_spec`` options (no API call yet)."""
    for option, env in (("application_key_id", KEY_ID_ENV), ("application_key", KEY_ENV)):
        if not params.get(option):
            raise UserInputError(
                "no %s given" % option.replace("_", " "),
                hint="Set '%s' or the environment variable %s" % (option, env),
                parameter=option,
            )
    realm = normalize_api_url(params.get("api_url"))
    ca_bundle = params.get("ca_bundle") or None
    if ca_bundle and not os.path.isfile(ca_bundle):
        raise UserInputError(
            "%r is not a file" % ca_bundle,
            hint="Give the path of a PEM file of CA certificates in 'ca_bundle' (or %s)" % CA_BUNDLE_ENV,
            parameter="ca_bundle",
        )
    quiet_b2sdk_logging()
    config = B2HttpApiConfig(http_session_factory=session_factory(ca_bundle))
    api = B2Api(InMemoryAccountInfo(), max_upload_workers=max(1, int(threads)), api_config=config)
    return B2Client(api, realm, params["application_key_id"], params["application_key"], policy=policy)


def quiet_b2sdk_logging() -> None:
    """b2sdk logs request details (URLs, retry reasons) at debug and warning level; Python's
    last-resort handler would print warnings to stderr, which Ansible may show. Swallow them."""
    logger = logging.getLogger("b2sdk")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    logger.propagate = False
