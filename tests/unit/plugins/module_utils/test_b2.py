"""Unit tests of module_utils/_b2/_client.py: names, sizes, hashing, error translation, retries, secrets."""

from __future__ import annotations

import hashlib
import re

import pytest
from ansible_collections.nixforge.images.plugins.module_utils._b2 import _client as b2
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError, UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import RetryPolicy
from b2sdk.v2 import exception as b2exc

KEY = "K005secretapplicationkey0123"
KEY_ID = "005keyid0123456789"


@pytest.mark.parametrize(
    "text, expected",
    [
        (104857600, 104857600),
        ("100MB", 100 * 1000 * 1000),
        ("5M", 5 * 1000 * 1000),
        ("64MiB", 64 * 1024 * 1024),
        ("1.5GB", 1500 * 1000 * 1000),
        ("2g", 2 * 1000**3),
        ("4096", 4096),
        ("10kb", 10000),
    ],
)
def test_parse_size(text, expected):
    assert b2.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-5MB", "5XB", None, True])
def test_parse_size_rejects(text):
    with pytest.raises(UserInputError) as info:
        b2.parse_size(text, "part_size")
    assert info.value.parameter == "part_size"


def test_normalize_api_url():
    assert b2.normalize_api_url(None) == "https://api.backblazeb2.com"
    assert b2.normalize_api_url("http://10.0.0.1:8080/") == "http://10.0.0.1:8080"
    for bad in ("api.backblazeb2.com", "ftp://x", "https://"):
        with pytest.raises(UserInputError) as info:
            b2.normalize_api_url(bad)
        assert info.value.parameter == "api_url"


def test_generated_names_are_unguessable_and_keep_the_file_name():
    names = {b2.generate_name("do-1", "/var/tmp/out/nixos.qcow2.gz") for attempt in range(50)}
    assert len(names) == 50
    for name in names:
        assert re.match(r"^nixforge/do-1/[0-9a-f]{32}/nixos\.qcow2\.gz$", name)
    assert b2.build_prefix("do-1") == "nixforge/do-1/"


@pytest.mark.parametrize("name", ["", "/a", "a/", "a//b", "a\nb", "x" * 1025])
def test_validate_object_name_rejects(name):
    with pytest.raises(UserInputError) as info:
        b2.validate_object_name(name)
    assert info.value.parameter == "name"


def test_hash_file_streams(tmp_path):
    path = tmp_path / "f"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    digest = b2.hash_file(str(path), chunk=1000)  # many small reads give the same digests
    assert digest.size == len(data)
    assert digest.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "exc, retryable",
    [
        (b2exc.ServiceError("503 service_unavailable"), True),
        (b2exc.TooManyRequests(retry_after_seconds="1"), True),
        (b2exc.B2ConnectionError("refused"), True),
        (b2exc.B2RequestTimeout("slow"), True),
        (b2exc.Unauthorized("bad key", "unauthorized"), False),
        (b2exc.InvalidAuthToken("expired", "expired_auth_token"), False),
        (b2exc.NonExistentBucket("nope"), False),
        (b2exc.BadRequest("bad", "bad_request"), False),
        (b2exc.MaxRetriesExceeded(5, [b2exc.ServiceError("503")]), True),
        (b2exc.MaxRetriesExceeded(5, [b2exc.BadRequest("bad", "bad_request")]), False),
        (ValueError("not b2"), False),
    ],
)
def test_retry_classifier(exc, retryable):
    assert b2.is_retryable_b2_error(exc) is retryable


@pytest.mark.parametrize(
    "exc, kind, parameter",
    [
        (b2exc.Unauthorized("bad key", "unauthorized"), UserInputError, "application_key"),
        (b2exc.NonExistentBucket("nope"), UserInputError, "bucket"),
        (b2exc.AccessDenied(), UserInputError, "application_key_id"),
        (b2exc.InvalidJsonResponse(b"<html>"), UserInputError, "api_url"),
        (b2exc.ServiceError("503"), ProviderError, None),
        (b2exc.B2ConnectionError("refused"), ProviderError, None),
        (b2exc.BadRequest("bad", "bad_request"), ProviderError, None),
    ],
)
def test_translate(exc, kind, parameter):
    error = b2.translate_b2_error(exc, "Doing it")
    assert isinstance(error, kind)
    assert getattr(error, "parameter", None) == parameter
    assert error.format().startswith("Doing it failed:")


def client(sleeps=None):
    return b2.B2Client(
        api=None,
        realm="https://b2.test",
        key_id=KEY_ID,
        key=KEY,
        policy=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.01),
        sleep=(sleeps.append if sleeps is not None else None),
    )


def test_call_retries_then_succeeds():
    sleeps: list = []
    c = client(sleeps)
    answers = [b2exc.TooManyRequests(), b2exc.ServiceError("500"), "ok"]

    def fn():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert c.call(fn, what="Listing") == "ok"
    assert c.retries == 2 and len(sleeps) == 2


def test_call_gives_up_and_masks_secrets():
    c = client([])
    c.add_secret("download-token-abcdef")

    def fn():
        raise b2exc.ServiceError("500 boom with %s and key %s and download-token-abcdef" % (KEY, KEY_ID))

    with pytest.raises(ProviderError) as info:
        c.call(fn, what="Listing")
    text = info.value.format()
    assert c.retries == 2
    assert KEY not in text and KEY_ID not in text and "download-token-abcdef" not in text
    assert "********" in text


def test_call_does_not_retry_user_errors():
    c = client([])

    def fn():
        raise b2exc.NonExistentBucket("nope")

    with pytest.raises(UserInputError):
        c.call(fn, what="Looking up", parameter="bucket")
    assert c.retries == 0


def test_client_needs_credentials():
    for missing in ("application_key_id", "application_key"):
        params = {"application_key_id": KEY_ID, "application_key": KEY, "api_url": None}
        params[missing] = None
        with pytest.raises(UserInputError) as info:
            b2.b2_client(params)
        assert info.value.parameter == missing
    made = b2.b2_client({"application_key_id": KEY_ID, "application_key": KEY, "api_url": "http://127.0.0.1:1"}, 3)
    assert made.realm == "http://127.0.0.1:1" and KEY in made.secrets
    assert made.api.services.upload_manager._max_workers == 3


def test_argument_spec_marks_credentials_no_log():
    spec = b2.b2_argument_spec()
    assert spec["application_key"]["no_log"] and spec["application_key_id"]["no_log"]
    assert spec["api_url"]["aliases"] == ["realm"]


def test_part_stream_appends_the_sha1_and_rewinds(tmp_path):
    from ansible_collections.nixforge.images.plugins.module_utils._b2._upload import PartStream

    path = tmp_path / "f"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    part = data[1000:51000]
    with PartStream(str(path), 1000, 50000) as stream:
        assert len(stream) == 50040
        for size in (7, 4096, 65536):
            stream.seek(0)
            chunks = []
            while True:
                chunk = stream.read(size)
                if not chunk:
                    break
                chunks.append(chunk)
            body = b"".join(chunks)
            assert body == part + hashlib.sha1(part).hexdigest().encode()  # noqa: S324
            assert stream.hash == hashlib.sha1(part).hexdigest()  # noqa: S324


def test_part_stream_refuses_the_trailer_on_sha256_mismatch(tmp_path):
    from ansible_collections.nixforge.images.plugins.module_utils._b2._upload import PartStream

    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    with PartStream(str(path), 0, 100, expected_sha256="0" * 64) as stream:
        assert len(stream.read(100)) == 100
        with pytest.raises(OSError, match="sha256 mismatch"):
            stream.read(100)
        assert stream.actual_sha256 == hashlib.sha256(b"x" * 100).hexdigest()
    good = hashlib.sha256(b"x" * 100).hexdigest()
    with PartStream(str(path), 0, 100, expected_sha256=good) as stream:
        assert len(stream.read(1000)) == 140


def test_upload_classifier_also_takes_another_upload_url():
    # an expired or refused upload token: retry the request with a new upload URL
    expired = b2exc.InvalidAuthToken("expired", "expired_auth_token")
    assert b2.is_retryable_upload_error(expired) is True
    assert b2.is_retryable_b2_error(expired) is False
    assert b2.is_retryable_upload_error(b2exc.BadRequest("bad", "bad_request")) is False
    assert b2.is_retryable_upload_error(ValueError("x")) is False


def test_call_waits_at_least_retry_after():
    sleeps: list = []
    c = client(sleeps)
    answers = [b2exc.TooManyRequests(retry_after_seconds="3"), "ok"]

    def fn():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert c.call(fn, what="Listing") == "ok"
    assert sleeps[0] == 3.0 and len(sleeps) == 2  # Retry-After, then the jittered backoff


# -- keys and certificates ----------------------------------------------------------


def test_a_refused_capability_names_it_and_the_least_key():
    refused = b2exc.Unauthorized("application key 'k' does not have the listFiles capability", "unauthorized")
    err = b2.translate_b2_error(refused, "Listing file versions under 'nixforge/b1/'", needs="listFiles")
    assert isinstance(err, UserInputError) and err.parameter == "application_key_id"
    assert "listFiles capability" in err.msg
    for capability in b2.MINIMUM_CAPABILITIES:
        assert capability in err.hint
    # at authorization (no capability involved) it is the credentials that are wrong
    bad_key = b2.translate_b2_error(b2exc.Unauthorized("not valid", "unauthorized"), "Authorizing with B2")
    assert bad_key.parameter == "application_key"


def test_a_refused_upload_is_not_retried_but_an_ended_upload_url_is():
    assert not b2.is_retryable_upload_error(b2exc.Unauthorized("restricted to names starting with", "unauthorized"))
    assert b2.is_retryable_upload_error(b2exc.InvalidAuthToken("Invalid authorization token", "bad_auth_token"))
    assert b2.is_retryable_upload_error(b2exc.ServiceError("503 service_unavailable"))


def test_a_certificate_that_does_not_verify_names_ca_bundle_and_is_not_retried():
    from ansible_collections.nixforge.images.plugins.module_utils._b2._transport import CertificateNotTrusted

    # b2sdk wraps what the session raises in UnknownError
    failed = b2exc.UnknownError(repr(CertificateNotTrusted("[SSL: CERTIFICATE_VERIFY_FAILED] unable to get issuer")))
    assert not b2.is_retryable_b2_error(failed)
    err = b2.translate_b2_error(failed, "Authorizing with B2")
    assert isinstance(err, UserInputError) and err.parameter == "ca_bundle"
    assert "'ca_bundle'" in err.hint and "B2_CA_BUNDLE" in err.hint
    # a connection that broke is not a certificate problem
    assert isinstance(b2.translate_b2_error(b2exc.B2ConnectionError("Connection reset"), "x"), ProviderError)


def test_the_session_trusts_the_bundle_over_the_environment(monkeypatch, tmp_path):
    from ansible_collections.nixforge.images.plugins.module_utils._b2._transport import session_factory

    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/elsewhere.pem")
    session = session_factory(str(bundle))()
    settings = session.merge_environment_settings("https://b2.test", {}, False, None, None)
    assert settings["verify"] == str(bundle)
    assert (
        session_factory(None)().merge_environment_settings("https://b2.test", {}, False, None, None)["verify"]
        == "/elsewhere.pem"
    )


def test_a_missing_ca_bundle_fails_naming_it(tmp_path):
    with pytest.raises(UserInputError) as info:
        b2.b2_client({"application_key_id": KEY_ID, "application_key": KEY, "ca_bundle": str(tmp_path / "none.pem")})
    assert info.value.parameter == "ca_bundle"


class CancelSession:
    """cancel_large_file answers in order; list_unfinished_large_files lists ``left``."""

    def __init__(self, answers, left):
        self.answers, self.left, self.cancels = answers, left, 0

    def cancel_large_file(self, file_id):
        self.cancels += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def list_unfinished_large_files(self, bucket_id, start_id, count, prefix):
        return {"files": [{"fileId": i, "fileName": prefix, "action": "start"} for i in self.left]}


class Api:
    def __init__(self, session):
        self.session = session


class Bucket:
    id_ = "bucket-1"


@pytest.mark.parametrize(
    "left, refused",
    [([], False), (["other-file"], False), (["file-1"], True)],
    ids=["gone", "only-another-left", "still-there"],
)
def test_a_cancel_retried_after_a_lost_answer_asks_whether_the_file_is_gone(left, refused):
    # the first cancel was carried out but its answer lost (500); B2 refuses the retry to a key
    # restricted to a name prefix (it no longer knows the file id's name): gone means done
    session = CancelSession([b2exc.ServiceError("500 internal_error"), b2exc.Unauthorized("", "unauthorized")], left)
    c = client([])
    c.api = Api(session)
    if refused:
        with pytest.raises(UserInputError, match="writeFiles"):
            c.cancel_large_file(Bucket(), "file-1", "nixforge/b/x.img")
    else:
        c.cancel_large_file(Bucket(), "file-1", "nixforge/b/x.img")
    assert session.cancels == 2


def test_a_cancel_refused_while_the_file_is_listed_is_a_refusal():
    session = CancelSession([b2exc.Unauthorized("", "unauthorized")], ["file-1"])
    c = client([])
    c.api = Api(session)
    with pytest.raises(UserInputError, match="writeFiles"):
        c.cancel_large_file(Bucket(), "file-1", "nixforge/b/x.img")
    assert session.cancels == 1
