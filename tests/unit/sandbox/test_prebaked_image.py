"""The pre-baked builder AMIs of the sandbox's EC2 and the base image variant they boot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sandbox"))

from nfsandbox.ec2 import catalog
from nfsandbox.hosts import rootfs


def test_prebaked_amis_boot_the_nix_variant_of_their_release() -> None:
    names = {a["name"]: a for a in catalog.prebaked_amis()}
    assert {a["architecture"] for a in names.values()} == {"x86_64", "arm64"}
    for name, ami in names.items():
        assert name.startswith("nixforge-builder-debian-13-") and ami["owner_id"] == catalog.PREBAKED_OWNER
        assert catalog.suite_of_image_name(name) == "trixie+nix"
    # Debian's own images keep their plain suite; other images map to none
    assert catalog.suite_of_image_name("debian-13-arm64-20261020-2622") == "trixie"
    assert catalog.suite_of_image_name("nixforge-builder-ubuntu-24-amd64-1") is None
    assert catalog.suite_of_image_name("debian-99-amd64-1-1") is None
    # one catalogue for moto, ids unique
    ids = [a["ami_id"] for a in catalog.amis()]
    assert len(ids) == len(set(ids)) and set(names) <= {a["name"] for a in catalog.amis()}


def test_variant_suites_have_their_own_recipe_and_packages() -> None:
    assert rootfs.normalize_suite("13+nix") == "trixie+nix" and rootfs.normalize_suite("debian-12") == "bookworm"
    with pytest.raises(ValueError, match="unknown base image variant 'docker'"):
        rootfs.normalize_suite("trixie+docker")
    codename, packages = rootfs.split_suite("trixie+nix")
    assert codename == "trixie" and "nix-bin" in packages and rootfs.split_suite("trixie") == ("trixie", ())
    mirror, security = "http://deb.example/debian", "http://deb.example/debian-security"
    assert rootfs.recipe_key("trixie", mirror, security) != rootfs.recipe_key("trixie+nix", mirror, security)
    assert "trixie+nix" in rootfs.UP_SUITES


def test_the_variant_has_what_nix_bootstrap_installs() -> None:
    """Same list as nix_bootstrap's for the Debian method, multi-user: nothing left to install."""
    from ansible_collections.nixforge.images.plugins.plugin_utils.bootstrap import BASE_PACKAGES

    assert set(rootfs.VARIANTS["nix"]) == {"nix-bin", "nix-setup-systemd", *BASE_PACKAGES}
