"""Unit tests of module_utils/_digitalocean/_client.py.

The client runs python-digitalocean's real request code against a scripted HTTP server on
loopback (each answer given by the test), so what the library does with odd answers
(error bodies without id/message, HTML 502 pages, 404 without body) is what is tested.
"""

from __future__ import annotations

import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError, UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import RetryPolicy
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean import _client as do

TOKEN = "dop_v1_unit5b1f0c2e9d"


class Scripted:
    """Answers requests in order from ``script`` [(status, headers, body)]; the last repeats."""

    def __init__(self):
        self.script = []
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append((self.command, self.path, dict(self.headers), body))
                status, headers, payload = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = "http://127.0.0.1:%d/v2/" % self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    s = Scripted()
    yield s
    s.close()


def client(url, sleeps=None, policy=None):
    transport = do.Transport(token=TOKEN, end_point=url)
    return do.DigitalOceanClient(
        transport,
        policy=policy or RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.02, max_total_delay=5),
        secrets=[TOKEN],
        sleep=(sleeps.append if sleeps is not None else None),
    )


OK_REGIONS = (200, {"Content-Type": "application/json"}, {"regions": [{"slug": "nyc3", "available": True}]})


def error(status, error_id, message, **headers):
    return status, {"Content-Type": "application/json", **headers}, {"id": error_id, "message": message}


# -- retries ----------------------------------------------------------------------------


def test_429_and_5xx_are_retried_with_the_token_sent(server):
    server.script = [error(429, "too_many_requests", "API Rate limit exceeded."), error(503, "x", "down"), OK_REGIONS]
    sleeps = []
    c = client(server.url, sleeps)
    assert c.regions() == [{"slug": "nyc3", "available": True}]
    assert c.retries == 2 and len(sleeps) == 2
    assert server.requests[0][2]["Authorization"] == "Bearer " + TOKEN
    assert server.requests[0][1].startswith("/v2/regions?")


def test_retry_after_is_honoured(server):
    server.script = [error(429, "too_many_requests", "slow down", **{"Retry-After": "3"}), OK_REGIONS]
    sleeps = []
    client(server.url, sleeps).regions()
    assert sleeps == [3.0]


def test_ratelimit_reset_past_the_budget_fails_at_once_saying_so(server):
    reset = str(int(time.time()) + 3600)
    headers = {"ratelimit-remaining": "0", "ratelimit-reset": reset}
    server.script = [error(429, "too_many_requests", "API Rate limit exceeded.", **headers)]
    sleeps = []
    with pytest.raises(ProviderError) as info:
        client(server.url, sleeps).regions()
    assert sleeps == []
    assert "asked to wait" in str(info.value) and "HTTP 429" in str(info.value)
    assert len(server.requests) == 1


def test_ratelimit_reset_is_ignored_while_budget_remains(server):
    reset = str(int(time.time()) + 3600)
    headers = {"ratelimit-remaining": "12", "ratelimit-reset": reset}
    server.script = [error(429, "too_many_requests", "burst", **headers), OK_REGIONS]
    sleeps = []
    client(server.url, sleeps).regions()
    assert len(sleeps) == 1 and sleeps[0] < 1


def test_error_body_without_id_or_message_is_retried_and_reported(server):
    # python-digitalocean raises IndexError on this body
    server.script = [(500, {"Content-Type": "application/json"}, {"error": "boom"})]
    with pytest.raises(ProviderError) as info:
        client(server.url).regions()
    assert "HTTP 500" in str(info.value) and "after 4 retries" in str(info.value)
    assert len(server.requests) == 5


def test_html_gateway_page_is_retried(server):
    server.script = [(502, {"Content-Type": "text/html"}, b"<html><h1>502 Bad Gateway</h1></html>"), OK_REGIONS]
    c = client(server.url)
    assert c.regions()[0]["slug"] == "nyc3" and c.retries == 1


def test_401_names_the_token_and_is_not_retried(server):
    server.script = [error(401, "unauthorized", "Unable to authenticate you")]
    with pytest.raises(UserInputError) as info:
        client(server.url).regions()
    assert info.value.parameter == "oauth_token"
    assert "DIGITALOCEAN_TOKEN / DO_API_TOKEN" in str(info.value)
    assert len(server.requests) == 1


def test_422_names_the_parameter_from_digitaloceans_message(server):
    server.script = [error(422, "unprocessable_entity", "You specified an invalid region for image creation: x")]
    with pytest.raises(UserInputError) as info:
        client(server.url).create("images", {"name": "n"}, lambda: None, "Importing", ["tags", "region", "url"])
    assert info.value.parameter == "region" and "invalid region" in str(info.value)
    assert len(server.requests) == 1


def test_create_looks_for_what_a_failed_attempt_made(server):
    found = {"id": 7, "name": "n"}
    server.script = [error(500, "server_error", "oops")]
    looked = []

    def find():
        looked.append(1)
        return found

    assert client(server.url).create("images", {"name": "n"}, find, "Importing") == found
    assert looked == [1] and len(server.requests) == 1


def test_404_is_none_when_allowed(server):
    server.script = [(404, {"Content-Type": "application/json"}, {"id": "not_found", "message": "gone"})]
    assert client(server.url).get_image(5) is None
    assert client(server.url).delete_image(5) is False


def test_pages_are_followed_one_call_each(server):
    page1 = {"images": [{"id": 1, "tags": ["t"]}], "links": {"pages": {"next": server.url + "images?page=2"}}}
    page2 = {"images": [{"id": 2, "tags": ["t"]}, {"id": 3, "tags": []}], "links": {}}
    server.script = [(200, {}, page1), error(503, "x", "busy"), (200, {}, page2)]
    c = client(server.url)
    assert [i["id"] for i in c.list_images(tag="t")] == [1, 2]
    assert "page=2" in server.requests[2][1] and "tag_name=t" in server.requests[2][1]
    assert "private=true" in server.requests[0][1]


def test_connection_refused_is_retried_then_names_api_url():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = []
    with pytest.raises(ProviderError) as info:
        client("http://127.0.0.1:%d/v2/" % port, sleeps).regions()
    assert len(sleeps) == 4 and "'api_url'" in str(info.value)


def test_secrets_never_in_messages(server):
    server.script = [error(422, "unprocessable_entity", "bad token %s in url" % TOKEN)]
    with pytest.raises(UserInputError) as info:
        client(server.url).regions()
    assert TOKEN not in str(info.value)


# -- pure helpers ---------------------------------------------------------------------------


def test_retry_after_forms():
    now = 1_800_000_000.0
    assert do._retry_after({"retry-after": "29"}, now) == 29.0
    assert do._retry_after({"Retry-After": formatdate(now + 10, usegmt=True)}, now) == pytest.approx(10, abs=1)
    assert do._retry_after({"ratelimit-remaining": "0", "ratelimit-reset": str(int(now) + 40)}, now) == 40
    assert do._retry_after({"ratelimit-remaining": "5", "ratelimit-reset": str(int(now) + 40)}, now) is None
    assert do._retry_after({}, now) is None


def test_tags():
    tags = do.do_tags({"nixforge-build-id": "b1", "nixforge-expires-at": "2026-11-28T12:00:00Z", "flag": ""})
    assert tags == ["flag", "nixforge-build-id:b1", "nixforge-expires-at:2026-11-28T12:00:00Z"]
    assert do.tag_dict(tags)["nixforge-expires-at"] == "2026-11-28T12:00:00Z"
    for bad in ({"a b": "c"}, {"a": "x y"}, {"a:b": "c"}, {"a": "é"}, {"a": "x" * 300}):
        with pytest.raises(UserInputError) as info:
            do.do_tags(bad)
        assert info.value.parameter == "tags"


def test_distribution_and_regions():
    assert do.check_distribution("opensuse") == "openSUSE"
    assert do.check_distribution(None) == "Unknown"
    with pytest.raises(UserInputError) as info:
        do.check_distribution("NixOS")
    assert info.value.parameter == "distribution" and "Rocky Linux" in str(info.value)
    regions = [{"slug": "nyc3", "available": True}, {"slug": "nyc2", "available": False}]
    do.check_regions(regions, ["nyc3"], "region")
    for slug in ("nyc2", "mars1"):
        with pytest.raises(UserInputError) as info:
            do.check_regions(regions, [slug], "regions")
        assert info.value.parameter == "regions" and "Valid regions: nyc3" in str(info.value)


def test_api_url_and_token():
    assert do.normalize_api_url("http://127.0.0.1:9/v2") == "http://127.0.0.1:9/v2/"
    assert do.normalize_api_url(None) == do.DEFAULT_API_URL
    with pytest.raises(UserInputError) as info:
        do.normalize_api_url("api.digitalocean.com/v2")
    assert info.value.parameter == "api_url"
    with pytest.raises(UserInputError) as info:
        do.digitalocean_client({"oauth_token": "", "api_url": None})
    assert info.value.parameter == "oauth_token" and "DO_API_TOKEN" in str(info.value)
    transport = do.digitalocean_client({"oauth_token": TOKEN, "api_url": "http://h/v2"}).transport
    assert transport.end_point == "http://h/v2/" and transport.get_timeout() == do.REQUEST_TIMEOUT


@pytest.mark.parametrize(
    "error, kind, parameter, retryable, words",
    [
        (do.DigitalOceanError("bad cert", tls=True, connection=True), UserInputError, "ca_bundle", None, "not trusted"),
        (do.DigitalOceanError("refused", connection=True), ProviderError, None, True, "did not answer (refused) after"),
        (
            do.DigitalOceanError("no", status=401, request_id="r1"),
            UserInputError,
            "oauth_token",
            None,
            "401: no (request",
        ),
        (do.DigitalOceanError("scope", status=403), UserInputError, "oauth_token", None, "may not do this (HTTP 403"),
        (
            do.DigitalOceanError("slow", status=429, error_id="too_many"),
            ProviderError,
            None,
            True,
            "429 too_many: slow",
        ),
        (do.DigitalOceanError("bad region", status=422), UserInputError, "region", None, "422 : bad region"),
        (do.DigitalOceanError("odd", status=422), UserInputError, None, None, "422 : odd"),
        (do.DigitalOceanError("moved", status=301), ProviderError, None, False, "HTTP 301: moved"),
    ],
)
def test_translate_maps_each_failure_to_its_error(error, kind, parameter, retryable, words):
    """Each kind of failure becomes the error type that names what to fix (the parameter)."""
    got = do.translate(error, "Creating", parameters=("region", "size"), retries_note=" after 3 tries")
    assert got.__class__ is kind and words in got.msg and got.what == "Creating"  # exactly that type
    if kind is UserInputError:
        assert got.parameter == parameter
    else:
        assert got.retryable is retryable
