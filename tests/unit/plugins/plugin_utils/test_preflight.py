"""The pipelines' checks before renting (plugin_utils/_preflight.py), on the real role
argument specs and the real shipped image definitions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ansible_collections.nixforge.images.plugins.plugin_utils import _preflight
from ansible_collections.nixforge.images.plugins.plugin_utils._preflight import problems


def check(tmp_path: Path, mode: str = "builder", **values: object) -> list[str]:
    base = {"nixos_image_kind": "sd-aarch64", "nixos_image_flake": "nixforge:sandbox", "nixos_image_sd_check": False}
    base["nixos_image_dest_dir"] = str(tmp_path / "artifacts")
    return problems({**base, **values}, mode, str(tmp_path))


def test_good_input_has_no_problem(tmp_path: Path) -> None:
    assert check(tmp_path) == []
    (tmp_path / "module.nix").write_text("{ ... }: { }\n")
    assert check(tmp_path, nixos_image_module="module.nix", nixos_image_dest_dir="out/deeper") == []


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"nixos_image_flake": "./nowhere"}, "nixos_image_flake: "),
        (
            {"nixos_image_flake": "nixforge:sandboxx"},
            "nixos_image_flake: nixforge:sandboxx is not a definition shipped",
        ),
        ({"nixos_image_flake": "nixforge:../sandbox"}, "nixos_image_flake: nixforge:../sandbox is not a definition"),
        ({"nixos_image_module": "missing.nix"}, "nixos_image_module: "),
        ({"nixos_image_kind": "rpi"}, "nixos_image_kind"),
        ({"nixos_image_build_timeout": "two hours"}, "nixos_image_build_timeout"),
        ({"nixos_image_build_timeout": 0}, "nixos_image_build_timeout must be at least 1"),
        ({"nixos_image_fetch_streams": 0}, "nixos_image_fetch_streams must be at least 1"),
        ({"nixos_image_poll_interval": 30, "nixos_image_poll_interval_max": 10}, "nixos_image_poll_interval_max (10)"),
        ({"nixos_image_fetch_method": "scp"}, "nixos_image_fetch_method"),
        ({"nixos_image_fetch_ssh_args": "-o 'ProxyCommand=x"}, "nixos_image_fetch_ssh_args"),
        ({"nixos_image_dest_name": "a/b.img.zst"}, "nixos_image_dest_name"),
        ({"nix_bootstrap_build_method": "podman"}, "nix_bootstrap_build_method"),
        ({"nix_bootstrap_max_jobs": "many"}, "nix_bootstrap_max_jobs"),
    ],
)
def test_each_bad_input_is_named(tmp_path: Path, values: dict, named: str) -> None:
    found = check(tmp_path, **values)
    assert len(found) == 1 and named in found[0], found


def test_the_unknown_name_lists_the_shipped_ones(tmp_path: Path) -> None:
    (found,) = check(tmp_path, nixos_image_flake="nixforge:nope")
    assert "nixforge:sandbox" in found and "nixforge:sd-aarch64" in found and "nixforge:digital-ocean" in found


def test_a_flake_directory_without_flake_nix(tmp_path: Path) -> None:
    (tmp_path / "myflake").mkdir()
    (found,) = check(tmp_path, nixos_image_flake=str(tmp_path / "myflake"))
    assert found.startswith("nixos_image_flake: %s has no flake.nix" % (tmp_path / "myflake")), found


def test_module_files_that_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "module"
    module.mkdir()
    (module / "default.nix").write_text("{ ... }: { imports = [ ./hw.nix ]; }\n")
    (module / "hw.nix").symlink_to(tmp_path / "gone.nix")
    (found,) = check(tmp_path, nixos_image_module=str(module))
    assert found.startswith("nixos_image_module: %s is not a regular file" % (module / "hw.nix")), found
    (module / "hw.nix").unlink()
    (module / "hw.nix").write_text("{ }\n")
    real_open = open

    def refuse(path: object, *args: object, **kwargs: object) -> object:
        if str(path).endswith("hw.nix"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", refuse)
    (found,) = check(tmp_path, nixos_image_module=str(module))
    assert found.startswith(
        "nixos_image_module: %s cannot be read on the controller (Permission denied)" % (module / "hw.nix")
    )


def test_an_output_directory_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    (found,) = check(tmp_path, nixos_image_dest_dir=str(tmp_path / "file" / "artifacts"))
    assert found.startswith("nixos_image_dest_dir (nixforge_output_dir): %s is not a directory" % (tmp_path / "file"))


def test_missing_controller_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_preflight.shutil, "which", lambda _name: None)
    monkeypatch.setattr(_preflight, "missing_tools", lambda: ["fsck.vfat (package dosfstools)"])
    found = check(tmp_path, "remote", nixos_image_sd_check=True)
    assert any(f.startswith("nixforge_build_mode=remote builds with the controller's own Nix") for f in found)
    assert any("nixos_image_sd_check: the SD image check needs fsck.vfat (package dosfstools)" in f for f in found)
    # no check, no fetch: the tools are not needed
    assert check(tmp_path, nixos_image_sd_check=False, nixos_image_fetch_method="rsync", nixos_image_fetch=False) == []


def test_an_unknown_build_mode(tmp_path: Path) -> None:
    assert check(tmp_path, "local")[0].startswith("nixforge_build_mode (nixos_image_build_mode) must be 'builder'")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = check(tmp_path, nixos_image_flake="nixforge:nope", nixos_image_fetch_streams=0, nixos_image_dest_name="a/b")
    assert len(found) == 3, found


def test_the_roles_dir_is_the_collections() -> None:
    assert os.path.isfile(os.path.join(_preflight.ROLES_DIR, "nixos_image", "meta", "argument_specs.yml"))
