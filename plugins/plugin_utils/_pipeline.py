# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: no compatibility promise for anything outside it.
"""The pipelines' own bookkeeping, shared by every playbook: naming a build, the checks
made before anything is rented, the failure handed from play to play, and the closing
summary with its cost arithmetic (once here instead of Jinja copied into each playbook)."""

from __future__ import annotations

import datetime
import secrets
import string
import time
from typing import Any, Dict, List, Mapping, Optional

from ansible.plugins.filter.mathstuff import human_readable
from ansible_collections.nixforge.images.plugins.filter.kvm import without_kvm
from ansible_collections.nixforge.images.plugins.plugin_utils._cost import builder_cost

KINDS = {"do": ("do", "do-image"), "sd-aarch64": ("sd", "sd-aarch64")}
# The DigitalOcean image's builder: x86_64 with /dev/kvm (make-disk-image runs a VM).
# KVM without bare metal first (EC2's nested virtualization on C8i/M8i, 8 vCPUs then 16), bare
# metal last; on-demand when spot has no capacity for them or refuses the CPU option (still a
# fraction of a *.metal spot price). docs/build-do-image.md, "KVM builders without bare metal".
DO_INSTANCE_TYPES = [
    "c8i.2xlarge",
    "c8i-flex.2xlarge",
    "m8i.2xlarge",
    "c8i.4xlarge",
    "m8i.4xlarge",
    "c5.metal",
    "m5.metal",
    "c5n.metal",
    "c6i.metal",
]


class PipelineError(Exception):
    """Input that cannot work; the message names the variable and the fix."""


def new_build_id(kind: str, now: Optional[datetime.datetime] = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    tail = "".join(secrets.choice(string.ascii_lowercase + string.digits) for unused in range(6))
    return "%s-%s-%s" % (KINDS[kind][0], now.strftime("%Y%m%d-%H%M%S"), tail)


# The EC2 settings a pipeline hands the builder_host role (roles/builder_host/defaults/main.yml has the
# same; tests/unit/plugins/plugin_utils/test_pipeline.py checks that they agree), keyed as the role's
# builder_host_ec2_<key>.
EC2_DEFAULTS: Dict[str, Any] = {
    "architecture": "arm64",
    "instance_types": [],
    "nested_virtualization": False,
    "on_demand_fallback": False,
    "market": "spot",
}
# What a DigitalOcean image's builder needs instead (docs/build-do-image.md).
DO_EC2_DEFAULTS: Dict[str, Any] = dict(
    EC2_DEFAULTS,
    architecture="x86_64",
    instance_types=DO_INSTANCE_TYPES,
    nested_virtualization=True,
    on_demand_fallback=True,
)


def start_build(
    kind: str, given: Mapping[str, Any], stage: bool = False, previous: Optional[Mapping[str, Any]] = None
) -> Dict[str, Any]:
    """The build's name, pipeline, build mode and start time; unless ``stage``, also whether the
    builder needs KVM and the EC2 settings to provision it with (``ec2``, see builder_settings).

    ``given``: what the user set (empty values count as unset). ``previous``: this step's result
    earlier in the same run (a retry after a spot interruption, or the provision stage after its
    input check), whose name, pipeline, mode and start time are kept.
    """
    if kind not in KINDS:
        raise PipelineError("nixforge_image_kind must be one of %s, got %r" % (", ".join(KINDS), kind))
    previous = previous or {}

    def setting(key: str) -> Any:
        return previous.get(key) or given.get(key)

    build_id = str(setting("build_id") or "")
    mode = str(setting("build_mode") or "builder")
    if stage and (not build_id or mode != "builder"):
        raise PipelineError(
            "The stage playbooks need -e nixforge_build_id=ID, the same for every stage of one build (an AWX"
            " workflow passes its survey's answer to each job), and build on the builder (nixforge_build_mode="
            "builder; the remote mode needs one process: use the whole pipeline)."
        )
    out: Dict[str, Any] = {
        "build_id": build_id or new_build_id(kind),
        "pipeline": str(setting("pipeline") or KINDS[kind][1]),
        "build_mode": mode,
        "started_epoch": int(setting("started_epoch") or time.time()),
    }
    if not stage:
        out.update(builder_settings(kind, given))
    return out


def builder_settings(kind: str, given: Mapping[str, Any]) -> Dict[str, Any]:
    """``require_kvm`` and ``ec2``: the EC2 settings of the builder (the user's, else the kind's defaults).

    A DigitalOcean image needs an x86_64 builder with KVM: EC2 types without it are refused before
    anything is created (nixforge_require_kvm=false: an image definition that needs none)."""
    defaults = DO_EC2_DEFAULTS if kind == "do" else EC2_DEFAULTS
    require_kvm = _flag(given.get("require_kvm"), kind == "do")
    ec2 = {
        "architecture": str(given.get("ec2_architecture") or defaults["architecture"]),
        "instance_types": list(given.get("ec2_instance_types") or defaults["instance_types"]),
        "nested_virtualization": _flag(given.get("ec2_nested_virtualization"), defaults["nested_virtualization"]),
        "on_demand_fallback": _flag(given.get("ec2_on_demand_fallback"), defaults["on_demand_fallback"]),
        "market": str(given.get("ec2_market") or defaults["market"]),
    }
    if kind == "do" and require_kvm and str(given.get("provider") or "ec2") == "ec2":
        refused = without_kvm(ec2["instance_types"], "ec2", nested_virtualization=ec2["nested_virtualization"])
        if refused:
            raise PipelineError(
                "builder_host_ec2_instance_types: %s give no /dev/kvm, which the DigitalOcean image build needs"
                " (make-disk-image runs a VM). Use C8i/M8i/R8i types with builder_host_ec2_nested_virtualization=true"
                " (c8i.2xlarge, m8i.2xlarge, ...) or *.metal types (c5.metal, m5.metal, ...), or set"
                " nixforge_require_kvm=false only for an image definition that needs no KVM. Nothing was created."
                % ", ".join(refused)
            )
    return {"require_kvm": require_kvm, "ec2": ec2}


def _flag(value: Any, default: bool) -> bool:
    """A yes/no the user may have left unset ('' or None: the default)."""
    if value is None or value == "":
        return default
    return str(value).lower() in ("true", "1", "yes", "on")


def failure_text(task: Any, msg: Any, host: str = "", default_task: str = "build") -> str:
    """What failed, for the plays after this one: '<task> on <host>: <message>'."""
    where = " on %s" % host if host else ""
    return "%s%s: %s" % (task or default_task, where, msg if msg not in (None, "") else "failed")


def _rounded(value: Any) -> str:
    return str(round(float(value or 0), 1))


def truncate(text: str, length: int = 200, end: str = "...", leeway: int = 5) -> str:
    """Jinja's truncate filter (whole words), so the summary reads as it always did."""
    if len(text) <= length + leeway:
        return text
    return text[: length - len(end)].rsplit(" ", 1)[0] + end


def builder_line(builder: Mapping[str, Any]) -> str:
    where = builder.get("availability_zone") or builder.get("region") or builder.get("metro") or builder.get("address")
    adopted = " (adopted)" if str(builder.get("adopted")).lower() in ("true", "1", "yes") else ""
    kvm = "; KVM: %s" % builder["kvm_kind"] if builder.get("kvm_kind") else ""
    return "%s (%s, %s, %s)%s%s" % (
        builder.get("type"),
        builder.get("provider"),
        builder.get("lifecycle"),
        where,
        adopted,
        kvm,
    )


def elapsed_line(seconds: int) -> str:
    return "%d min %d s" % (seconds // 60, seconds % 60)


def error_message(kind: str, build_id: str, error: Optional[str], builder: Mapping[str, Any], ended: List[str]) -> str:
    head = (
        "Build %s failed; the builder and everything the build created were removed." % build_id
        if kind == "do"
        else "Build %s failed and everything it created was removed." % build_id
    )
    reason = error or (
        "The builder %s stopped answering during the build (spot interruption, expiry or a network problem);"
        " see above." % builder.get("inventory_hostname")
    )
    tail = "The provider ended the builder: %s." % ", ".join(ended) if ended else ""
    return " ".join(part for part in (head, reason, tail) if part)


class Costs:
    """The builder's time and price: the cost is the builder's time (start to teardown) at its
    price, plus what earlier, interrupted builders of the same build cost."""

    def __init__(
        self,
        builder: Mapping[str, Any],
        gone_epoch: Any,
        earlier: List[Mapping[str, Any]],
        candidates: Optional[List[str]] = None,
    ) -> None:
        self.price = float(builder.get("price_per_hour") or 0)
        self.seconds = int(gone_epoch or 0) - int(builder.get("started_epoch") or 0)
        self.earlier = earlier or []
        # billing as the provider bills (EC2: per second, 60 s minimum) and the KVM price comparison
        self.billing = builder_cost(builder, max(0, self.seconds), candidates or [])

    def builder_cost(self) -> float:
        return float(self.billing["cost"]) + sum(float(e.get("cost") or 0) for e in self.earlier)

    def billed(self) -> str:
        minimum = ", EC2 bills per second, 60 s minimum" if self.billing["minimum_seconds"] else ""
        return "%d s billed%s" % (self.billing["billed_seconds"], minimum)

    def kvm_price(self) -> str:
        return self.billing["comparison_line"] or "no comparison (not an EC2 KVM builder type of the catalogue)"

    def interrupted(self) -> str:
        return "; ".join(str(e.get("line")) for e in self.earlier) or "no"


def sd_summary(
    build_id: str, image: Mapping[str, Any], builder: Mapping[str, Any], costs: Costs, now: int, started: int
) -> List[str]:
    size = int(image.get("size") or 0)
    return [
        "Image:      %s" % image.get("path"),
        "Built on:   %s" % (image.get("built_on") or "%s (build on the builder)" % builder.get("address")),
        "Size:       %s (%d bytes)" % (human_readable(size), size),
        "sha256:     %s" % image.get("sha256"),
        "Partitions: %s" % ("; ".join(image.get("partitions") or []) or "not checked (nixos_image_sd_check: false)"),
        "Builder:    %s" % builder_line(builder),
        "Timings:    build %s s, fetch %s s, builder up %d s"
        % (_rounded(image.get("build_seconds")), _rounded(image.get("fetch_seconds")), costs.seconds),
        "Price:      %.4f USD/h" % costs.price,
        "Elapsed:    %s" % elapsed_line(now - started),
        "Interrupted: %s" % costs.interrupted(),
        "Cost (est): %.4f USD" % costs.builder_cost(),
        "Build id:   %s (nothing of it is left running)" % build_id,
    ]


def boot_line(boot: Mapping[str, Any]) -> str:
    if "boot_seconds" not in boot:
        return "skipped (do_image_publish_boot_check=false)"
    droplet = boot.get("droplet") or {}
    booted = boot["boot_seconds"]
    if boot.get("create_seconds") is not None and booted is not None:
        # boot_seconds counts from the droplet being active; the line says both
        booted = "%s s from create to SSH (booted in %s" % (_rounded(booted + boot["create_seconds"]), _rounded(booted))
        booted += " s once active)"
    else:
        booted = "%s s from create to SSH" % _rounded(booted)
    return "%s on %s in %s (droplet up %s s, billed %s s; cost %.4f USD)" % (
        booted,
        droplet.get("size"),
        droplet.get("region"),
        boot.get("droplet_seconds"),
        boot.get("billed_seconds"),
        float(boot.get("cost") or 0),
    )


def file_line(image: Mapping[str, Any], uploaded: Mapping[str, Any]) -> str:
    """Where the image file is: on the controller, or only in B2 (the builder uploaded it)."""
    if image.get("path"):
        return str(image["path"])
    return (
        "none on the controller: the builder uploaded it to B2 in %s s (nixforge_keep_local_copy=true keeps a copy)"
        % _rounded(uploaded.get("seconds") or 0)
    )


def do_summary(
    build_id: str,
    image: Mapping[str, Any],
    published: Mapping[str, Any],
    uploaded: Mapping[str, Any],
    builder: Mapping[str, Any],
    costs: Costs,
    now: int,
    started: int,
    gone: int,
) -> List[str]:
    size = int(image.get("size") or 0)
    boot = published.get("boot_check") or {}
    again = "" if published.get("imported") else " (already imported by an earlier run: nothing imported)"
    return [
        "Image id:   %s (%s, %s)%s"
        % (published.get("image_id"), published.get("name"), published.get("status"), again),
        "Regions:    %s" % ", ".join(published.get("regions") or []),
        "Size:       %s (%d bytes; %s GB at DigitalOcean)"
        % (human_readable(size), size, published.get("size_gigabytes")),
        "sha256:     %s" % image.get("sha256"),
        "File:       %s" % file_line(image, uploaded),
        "Builder:    %s" % builder_line(builder),
        "Built on:   %s" % (image.get("built_on") or "%s (build on the builder)" % builder.get("address")),
        "Timings:    build %s s, fetch %s s, builder up %d s, publish %d s"
        % (_rounded(image.get("build_seconds")), _rounded(image.get("fetch_seconds")), costs.seconds, now - gone),
        "Boot check: %s" % boot_line(boot),
        "Boot out:   %s" % truncate(str(boot.get("output") or "").replace("\n", " | ")),
        "Price:      %.4f USD/h" % costs.price,
        "Elapsed:    %s" % elapsed_line(now - started),
        "Interrupted: %s" % costs.interrupted(),
        "Cost (est): %.4f USD (builder %s%s)"
        % (
            costs.builder_cost() + float(boot.get("cost") or 0),
            costs.billed(),
            " + boot check" if "cost" in boot else "",
        ),
        "KVM price:  %s" % costs.kvm_price(),
        "Build id:   %s (no builder, key or B2 object of it is left; the image is the product)" % build_id,
    ]


def existing_summary(build_id: str, existing: Mapping[str, Any], now: int, started: int) -> List[str]:
    """A re-run of a build whose image DigitalOcean has already: nothing was built."""
    return [
        "Image id:   %s (%s, %s) (already imported by an earlier run: nothing imported)"
        % (existing.get("id"), existing.get("name"), existing.get("status")),
        "Regions:    %s" % ", ".join(existing.get("regions") or []),
        "Size:       %s GB at DigitalOcean" % existing.get("size_gigabytes"),
        "Builder:    none (nothing to build)",
        "Elapsed:    %d s" % (now - started),
        "Cost (est): 0.0000 USD",
        "Build id:   %s" % build_id,
    ]


def report(args: Mapping[str, Any], now: Optional[int] = None) -> List[str]:
    """The summary of a finished pipeline, or PipelineError with the build's error."""
    now = int(now if now is not None else time.time())
    kind, build_id = args["kind"], str(args["build_id"])
    builder, image = args.get("builder") or {}, args.get("image") or {}
    published, existing = args.get("published") or {}, args.get("existing") or {}
    started = int(args.get("started_epoch") or now)
    if kind == "do" and existing:
        return existing_summary(build_id, existing, now, started)
    if not image or (kind == "do" and not published):
        raise PipelineError(error_message(kind, build_id, args.get("error"), builder, args.get("ended") or []))
    gone = int(args.get("gone_epoch") or now)
    costs = Costs(builder, gone, args.get("earlier") or [], list(args.get("candidates") or []))
    if kind == "do":
        uploaded = args.get("uploaded") or {}
        return do_summary(build_id, image, published, uploaded, builder, costs, now, started, gone)
    return sd_summary(build_id, image, builder, costs, now, started)
