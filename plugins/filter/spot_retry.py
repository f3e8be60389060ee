# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a build interrupted by EC2 (spot) runs once more on a fresh builder, and on which
(documentation: spot_retry.yml next to this file)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional

from ansible_collections.nixforge.images.plugins.module_utils._ec2._fleet import DEFAULT_INSTANCE_TYPES


def _cost(builder: Mapping[str, Any], gone_epoch: Any) -> Dict[str, Any]:
    """The builder that was interrupted, with its time and estimated cost, for the summary."""
    try:
        seconds = max(0, int(gone_epoch) - int(builder.get("started_epoch") or 0))
    except (TypeError, ValueError):
        seconds = 0
    price = float(builder.get("price_per_hour") or 0)
    where = builder.get("availability_zone") or builder.get("region") or ""
    cost = price * seconds / 3600
    line = "%s (%s, %s, %s), interrupted by EC2 (spot), up %d s, %.4f USD" % (
        builder.get("type"),
        builder.get("provider"),
        builder.get("lifecycle"),
        where,
        seconds,
        cost,
    )
    return {"type": builder.get("type"), "seconds": seconds, "cost": cost, "line": line}


def spot_retry(
    interrupted: Optional[Mapping[str, Any]],
    builder: Optional[Mapping[str, Any]],
    enabled: bool = True,
    attempts: Optional[List[Mapping[str, Any]]] = None,
    instance_types: Optional[List[str]] = None,
    on_demand_fallback: bool = False,
    gone_epoch: Any = 0,
    architecture: str = "arm64",
) -> Dict[str, Any]:
    """``{retry, instance_types, market, earlier, reason}``: retry once (``attempts``: the
    builders already given up) when the build was interrupted by EC2 (spot) and retries are
    on; the fresh builder is another candidate type when there is one, else on-demand when
    ``on_demand_fallback``, else the same types again (EC2 may have capacity elsewhere).
    No ``instance_types``: ec2_spot_host's defaults for ``architecture``."""
    instance_types = list(instance_types or DEFAULT_INSTANCE_TYPES.get(architecture, []))
    earlier = [dict(a) for a in attempts or []]
    out: Dict[str, Any] = {"retry": False, "instance_types": list(instance_types or []), "market": "spot"}
    if not interrupted or not builder:
        return dict(out, earlier=earlier, reason="not interrupted")
    earlier.append(_cost(builder, gone_epoch))
    if not enabled:
        return dict(out, earlier=earlier, reason="nixforge_spot_retry is off")
    if len(earlier) > 1:
        return dict(out, earlier=earlier, reason="already retried once")
    others = [t for t in instance_types or [] if t != builder.get("type")]
    if others:
        reason = "another candidate type"
    elif on_demand_fallback:
        out["market"] = "on-demand"
        reason = "on-demand (builder_host_ec2_on_demand_fallback)"
    else:
        reason = "the same candidates again"
    return dict(out, retry=True, instance_types=others or list(instance_types or []), earlier=earlier, reason=reason)


class FilterModule:
    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {"spot_retry": spot_retry}
