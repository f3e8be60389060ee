"""The builders inventory plugin with discovery replaced by fixed records (no API).

The controller-side imports happen inside a module-scoped fixture and the module_utils
"running on the controller" flag is restored afterwards: once set, warnings of module
unit tests elsewhere go to the display instead of the module's result.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from ansible.module_utils import _internal as module_utils_internal
from ansible_collections.nixforge.images.plugins.module_utils._base._discovery import builder_record

NOW = datetime.datetime.now(datetime.timezone.utc)
LATER = (NOW + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
EARLIER = (NOW - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeHostKeyForTests0000000000000000000000"


builders: Any = None


@pytest.fixture(scope="module", autouse=True)
def controller() -> Iterator[None]:
    global builders
    was = module_utils_internal.is_controller
    from ansible_collections.nixforge.images.plugins.inventory import builders as plugin_module

    builders = plugin_module
    yield
    module_utils_internal.is_controller = was


def new_plugin() -> Any:
    """The plugin with its documented options registered, as Ansible's plugin loader does."""
    from ansible import constants as C
    from ansible.plugins.loader import fragment_loader
    from ansible.utils.plugin_docs import add_fragments

    doc = yaml.safe_load(builders.DOCUMENTATION)
    add_fragments(doc, builders.__file__, fragment_loader=fragment_loader)
    plugin = builders.InventoryModule()
    plugin._load_name = builders.InventoryModule.NAME
    C.config.initialize_plugin_configuration_definitions("inventory", plugin._load_name, doc["options"])
    return plugin


def record(build: str, provider: str = "ec2", expires: str = LATER, pipeline: str = "sd-aarch64") -> dict[str, Any]:
    tags = {"nixforge-build-id": build, "nixforge-pipeline": pipeline, "nixforge-expires-at": expires}
    return builder_record(
        provider,
        "id-" + build,
        "n",
        tags,
        public_ipv4="192.0.2.%d" % len(build),
        architecture="arm64",
        ssh_user="admin",
    )


RECORDS = [record("b1"), record("b2", "metal", EARLIER, "do-image")]


class Harness:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, records: list[dict[str, Any]]) -> None:
        self.tmp = tmp
        self.calls = 0
        self.records = records

        def discover(plugin: Any) -> list[dict[str, Any]]:
            self.calls += 1
            self.seen_token = plugin._opt("metal_auth_token")
            return [dict(r) for r in self.records]

        monkeypatch.setattr(builders.InventoryModule, "_discover", discover)

    def parse(self, config: str, cache: bool = True) -> Any:
        from ansible.inventory.data import InventoryData
        from ansible.parsing.dataloader import DataLoader
        from ansible.template import Templar

        path = self.tmp / "nixforge.builders.yml"
        path.write_text(config)
        plugin = new_plugin()
        assert plugin.verify_file(str(path))
        inventory = InventoryData()
        loader = DataLoader()
        plugin.templar = Templar(loader=loader)
        plugin.parse(inventory, loader, str(path), cache=cache)
        if plugin.get_option("cache"):
            plugin.update_cache_if_changed()  # what the InventoryManager does after parse()
        return inventory


BASE = """
plugin: nixforge.images.builders
known_hosts_dir: {tmp}/kh
state_dirs: [{tmp}/state]
"""


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    return Harness(tmp_path, monkeypatch, RECORDS)


def config(tmp: Path, extra: str = "") -> str:
    return BASE.format(tmp=tmp) + extra


def test_hosts_groups_and_hostvars(harness: Harness, tmp_path: Path) -> None:
    extra = """
keyed_groups:
  - key: nixforge_pipeline
    prefix: pipeline
compose:
  nixforge_label: nixforge_build_id ~ '@' ~ nixforge_provider
groups:
  arm: nixforge_architecture == 'aarch64'
"""
    inv = harness.parse(config(tmp_path, extra))
    assert set(inv.hosts) == {"nixforge-builder-b1", "nixforge-builder-b2"}
    groups = {name: {h.name for h in g.get_hosts()} for name, g in inv.groups.items()}
    assert groups["nixforge_expired"] == {"nixforge-builder-b2"}
    assert groups["nixforge_live"] == {"nixforge-builder-b1"}
    assert groups["nixforge_ec2"] == {"nixforge-builder-b1"}
    assert groups["pipeline_do_image"] == {"nixforge-builder-b2"}
    assert groups["arm"] == {"nixforge-builder-b1", "nixforge-builder-b2"}
    hv = inv.get_host("nixforge-builder-b1").vars
    assert hv["nixforge_label"] == "b1@ec2" and hv["ansible_host"] == "192.0.2.2"
    assert hv["nixforge_expired"] is False and hv["ansible_user"] == "admin"
    assert "ansible_ssh_common_args" not in hv  # no key known: nothing is pinned, ssh refuses


def test_expired_filter(harness: Harness, tmp_path: Path) -> None:
    inv = harness.parse(config(tmp_path, "expired: true\n"))
    assert set(inv.hosts) == {"nixforge-builder-b2"}


def test_pinned_key_from_the_state_dir(harness: Harness, tmp_path: Path) -> None:
    state = tmp_path / "state" / "b1"
    state.mkdir(parents=True)
    (state / "known_hosts").write_text("192.0.2.2 %s\n" % HOST_KEY)
    (state / "id_ed25519").write_text("key")
    hv = harness.parse(config(tmp_path)).get_host("nixforge-builder-b1").vars
    known = Path(hv["nixforge_known_hosts_file"])
    assert known.read_text() == "192.0.2.2 %s\n" % HOST_KEY
    assert known.parent == tmp_path / "kh"
    assert "-o UserKnownHostsFile=%s" % known in hv["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in hv["ansible_ssh_common_args"]
    assert hv["ansible_ssh_private_key_file"] == str(state / "id_ed25519")
    assert hv["nixforge_host_public_key"] == HOST_KEY


def test_host_public_keys_option_wins(harness: Harness, tmp_path: Path) -> None:
    other = "ssh-ed25519 AAAAOther"
    inv = harness.parse(config(tmp_path, "host_public_keys:\n  b1: '%s b1-host'\n" % other))
    assert inv.get_host("nixforge-builder-b1").vars["nixforge_host_public_key"] == other


def test_cache_spares_discovery(harness: Harness, tmp_path: Path) -> None:
    extra = "cache: true\ncache_plugin: jsonfile\ncache_connection: %s/cache\n" % tmp_path
    harness.parse(config(tmp_path, extra), cache=False)  # like --flush-cache: asks, then stores
    assert harness.calls == 1
    inv = harness.parse(config(tmp_path, extra), cache=True)
    assert harness.calls == 1 and "nixforge-builder-b1" in inv.hosts
    harness.parse(config(tmp_path, extra), cache=False)
    assert harness.calls == 2


def test_expiry_is_judged_at_read_time_not_cache_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    soon = record("b3", expires=(NOW + datetime.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    harness = Harness(tmp_path, monkeypatch, [soon])
    extra = "cache: true\ncache_plugin: jsonfile\ncache_connection: %s/cache\n" % tmp_path
    harness.parse(config(tmp_path, extra), cache=False)
    monkeypatch.setattr(builders, "utcnow", lambda: NOW + datetime.timedelta(minutes=5))
    inv = harness.parse(config(tmp_path, extra), cache=True)
    assert harness.calls == 1
    assert inv.get_host("nixforge-builder-b3").vars["nixforge_expired"] is True


def test_auth_options_are_templated(harness: Harness, tmp_path: Path) -> None:
    harness.parse(config(tmp_path, "metal_auth_token: \"{{ 'from-' ~ 'a-template' }}\"\n"))
    assert harness.seen_token == "from-a-template"


def test_two_machines_of_one_build_both_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    harness = Harness(tmp_path, monkeypatch, [record("b1"), dict(record("b1"), id="id-second")])
    inv = harness.parse(config(tmp_path))
    assert set(inv.hosts) == {"nixforge-builder-b1", "nixforge-builder-b1-id-second"}


def test_verify_file_wants_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text("plugin: nixforge.images.builders\n")
    assert not new_plugin().verify_file(str(path))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (HOST_KEY + " comment\n", HOST_KEY),
        ("[192.0.2.1]:2222 " + HOST_KEY + "\n", HOST_KEY),
        ("garbage\n", None),
    ],
)
def test_public_key_of(text: str, key: str | None) -> None:
    assert builders.public_key_of(text) == key


def test_providers_without_credentials_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("METAL_AUTH_TOKEN", "PACKET_AUTH_TOKEN", "DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    warnings: list[str] = []
    monkeypatch.setattr(builders.display, "warning", warnings.append)
    from ansible.inventory.data import InventoryData
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    path = tmp_path / "nixforge.builders.yml"
    path.write_text(config(tmp_path))
    plugin = new_plugin()
    loader = DataLoader()
    plugin.templar = Templar(loader=loader)
    inventory = InventoryData()
    plugin.parse(inventory, loader, str(path), cache=False)
    assert list(inventory.hosts) == []
    assert len(warnings) == 3
    assert any("AWS_REGION" in w for w in warnings) and any("DIGITALOCEAN_TOKEN" in w for w in warnings)
