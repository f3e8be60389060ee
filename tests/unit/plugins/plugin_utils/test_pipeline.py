"""plugin_utils/_pipeline.py: naming a build, the checks before renting, and the summary with
its cost arithmetic (once in Python for every pipeline playbook)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ansible_collections.nixforge.images.plugins.plugin_utils import _pipeline as p

ROOT = Path(__file__).resolve().parents[4]

BUILDER = {
    "type": "c6g.large",
    "provider": "ec2",
    "lifecycle": "spot",
    "availability_zone": "us-east-1a",
    "address": "10.0.0.2",
    "adopted": "False",
    "price_per_hour": "0.036",
    "started_epoch": 1000,
    "inventory_hostname": "nixforge-builder-b1",
}
IMAGE = {"path": "/out/nixos.img.zst", "sha256": "ab" * 32, "size": 2048, "build_seconds": 12.34, "fetch_seconds": 1}


def test_a_build_is_named_by_kind_and_keeps_a_given_id_and_start() -> None:
    started = p.start_build("sd-aarch64", {})
    assert re.fullmatch(r"sd-\d{8}-\d{6}-[a-z0-9]{6}", started["build_id"])
    assert started["pipeline"] == "sd-aarch64" and started["build_mode"] == "builder"
    again = p.start_build("sd-aarch64", {"build_id": "b1", "started_epoch": 5})
    assert (again["build_id"], again["started_epoch"]) == ("b1", 5)


def test_a_retry_keeps_the_name_and_start_of_the_first_start() -> None:
    first = p.start_build("sd-aarch64", {"pipeline": "mine"})
    given = {"ec2_instance_types": ["c7g.2xlarge"], "ec2_market": "on-demand"}
    retry = p.start_build("sd-aarch64", given, previous=first)
    assert {k: retry[k] for k in ("build_id", "pipeline", "build_mode", "started_epoch")} == {
        k: first[k] for k in ("build_id", "pipeline", "build_mode", "started_epoch")
    }
    assert retry["ec2"]["instance_types"] == ["c7g.2xlarge"] and retry["ec2"]["market"] == "on-demand"


def test_a_do_build_gets_kvm_builders_and_refuses_ec2_types_without_kvm() -> None:
    started = p.start_build("do", {"build_id": "b1"})
    assert started["ec2"]["instance_types"] == p.DO_INSTANCE_TYPES
    assert started["ec2"]["architecture"] == "x86_64" and started["require_kvm"] is True
    assert started["ec2"]["nested_virtualization"] is True and started["ec2"]["on_demand_fallback"] is True
    with pytest.raises(p.PipelineError, match=r"builder_host_ec2_instance_types: c6i.2xlarge give no /dev/kvm"):
        p.start_build("do", {"ec2_instance_types": ["c5.metal", "c6i.2xlarge"]})
    assert p.start_build("do", {"ec2_instance_types": ["c6i.2xlarge"], "require_kvm": False})
    assert p.start_build("do", {"ec2_instance_types": ["c6i.2xlarge"], "provider": "ssh"})
    # an AWX survey's text answers
    assert p.start_build("do", {"ec2_instance_types": ["c6i.2xlarge"], "require_kvm": "false"})["require_kvm"] is False


def test_an_sd_build_passes_the_users_ec2_settings_or_the_roles_defaults() -> None:
    started = p.start_build("sd-aarch64", {"require_kvm": ""})
    assert started["require_kvm"] is False and started["ec2"] == p.EC2_DEFAULTS
    mine = p.start_build("sd-aarch64", {"ec2_instance_types": ["c7g.2xlarge"], "ec2_on_demand_fallback": "true"})
    assert mine["ec2"]["instance_types"] == ["c7g.2xlarge"] and mine["ec2"]["on_demand_fallback"] is True


def test_the_ec2_defaults_are_the_builder_host_roles() -> None:
    """The start step hands the role these values for every build: for an SD build they must be
    what the role would have used anyway."""
    defaults = yaml.safe_load((ROOT / "roles" / "builder_host" / "defaults" / "main.yml").read_text())
    assert {key: defaults["builder_host_ec2_" + key] for key in p.EC2_DEFAULTS} == p.EC2_DEFAULTS


def test_a_stage_needs_the_build_id_and_the_builder_mode() -> None:
    with pytest.raises(p.PipelineError, match="nixforge_build_id=ID"):
        p.start_build("do", {}, stage=True)
    with pytest.raises(p.PipelineError, match="nixforge_build_mode=builder"):
        p.start_build("do", {"build_id": "b1", "build_mode": "remote"}, stage=True)
    assert "ec2" not in p.start_build("do", {"build_id": "b1"}, stage=True)


def test_the_sd_summary_counts_the_builder_time_and_earlier_builders() -> None:
    earlier = [
        {"line": "c7g.large (ec2, spot, us-east-1b), interrupted by EC2 (spot), up 60 s, 0.0010 USD", "cost": 0.001}
    ]
    args = {
        "kind": "sd-aarch64",
        "build_id": "b1",
        "builder": BUILDER,
        "image": IMAGE,
        "started_epoch": 900,
        "gone_epoch": 4600,
        "earlier": earlier,
    }
    lines = dict(line.split(": ", 1) for line in p.report(args, now=5000))
    assert lines["Timings"].strip() == "build 12.3 s, fetch 1.0 s, builder up 3600 s"
    assert lines["Cost (est)"].strip() == "%.4f USD" % (0.036 + 0.001)
    assert lines["Interrupted"].strip().startswith("c7g.large")
    assert lines["Elapsed"].strip() == "68 min 20 s" and lines["Size"].strip() == "2.00 KB (2048 bytes)"
    assert lines["Partitions"].strip() == "not checked (nixos_image_sd_check: false)"


def test_the_do_summary_adds_the_boot_check() -> None:
    boot = {
        "boot_seconds": 20.0,
        "droplet": {"size": "s-1vcpu-1gb", "region": "nyc3"},
        "droplet_seconds": 30,
        "billed_seconds": 3600,
        "cost": 0.01,
        "output": "a\nb",
    }
    published = {
        "image_id": 7,
        "name": "n",
        "status": "available",
        "imported": True,
        "regions": ["nyc3"],
        "size_gigabytes": 1,
        "boot_check": boot,
    }
    args = {
        "kind": "do",
        "build_id": "b1",
        "builder": BUILDER,
        "image": IMAGE,
        "published": published,
        "started_epoch": 900,
        "gone_epoch": 4600,
    }
    lines = dict(line.split(": ", 1) for line in p.report(args, now=5000))
    assert lines["Cost (est)"].strip() == (
        "%.4f USD (builder 3600 s billed, EC2 bills per second, 60 s minimum + boot check)" % (0.036 + 0.01)
    )
    assert lines["Boot out"].strip() == "a | b" and lines["Timings"].strip().endswith("publish 400 s")
    assert lines["Image id"].strip() == "7 (n, available)"
    # an older result without create_seconds: the boot time is all the line has
    assert lines["Boot check"].strip().startswith("20.0 s from create to SSH on s-1vcpu-1gb in nyc3")
    # create_seconds (create to active) and boot_seconds (active to SSH) both shown, create to SSH their sum
    boot["create_seconds"] = 4.25
    lines = dict(line.split(": ", 1) for line in p.report(args, now=5000))
    assert (
        lines["Boot check"]
        .strip()
        .startswith("24.2 s from create to SSH (booted in 20.0 s once active) on s-1vcpu-1gb in nyc3 (droplet up 30 s")
    )


def test_without_an_image_the_report_is_the_build_error() -> None:
    with pytest.raises(p.PipelineError) as failed:
        p.report(
            {
                "kind": "sd-aarch64",
                "build_id": "b1",
                "builder": BUILDER,
                "ended": ["Server.SpotInstanceTermination on i-1"],
            }
        )
    assert str(failed.value) == (
        "Build b1 failed and everything it created was removed. The builder nixforge-builder-b1 stopped answering"
        " during the build (spot interruption, expiry or a network problem); see above. The provider ended the"
        " builder: Server.SpotInstanceTermination on i-1."
    )
    with pytest.raises(
        p.PipelineError, match=r"^Build b1 failed; the builder and everything the build created were removed\. x$"
    ):
        p.report({"kind": "do", "build_id": "b1", "image": IMAGE, "error": "x"})


def test_a_rerun_of_a_published_build_reports_the_image_it_found() -> None:
    existing = {"id": 7, "name": "n", "status": "available", "regions": ["nyc3"], "size_gigabytes": 1}
    lines = p.report({"kind": "do", "build_id": "b1", "existing": existing, "started_epoch": 10}, now=15)
    assert "Builder:    none (nothing to build)" in lines and "Elapsed:    5 s" in lines


def test_truncate_is_jinjas() -> None:
    assert p.truncate("x" * 205) == "x" * 205
    assert p.truncate("word " * 60) == ("word " * 40).strip()[:197].rsplit(" ", 1)[0] + "..."
