"""The DigitalOcean emulator in-process (its HTTP front on loopback), driven with the real
python-digitalocean client, plus raw requests where the client hides the answer. No
sandbox needed; tests/integration/test_sandbox_digitalocean.py runs it inside the daemon."""

from __future__ import annotations

import gzip
import hashlib
import re
import sys
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

import digitalocean
from digitalocean.baseapi import DataReadError, NotFoundError
from nfsandbox.digitalocean.api import DigitalOceanAPI
from nfsandbox.digitalocean.http import DigitalOceanHTTPServer
from nfsandbox.digitalocean.testing import FileServer, mbr_image, qcow2_image
from nfsandbox.testing import HANG_GUARD
from nfsandbox.tls import CertificateAuthority

GIB = 1024**3


class Emulator:
    def __init__(self, api: DigitalOceanAPI, files: FileServer, root: Path) -> None:
        self.api, self.files, self.root = api, files, root
        self.url = api.base_url + "/v2/"
        # one connection for the raw calls: a TLS handshake and a CA bundle load each cost more
        # than the emulator's answer
        self.session = requests.Session()

    def manager(self, token: str | None = None):
        return digitalocean.Manager(token=token or self.api.token, end_point=self.url)

    def image(self, **kw):
        return digitalocean.Image(token=self.api.token, end_point=self.url, **kw)

    def raw(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.api.token}"}
        return self.session.request(method, self.api.base_url + path, headers=headers, timeout=10, **kw)

    def serve(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return self.files.url(name)

    def wait(self, image, status: str, timeout: float = HANG_GUARD):
        deadline = time.time() + timeout
        while True:
            image.load()
            if image.status == status:
                return image
            assert time.time() < deadline, f"image {image.id} stayed {image.status}, wanted {status}"
            time.sleep(0.1)


@pytest.fixture
def do(tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    api = DigitalOceanAPI(work_dir=tmp_path / "work")
    ca = CertificateAuthority(tmp_path)
    server = DigitalOceanHTTPServer(api, ca.server_context("127.0.0.1"))
    server.start()
    # HTTPS only: python-digitalocean (requests) trusts the emulator through the bundle
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.bundle))
    monkeypatch.setenv("DIGITALOCEAN_END_POINT", api.base_url + "/v2/")
    api.set_faults({"import_delay": 0.3, "transfer_delay": 0.3})
    with FileServer(root, forbidden=("forbidden.img",)) as files:
        yield Emulator(api, files, root)
    server.stop()
    api.shutdown()


def test_account_and_regions(do):
    assert do.manager().get_account().status == "active"
    regions = {r.slug: r for r in do.manager().get_all_regions()}
    for slug in ("nyc1", "nyc3", "sfo3", "ams3", "fra1", "lon1", "sgp1", "tor1", "blr1", "syd1"):
        assert regions[slug].available and "image_transfer" in regions[slug].features


def test_bearer_token_is_required(do):
    answer = do.raw("GET", "/v2/account", token="wrong")
    assert answer.status_code == 401
    assert answer.json()["id"] == "unauthorized" and answer.json()["request_id"]
    assert answer.headers["ratelimit-limit"] == "5000"
    with pytest.raises(DataReadError, match="Unable to authenticate you"):
        do.manager(token="wrong").get_all_regions()
    assert do.raw("GET", "/v2/account", token="caf\u00e9").status_code == 401
    no_header = requests.get(do.api.base_url + "/v2/account", timeout=10)
    assert no_header.status_code == 401 and no_header.json()["id"] == "unauthorized"


def test_import_qcow2_gz_goes_from_new_to_available_with_its_real_size(do):
    body = gzip.compress(qcow2_image(3 * GIB))
    url = do.serve("nixos.qcow2.gz", body)
    image = do.image(name="nixos", url=url, region="nyc3", distribution="Unknown", tags=["nixforge-build-id:b1"])
    image.create()
    assert image.status == "NEW" and image.regions == [] and image.type == "custom"
    do.wait(image, "available")
    assert image.regions == ["nyc3"] and image.size_gigabytes == 3.0 and image.min_disk_size == 3
    assert image.error_message == "" and image.tags == ["nixforge-build-id:b1"]
    [res] = do.api.resources()
    assert res["sha256"] == hashlib.sha256(body).hexdigest() and res["type"] == "do_image"
    assert [method for method, _path in do.files.requests] == ["HEAD", "GET"]
    actions = do.raw("GET", f"/v2/images/{image.id}/actions").json()["actions"]
    assert [(a["type"], a["status"]) for a in actions] == [("import", "completed")]


def test_image_stays_new_for_the_import_delay(do):
    delay = 1.5
    do.api.set_faults({"import_delay": delay})
    image = do.image(name="slow", url=do.serve("d.img", mbr_image()), region="ams3")
    started = time.monotonic()
    image.create()
    image.load()
    if time.monotonic() - started < delay:  # read within the delay (a stalled machine reads later)
        assert image.status == "NEW"
    do.wait(image, "available")
    assert time.monotonic() - started >= delay  # never available sooner


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("text.gz", gzip.compress(b"not a disk\n" * 50), "We don't support the format"),
        ("missing.img", None, "unable to download.*404"),
        ("forbidden.img", mbr_image(), "unable to download.*403"),
        ("broken.gz", gzip.compress(mbr_image())[:-30], "problem decompressing"),
    ],
    ids=["format", "404", "403", "corrupt"],
)
def test_refused_import_is_deleted_with_error_message(do, name, data, message):
    url = do.serve(name, data) if data is not None else do.files.url(name)
    image = do.image(name="bad", url=url, region="nyc3")
    image.create()
    do.wait(image, "deleted")
    assert re.search(message, image.error_message)
    assert image.id not in [i.id for i in do.manager().get_my_images()]
    actions = do.raw("GET", f"/v2/images/{image.id}/actions").json()["actions"]
    assert [(a["type"], a["status"]) for a in actions] == [("import", "errored")]
    assert do.api.resources() == []


def test_failed_image_disappears_after_the_grace_period(do):
    do.api.set_faults({"import_delay": 0.1, "failed_grace": 0.5})
    image = do.image(name="bad", url=do.files.url("nothing.img"), region="nyc3")
    image.create()
    do.wait(image, "deleted")
    time.sleep(0.7)
    with pytest.raises(NotFoundError):
        image.load()


def test_size_limit_knob(do):
    do.api.set_faults({"import_delay": 0.1, "size_limit": 512 * 1024})
    image = do.image(name="big", url=do.serve("big.img", mbr_image(1024 * 1024)), region="nyc3")
    image.create()
    do.wait(image, "deleted")
    assert "larger than the maximum size" in image.error_message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"url": "http://127.0.0.1/x", "region": "nyc3"}, "name is required"),
        ({"name": "n", "region": "nyc3"}, "url is required"),
        ({"name": "n", "url": "http://127.0.0.1/x"}, "region is required"),
        ({"name": "n", "url": "http://127.0.0.1/x", "region": "mars1"}, "invalid region"),
        ({"name": "n", "url": "http://127.0.0.1/x", "region": "nyc2"}, "not available"),
        ({"name": "n", "url": "file:///etc/passwd", "region": "nyc3"}, "valid http or https URL"),
        ({"name": "n", "url": "http://127.0.0.1/x", "region": "nyc3", "tags": ["a=b"]}, "tag name"),
    ],
)
def test_create_validation_answers_422(do, body, message):
    answer = do.raw("POST", "/v2/images", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["id"] == "unprocessable_entity" and message in answer.json()["message"]
    assert do.api.resources() == []


def test_unknown_distribution_is_stored_as_unknown(do):
    image = do.image(name="d", url=do.serve("d.img", mbr_image()), region="nyc3", distribution="NixOS")
    image.create()
    assert image.distribution == "Unknown"
    image.destroy()


def test_get_update_delete_with_and_without_trailing_slash(do):
    image = do.image(name="one", url=do.serve("d.img", mbr_image()), region="nyc3", description="first")
    image.create()
    for suffix in ("", "/"):
        answer = do.raw("GET", f"/v2/images/{image.id}{suffix}")
        assert answer.status_code == 200 and answer.json()["image"]["name"] == "one"
    image.rename("two")
    assert do.raw("PUT", f"/v2/images/{image.id}/", json={"description": "second"}).json()["image"]["name"] == "two"
    assert image.destroy() is True  # python-digitalocean deletes images/<id>/
    assert do.raw("DELETE", f"/v2/images/{image.id}").status_code == 404
    with pytest.raises(NotFoundError):
        image.load()
    time.sleep(0.5)  # the import thread finishing later must not bring it back
    assert do.api.resources() == []


def test_transfer_adds_the_region_after_the_action_completes(do):
    do.api.set_faults({"import_delay": 60, "transfer_delay": 0.3})  # NEW for as long as the test needs
    image = do.image(name="t", url=do.serve("d.img", mbr_image()), region="nyc3")
    image.create()
    early = do.raw("POST", f"/v2/images/{image.id}/actions", json={"type": "transfer", "region": "ams3"})
    assert early.status_code == 422  # still NEW
    do.api.set_faults({"import_delay": 0, "transfer_delay": 0.3})  # the import's wait ends
    do.wait(image, "available", timeout=120)
    action = image.transfer("ams3")["action"]
    assert action["status"] == "in-progress" and action["region_slug"] == "ams3"
    same = do.raw("GET", f"/v2/images/{image.id}/actions/{action['id']}").json()["action"]
    assert same["id"] == action["id"]
    loaded = do.manager().get_action(action["id"])
    assert loaded.wait(update_every_seconds=0.1)
    image.load()
    assert image.regions == ["nyc3", "ams3"]
    again = do.raw("POST", f"/v2/images/{image.id}/actions/", json={"type": "transfer", "region": "ams3"})
    assert again.status_code == 422 and "already available" in again.json()["message"]
    image.destroy()


def test_paging_filters_and_links(do):
    for i in range(5):
        do.image(name=f"p{i}", url=do.serve(f"p{i}.img", mbr_image()), region="nyc3", tags=[f"t{i % 2}"]).create()
    mine = do.raw("GET", "/v2/images", params={"private": "true", "per_page": 2, "page": 1}).json()
    assert len(mine["images"]) == 2 and mine["meta"]["total"] == 5
    assert set(mine["links"]["pages"]) == {"last", "next"} and "private=true" in mine["links"]["pages"]["next"]
    last = do.raw("GET", "/v2/images", params={"private": "true", "per_page": 2, "page": 3}).json()
    assert len(last["images"]) == 1 and set(last["links"]["pages"]) == {"first", "prev"}
    # python-digitalocean follows links.pages.next itself
    manager = do.manager()
    assert len(manager.get_data("images/", params={"private": "true", "per_page": 2})["images"]) == 5
    assert len(manager.get_my_images()) == 5
    assert all(i.public for i in manager.get_distro_images())
    assert [i["name"] for i in do.raw("GET", "/v2/images?tag_name=t1").json()["images"]] == ["p1", "p3"]
    assert len(manager.get_all_images()) == 5 + len(manager.get_global_images())


def test_tags(do):
    image = do.image(name="tagged", url=do.serve("d.img", mbr_image()), region="nyc3", tags=["keep", "x:y"])
    image.create()
    names = [t.name for t in do.manager().get_all_tags()]
    assert names == ["keep", "x:y"]
    tag = digitalocean.Tag(token=do.api.token, end_point=do.url, name="extra")
    tag.create()
    assert do.raw("GET", "/v2/tags/keep").json()["tag"]["resources"]["images"]["count"] == 1
    assert do.raw("POST", "/v2/tags", json={"name": "bad=tag"}).status_code == 400
    assert tag.delete() is True
    do.raw("DELETE", "/v2/tags/keep")
    image.load()
    assert image.tags == ["x:y"]


def test_droplets_list_is_empty(do):
    assert do.manager().get_all_droplets(tag_name="anything") == []


def test_fault_rates_and_counters(do):
    do.api.set_faults({"throttle_rate": 0.3, "server_error_rate": 0.2, "unavailable_rate": 0.2, "seed": 3})
    statuses = [do.raw("GET", "/v2/regions").status_code for _attempt in range(200)]
    served = do.api.faults.snapshot()["served"]
    assert served == {
        "429": statuses.count(429),
        "500": statuses.count(500),
        "503": statuses.count(503),
        "lost_answer": 0,
        "ratelimited": 0,
    }
    for status, share in ((429, 0.3), (500, 0.2), (503, 0.2)):
        assert abs(statuses.count(status) / 200 - share) < 0.12
    failed = do.raw("GET", "/v2/regions")
    while failed.status_code == 200:
        failed = do.raw("GET", "/v2/regions")
    assert set(failed.json()) == {"id", "message", "request_id"} and "ratelimit-remaining" in failed.headers


def test_per_route_faults_and_counters(do):
    do.api.set_faults({"routes": {r"^POST /v2/images$": {"unavailable_rate": 1.0}}, "throttle": 1})
    assert do.raw("GET", "/v2/account").status_code == 429  # the counter fires first, on any route
    assert do.raw("GET", "/v2/account").status_code == 200
    with pytest.raises(DataReadError, match="temporarily unavailable"):
        do.image(name="x", url=do.files.url("x.img"), region="nyc3").create()
    snap = do.api.faults.snapshot()
    assert snap["served"] == {"429": 1, "500": 0, "503": 1, "lost_answer": 0, "ratelimited": 0}
    assert snap["served_by_route"]["POST /v2/images"] == {"503": 1}
    with pytest.raises(ValueError, match="unknown digitalocean fault knob"):
        do.api.set_faults({"throttle_ratio": 1})
    with pytest.raises(ValueError, match=r"0\.\.1"):
        do.api.set_faults({"throttle_rate": 2})


def test_lost_answer_applies_the_request_and_answers_500(do):
    do.api.set_faults({"lost_answer": 1, "match": "^POST /v2/images$", "import_delay": 0.1})
    assert do.raw("GET", "/v2/account").status_code == 200  # not matched: untouched
    answer = do.raw(
        "POST", "/v2/images", json={"name": "lost", "url": do.serve("d.img", mbr_image()), "region": "nyc3"}
    )
    assert answer.status_code == 500 and answer.json()["id"] == "server_error"
    [image] = do.manager().get_my_images()  # ... but the image was created
    assert image.name == "lost"
    assert do.api.faults.snapshot()["served"]["lost_answer"] == 1
    do.api.set_faults({"lost_answer_rate": 1.0, "match": "^DELETE "})
    assert do.raw("DELETE", f"/v2/images/{image.id}").status_code == 500
    assert do.api.resources() == []


def test_rate_limit_budget_and_headers(do):
    do.api.set_faults({"ratelimit_limit": 3})
    answers = [do.raw("GET", "/v2/account") for _attempt in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert answers[3].json()["id"] == "too_many_requests"
    assert int(answers[0].headers["ratelimit-reset"]) > time.time()
    # the hourly budget's 429 says when the oldest request expires
    assert 3500 < int(answers[3].headers["retry-after"]) <= 3600
    assert do.api.faults.snapshot()["served"]["ratelimited"] == 1


def test_the_burst_limit_answers_429_with_retry_after_and_frees_as_requests_expire(do, monkeypatch):
    """250 a minute on DigitalOcean; here 2 in 10 s: each request counts for its own window.
    The emulator's clock is the test's, so nothing depends on how fast requests go."""
    import nfsandbox.digitalocean.api as api_module

    clock = [time.time()]
    monkeypatch.setattr(api_module, "now", lambda: clock[0])
    do.api.set_faults({"ratelimit_burst": 2, "ratelimit_burst_window": 10.0})
    first = do.raw("GET", "/v2/account")
    clock[0] += 4
    second, third = (do.raw("GET", "/v2/account") for _attempt in range(2))
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    # the oldest counted request expires 10 s after it was made: 6 s from now
    assert third.headers["ratelimit-remaining"] == "0" and third.headers["retry-after"] == "6"
    assert third.headers["ratelimit-limit"] == "5000"  # the hourly budget is not used up
    assert all(h in a.headers for a in (first, third) for h in ("ratelimit-limit", "ratelimit-reset"))
    clock[0] += 6  # what the answer asked for
    assert do.raw("GET", "/v2/account").status_code == 200
    assert do.raw("GET", "/v2/account").status_code == 429  # the second request still counts


def test_a_throttle_fault_carries_retry_after(do):
    do.api.set_faults({"throttle": 1})
    answer = do.raw("GET", "/v2/account")
    assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
    assert "ratelimit-remaining" in answer.headers


def test_reset_forgets_everything(do):
    do.image(name="r", url=do.serve("d.img", mbr_image()), region="nyc3").create()
    do.api.set_faults({"throttle_rate": 1.0})
    do.api.reset()
    assert do.api.resources() == [] and do.raw("GET", "/v2/tags").json()["tags"] == []


def test_provider_contract(tmp_path, monkeypatch):
    """What the daemon sees: start() publishes the end point and token, faults round-trip,
    resources() lists live images, stop() removes the download folder."""
    import ipaddress
    from types import SimpleNamespace

    from nfsandbox.digitalocean import Provider

    instance = SimpleNamespace(work_dir=tmp_path / "var", network=ipaddress.ip_network("10.213.9.0/24"))
    ca = CertificateAuthority(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.bundle))
    provider = Provider(SimpleNamespace(instance=instance, port=lambda name: 0, ca=ca))
    published = provider.start()
    try:
        assert set(published) == {
            "digitalocean_endpoint",
            "DIGITALOCEAN_TOKEN",
            "DIGITALOCEAN_API_URL",
            "DIGITALOCEAN_END_POINT",
            "DIGITALOCEAN_CA_BUNDLE",
        }
        assert published["DIGITALOCEAN_API_URL"] == published["digitalocean_endpoint"] + "/v2/"
        assert published["digitalocean_endpoint"].startswith("https://")
        assert published["DIGITALOCEAN_CA_BUNDLE"] == str(ca.bundle)
        with pytest.raises(requests.exceptions.SSLError):  # HTTPS only, and only with the sandbox's CA
            requests.get(published["DIGITALOCEAN_API_URL"] + "account", verify=requests.certs.where(), timeout=10)
        assert provider.api.networks == ["10.213.9.0/24"]
        provider.set_faults({"import_delay": 0, "throttle": 1})
        monkeypatch.setenv("DIGITALOCEAN_END_POINT", published["DIGITALOCEAN_API_URL"])
        manager = digitalocean.Manager(
            token=published["DIGITALOCEAN_TOKEN"], end_point=published["DIGITALOCEAN_API_URL"]
        )
        with pytest.raises(DataReadError, match="Rate limit"):
            manager.get_account()
        assert provider.get_faults()["served"]["429"] == 1 and provider.get_faults()["throttle"] == 0
        with pytest.raises(ValueError, match="unknown digitalocean fault knob"):
            provider.set_faults({"nope": 1})
        root = tmp_path / "www"
        root.mkdir()
        (root / "d.img").write_bytes(mbr_image())
        with FileServer(root) as files:
            image = digitalocean.Image(
                token=published["DIGITALOCEAN_TOKEN"],
                end_point=published["DIGITALOCEAN_API_URL"],
                name="p",
                url=files.url("d.img"),
                region="sgp1",
            )
            image.create()
            assert [r["id"] for r in provider.resources()] == [image.id]
            provider.reset()
            assert provider.resources() == []
    finally:
        provider.stop()
    assert not (tmp_path / "var" / "digitalocean").exists()
