"""The sandbox's DigitalOcean emulator, running in the daemon, driven with python-digitalocean.

Imports are real: the daemon sends HEAD and GET over loopback to a small HTTP server of the
test (or to a sandbox host), streams the body to disk and looks inside. Every test ends with
nothing of DigitalOcean in `sandboxctl resources --json`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "sandbox"))

from digitalocean.baseapi import DataReadError, NotFoundError  # noqa: E402
from nfsandbox.digitalocean.testing import DOSandbox, FileServer, mbr_image, qcow2_image  # noqa: E402

pytestmark = [pytest.mark.sandbox]
GIB = 1024**3


@pytest.fixture(scope="module")
def sandbox(do_sandbox: DOSandbox) -> DOSandbox:
    return do_sandbox


@pytest.fixture
def do(sandbox):
    """The emulator with its defaults; afterwards, proof that nothing of DigitalOcean is left."""
    sandbox.set_faults({"import_delay": 0.5, "transfer_delay": 0.5})
    yield sandbox
    sandbox.set_faults({})
    for image in sandbox.manager().get_my_images():
        image.destroy()
    assert sandbox.leftovers() == []


@pytest.fixture
def files(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    no_head = {"no-head-405.img": 405, "no-head-501.img": 501}
    with FileServer(root, forbidden=("forbidden.qcow2.gz",), no_head=no_head) as server:
        server.root = root
        yield server


def wait_status(image: Any, status: str, timeout: float = 30) -> Any:
    deadline = time.time() + timeout
    while True:
        image.load()
        if image.status == status:
            return image
        assert time.time() < deadline, f"image {image.id} is {image.status} after {timeout}s, wanted {status}"
        time.sleep(0.2)


def test_import_transfer_delete(do, files):
    body = gzip.compress(qcow2_image(2 * GIB))
    (files.root / "nixos.qcow2.gz").write_bytes(body)
    image = do.image(
        name="nixos-sandbox",
        url=files.url("nixos.qcow2.gz"),
        region="fra1",
        distribution="Unknown",
        description="built by the sandbox",
        tags=["nixforge-build-id:it1", "nixforge-pipeline:do"],
    )
    image.create()
    assert image.status == "NEW"
    [listed] = do.do_resources()
    assert (listed["type"], listed["id"], listed["status"]) == ("do_image", image.id, "NEW")
    wait_status(image, "available")
    assert (image.regions, image.size_gigabytes, image.min_disk_size) == (["fra1"], 2.0, 2)
    assert [method for method, _path in files.requests] == ["HEAD", "GET"]  # the daemon fetched it, as DO does
    [listed] = do.do_resources()
    assert listed["sha256"] == hashlib.sha256(body).hexdigest() and listed["format"] == "qcow2"
    assert listed["tags"] == ["nixforge-build-id:it1", "nixforge-pipeline:do"]

    do.set_faults({"import_delay": 0.5, "transfer_delay": 600})  # in progress until the knob is lowered
    action = do.manager().get_action(image.transfer("syd1")["action"]["id"])
    assert action.status == "in-progress"
    do.set_faults({"import_delay": 0.5, "transfer_delay": 0})
    assert action.wait(update_every_seconds=0.2)
    assert wait_status(image, "available").regions == ["fra1", "syd1"]
    assert [i.id for i in do.manager().get_images(private=True)] == [image.id]
    image.destroy()
    with pytest.raises(NotFoundError):
        image.load()


def refusal_cases(files: FileServer) -> dict[str, tuple[str, str]]:
    import socket

    (files.root / "text.qcow2.gz").write_bytes(gzip.compress(b"this is not a disk image\n" * 40))
    (files.root / "forbidden.qcow2.gz").write_bytes(gzip.compress(qcow2_image(GIB)))
    (files.root / "big.img").write_bytes(mbr_image(2 * 1024 * 1024))
    (files.root / "ok.img").write_bytes(mbr_image())
    for name in ("no-head-405.img", "no-head-501.img"):
        (files.root / name).write_bytes(mbr_image())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    return {
        "wrong format inside the gzip": (files.url("text.qcow2.gz"), "We don't support the format"),
        "404": (files.url("nothing.qcow2.gz"), "server answered 404"),
        "403": (files.url("forbidden.qcow2.gz"), "server answered 403"),
        "unreachable": (f"http://127.0.0.1:{closed}/disk.img", "unable to download"),
        "outside the machine": ("http://192.0.2.10/disk.img", "network unreachable"),
        "too large": (files.url("big.img"), "larger than the maximum size"),
        "query string": (files.url("ok.img") + "?Authorization=xyz", "query string"),
        "no HEAD (405)": (files.url("no-head-405.img"), "answered 405"),
        "no HEAD (501)": (files.url("no-head-501.img"), "answered 501"),
    }


def test_every_refusal_is_reported_like_digitalocean_and_leaves_nothing(do, files):
    # refuse_query_urls is on by default, as DigitalOcean reads the file name from the path
    do.set_faults({"import_delay": 0.3, "size_limit": 1024 * 1024})
    images = {}
    for case, (url, _message) in refusal_cases(files).items():
        images[case] = do.image(name=case.replace(" ", "-"), url=url, region="nyc3")
        images[case].create()
        assert images[case].status == "NEW"
    for case, (_url, message) in refusal_cases(files).items():
        image = wait_status(images[case], "deleted")
        assert message in image.error_message, (case, image.error_message)
        assert image.regions == []
    # a server without HEAD got no GET: DigitalOcean stops at the HEAD
    assert [m for m, p in files.requests if p.startswith("/no-head-")] == ["HEAD", "HEAD"]
    assert do.manager().get_my_images() == []
    assert do.do_resources() == []


def test_import_from_a_sandbox_host(do, sandbox_instance):
    """The importer reaches the instance's own network, like DO reaching a public URL."""
    disk = gzip.compress(qcow2_image(GIB))
    userdata = (
        "#cloud-config\nwrite_files:\n"
        f"  - path: /srv/www/disk.qcow2.gz\n    encoding: b64\n    content: {base64.b64encode(disk).decode()}\n"
        "runcmd:\n  - [sh, -c, 'cd /srv/www && nohup python3 -m http.server 8080 >/dev/null 2>&1 &']\n"
    )
    host = sandbox_instance.boot_host(userdata=userdata, owner="pytest-digitalocean")
    url = f"http://{host['ip']}:8080/disk.qcow2.gz"
    try:
        wait_for_url(url)  # runcmd may still be starting the server when boot returns
        image = do.image(name="from-host", url=url, region="lon1")
        image.create()
        assert wait_status(image, "available").regions == ["lon1"]
        [listed] = do.do_resources()
        assert listed["sha256"] == hashlib.sha256(disk).hexdigest()
        image.destroy()
    finally:
        sandbox_instance.stop_host(host["name"])


def wait_for_url(url: str, timeout: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5):  # noqa: S310
                return
        except (urllib.error.URLError, OSError):
            assert time.time() < deadline, f"{url} did not answer within {timeout}s"
            time.sleep(0.5)


def test_paging_through_python_digitalocean(do, files):
    (files.root / "d.img").write_bytes(mbr_image())
    created = []
    for i in range(5):
        image = do.image(name=f"page-{i}", url=files.url("d.img"), region="tor1", tags=[f"group:{i % 2}"])
        image.create()
        created.append(image.id)
    manager = do.manager()
    first = manager.get_data("images/", params={"private": "true", "per_page": 2, "page": 1})
    assert [i["id"] for i in first["images"]] == created[:2] and first["meta"]["total"] == 5
    assert first["links"]["pages"]["next"].startswith(do.endpoint + "/v2/images?")
    # without `page`, the client follows links.pages.next through all pages
    every = manager.get_data("images/", params={"private": "true", "per_page": 2})
    assert [i["id"] for i in every["images"]] == created
    tagged = manager.get_data("images/", params={"tag_name": "group:1"})
    assert [i["id"] for i in tagged["images"]] == created[1::2]


def call_with_retries(fn: Any, attempts: int = 30) -> Any:
    """What the collection's client does for DO: retry 429 and 5xx (python-digitalocean does not)."""
    for attempt in range(attempts):
        try:
            return fn()
        except DataReadError as exc:
            if not any(word in str(exc) for word in ("Rate limit", "unable to give", "temporarily")):
                raise
            time.sleep(0.05 * (attempt + 1) + random.random() * 0.05)
    raise AssertionError("still failing after retries")


def test_faults_fire_and_are_counted(do, files):
    (files.root / "d.qcow2.gz").write_bytes(gzip.compress(qcow2_image(GIB)))
    do.set_faults(
        {"throttle_rate": 0.1, "server_error_rate": 0.05, "unavailable_rate": 0.05, "seed": 11, "import_delay": 0.3}
    )
    image = do.image(name="faulty", url=files.url("d.qcow2.gz"), region="blr1")
    call_with_retries(image.create)
    deadline = time.time() + 60
    while call_with_retries(lambda: image.load() and image.status) != "available":
        assert time.time() < deadline
    for _attempt in range(40):
        call_with_retries(do.manager().get_all_regions)
    served = do.served_faults()
    assert served["429"] > 0 and served["500"] + served["503"] > 0, served
    # a throttled answer looks like DigitalOcean's: error body and rate-limit headers
    do.set_faults({"throttle": 1})
    recorded_from = len(do.exchanges())
    with pytest.raises(DataReadError, match="Rate limit"):
        do.manager().get_all_regions()
    entry = do.exchanges()[recorded_from]
    assert entry["status"] == 429 and entry["response_body"]["id"] == "too_many_requests"
    assert {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"} <= set(entry["response_headers"])
    assert do.served_faults()["429"] == served["429"] + 1
    call_with_retries(image.destroy)


def test_bad_token_and_control_api_fault_validation(do, sandbox_instance):
    with pytest.raises(DataReadError, match="Unable to authenticate"):
        do.manager(token="dop_v1_wrong").get_all_regions()
    with pytest.raises(RuntimeError, match=r"HTTP 400.*0\.\.1"):
        sandbox_instance.set_faults("digitalocean", {"throttle_rate": 5})
