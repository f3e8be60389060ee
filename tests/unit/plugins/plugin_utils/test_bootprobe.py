"""The boot check's helpers: key names, size choice, the SSH ladder and the cost (issue 16)."""

from __future__ import annotations

import datetime
import socket
import subprocess
import threading
from typing import Any

import pytest
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import UTC
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean import _discovery as _discovery_do
from ansible_collections.nixforge.images.plugins.module_utils._digitalocean import _droplets, _keys
from ansible_collections.nixforge.images.plugins.plugin_utils import _bootprobe as probe

NOW = datetime.datetime(2026, 12, 6, 21, 0, 0, tzinfo=UTC)


# -- key names -------------------------------------------------------------------------


@pytest.mark.parametrize("build_id", ["b", "do-20261206-210000-abc123", "a-1-2-3"])
def test_key_name_reads_back_build_id_and_expiry(build_id: str) -> None:
    name = _keys.key_name(build_id, NOW + datetime.timedelta(hours=1))
    assert name == "nixforge-%s-20261206T220000Z" % build_id
    assert _keys.parse_key_name(name) == (build_id, "2026-12-06T22:00:00Z")


@pytest.mark.parametrize(
    "name", ["nixforge-b1-ssh", "my laptop", "nixforge--20261206T220000Z", None, "nixforge-B1-20261206T220000Z"]
)
def test_other_key_names_are_not_ours(name: Any) -> None:
    assert _keys.parse_key_name(name) is None
    assert _keys.key_tags({"name": name}) == {}


class FakeKeys:
    def __init__(self, keys: list[dict[str, Any]], fail_first_post: bool = False) -> None:
        self.keys = keys
        self.fail_first_post = fail_first_post
        self.posts = 0

    def paginate(self, path: str, key: str, what: str, **query: Any) -> list[dict[str, Any]]:
        assert (path, key) == ("account/keys", "ssh_keys")
        return list(self.keys)

    def create(self, path: str, body: dict[str, Any], find: Any, what: str, parameters: Any = ()) -> Any:
        # like DigitalOceanClient.create: after a lost answer, find() before posting again
        self.posts += 1
        created = dict(body, id=100 + self.posts, fingerprint="fp")
        self.keys.append(created)
        if self.fail_first_post:
            existing = find()
            assert existing is not None
            return existing
        return {"ssh_key": created}


def test_build_keys_match_the_build_only() -> None:
    mine = {"id": 1, "name": _keys.key_name("b1", NOW), "public_key": "ssh-ed25519 AAAA x"}
    other = {"id": 2, "name": _keys.key_name("b1-x", NOW), "public_key": "ssh-ed25519 BBBB"}
    laptop = {"id": 3, "name": "laptop", "public_key": "ssh-ed25519 CCCC"}
    assert _keys.build_keys(FakeKeys([mine, other, laptop]), "b1") == [mine]


def test_create_key_after_a_lost_answer_adopts_what_was_made() -> None:
    client = FakeKeys([], fail_first_post=True)
    key = _keys.create_key(client, "nixforge-b1-20261206T220000Z", "ssh-ed25519 AAAA other-comment")
    assert key["id"] == 101 and client.posts == 1
    assert _keys.same_public_key("ssh-ed25519 AAAA a", "ssh-ed25519 AAAA b")
    assert not _keys.same_public_key("ssh-ed25519 AAAA", "ssh-ed25519 BBBB")


def test_keys_are_found_by_the_reaper_with_the_expiry_of_their_name() -> None:
    class Client:
        def list_images(self) -> list[Any]:
            return []

        def paginate(self, path: str, key: str, what: str, **query: Any) -> list[Any]:
            if path == "account/keys":
                return [
                    {"id": 7, "name": _keys.key_name("gone", NOW - datetime.timedelta(minutes=1))},
                    {"id": 8, "name": _keys.key_name("live", NOW + datetime.timedelta(minutes=1))},
                    {"id": 9, "name": "laptop"},
                ]
            return []

    builds = {b["build_id"]: b for b in _discovery_do.list_builds(Client(), now=NOW)}
    assert sorted(builds) == ["gone", "live"]
    assert builds["gone"]["expired"] and not builds["live"]["expired"]
    assert builds["gone"]["resources"][0]["type"] == "ssh_key"
    assert [b["build_id"] for b in _discovery_do.list_builds(Client(), expired=True, now=NOW)] == ["gone"]


# -- sizes -----------------------------------------------------------------------------

SIZES = [
    {"slug": "big", "disk": 80, "price_hourly": 0.03571, "regions": ["nyc3"], "available": True},
    {"slug": "tiny", "disk": 10, "price_hourly": 0.00595, "regions": ["nyc3"], "available": True},
    {"slug": "small", "disk": 25, "price_hourly": 0.00893, "regions": ["nyc3", "ams3"], "available": True},
    {"slug": "gone", "disk": 25, "price_hourly": 0.001, "regions": ["nyc3"], "available": False},
]


@pytest.mark.parametrize(
    ("region", "min_disk", "slug"),
    [("nyc3", 0, "tiny"), ("nyc3", 11, "small"), ("ams3", 1, "small"), ("nyc3", 26, "big")],
)
def test_cheapest_size_that_fits(region: str, min_disk: int, slug: str) -> None:
    assert _droplets.cheapest_size(SIZES, region, min_disk)["slug"] == slug


def test_no_size_fits_names_the_parameter() -> None:
    with pytest.raises(UserInputError) as info:
        _droplets.cheapest_size(SIZES, "nyc3", 500)
    assert info.value.parameter == "size" and "500 GB" in str(info.value)


def test_sizes_fall_back_to_the_table_without_a_size_list() -> None:
    class NoSizes:
        def call(self, path: str, **kw: Any) -> Any:
            assert path == "sizes" and kw["missing_ok"]
            return None  # 404

    sizes = _droplets.list_sizes(NoSizes())
    assert _droplets.cheapest_size(sizes, "nyc3", 20)["slug"] == "s-1vcpu-1gb"
    assert _droplets.size_price(sizes, "s-1vcpu-1gb") == pytest.approx(0.00893)


def test_droplet_body_and_view() -> None:
    params = {"name": "n", "region": "nyc3", "image": "7000001", "user_data": "#cloud-config\n"}
    body = _droplets.droplet_body(params, ["nixforge-build-id:b1"], ["5"], "s-1vcpu-1gb")
    assert body["image"] == 7000001 and body["ssh_keys"] == ["5"] and body["user_data"] == "#cloud-config\n"
    assert _droplets.droplet_body(dict(params, image="debian-12-x64"), [], [], "x")["image"] == "debian-12-x64"
    view = _droplets.droplet_view(
        {
            "id": 9,
            "status": "active",
            "region": {"slug": "nyc3"},
            "size_slug": "s-1vcpu-1gb",
            "networks": {
                "v4": [{"type": "private", "ip_address": "10.0.0.2"}, {"type": "public", "ip_address": "192.0.2.9"}]
            },
        },
        price_hourly=0.5,
    )
    assert (view["id"], view["region"], view["public_ipv4"], view["price_hourly"]) == ("9", "nyc3", "192.0.2.9", 0.5)


# -- the ladder ------------------------------------------------------------------------


def test_ladder_says_how_far_it_got() -> None:
    ladder = probe.Ladder()
    assert "never got a public address" in ladder.describe()
    ladder.address = "192.0.2.9"
    ladder.reach("address")
    assert "192.0.2.9" in ladder.describe() and "never accepted" in ladder.describe()
    ladder.reach("tcp")
    assert "no SSH server ever greeted" in ladder.describe()
    ladder.banner = "SSH-2.0-OpenSSH_9.2"
    ladder.reach("banner")
    ladder.last_error = "Permission denied (publickey)."
    text = ladder.describe()
    assert "SSH-2.0-OpenSSH_9.2" in text and "login as root" in text and "Permission denied" in text
    ladder.reach("tcp")  # never goes back down
    assert ladder.reached == "banner"


def serve_once(payload: bytes | None) -> tuple[int, threading.Thread]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer() -> None:
        conn, _peer = server.accept()
        with conn:
            if payload:
                conn.sendall(payload)
        server.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return server.getsockname()[1], thread


def test_tcp_and_banner_on_real_sockets() -> None:
    port, thread = serve_once(b"SSH-2.0-test_1.0\r\n")
    assert probe.tcp_and_banner("127.0.0.1", 5, port) == (True, "SSH-2.0-test_1.0")
    thread.join()
    port, thread = serve_once(None)  # accepts and closes: QEMU's port forward before sshd listens
    assert probe.tcp_and_banner("127.0.0.1", 5, port) == (True, None)
    thread.join()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    free = closed.getsockname()[1]
    closed.close()
    assert probe.tcp_and_banner("127.0.0.1", 5, free) == (False, None)


def test_ssh_keeps_host_key_checking_on_and_uses_only_the_build_key() -> None:
    argv = probe.ssh_argv("192.0.2.9", "/k/id", "/k/known_hosts", "cat /etc/nixforge-image", 10)
    text = " ".join(argv)
    for option in (
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/k/known_hosts",
        "IdentitiesOnly=yes",
        "BatchMode=yes",
    ):
        assert option in text
    assert argv[-3:] == ["root@192.0.2.9", "--", "cat /etc/nixforge-image"]
    assert probe.known_hosts_line("192.0.2.9", "ssh-ed25519 AAAA comment") == "192.0.2.9 ssh-ed25519 AAAA\n"


def test_run_ssh_reports_a_timeout_as_124() -> None:
    def slow(argv: list[str], **kw: Any) -> Any:
        raise subprocess.TimeoutExpired(argv, kw["timeout"])

    assert probe.run_ssh(["ssh"], 3, run=slow)[0] == 124
    done = probe.run_ssh(["sh", "-c", "echo out; echo err >&2; exit 3"], 30)
    assert done == (3, "out\n", "err\n")
    assert probe.last_line("a\n\nb\n") == "b"


# -- the cost --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "seconds", "billed", "cost"),
    [
        (0.00893, 10, 60, 0.01),  # minimum 60 s, and the USD 0.01 minimum charge
        (0.00893, 120.2, 121, 0.01),
        (3.6, 100, 100, 0.1),  # per second above the minimum
        (3.6, 30, 60, 0.06),
    ],
)
def test_cost_is_per_second_with_minimums(price: float, seconds: float, billed: int, cost: float) -> None:
    assert probe.billed_seconds(seconds) == billed
    assert probe.check_cost(price, seconds) == pytest.approx(cost)


def test_summary_numbers() -> None:
    numbers = probe.summary_numbers(100.0, 141.26, 158.0, 0.00893)
    assert numbers == {
        "boot_seconds": 41.3,
        "create_seconds": None,
        "droplet_seconds": 58.0,
        "billed_seconds": 60,
        "price_per_hour": 0.00893,
        "cost": 0.01,
    }
    assert probe.summary_numbers(100.0, None, 700.0, None)["boot_seconds"] is None
    # the boot counts from the droplet being active; billing from the create request
    later = probe.summary_numbers(100.0, 141.26, 158.0, 0.00893, active=112.0)
    assert later["boot_seconds"] == 29.3 and later["create_seconds"] == 12.0 and later["droplet_seconds"] == 58.0
    assert probe.check_cost(None, 5) is None
