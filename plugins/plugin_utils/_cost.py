# -*- coding: utf-8 -*-
# Private to this collection: what a build's builder cost, and what the other kind of KVM builder would have.
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The arithmetic of the summaries' cost lines, in one place (unit tested).

EC2 bills Linux instances per second with a minimum of 60 seconds (on-demand and spot);
DigitalOcean droplets and Metal devices are reported the same way here, as the pipelines
always did (price per hour x seconds up). The comparison between the two kinds of KVM
builder (nested virtualization vs bare metal) uses the collection's catalogue of on-demand
prices, with its date and source, because spot prices move.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ansible_collections.nixforge.images.plugins.module_utils._ec2._fleet import (
    ON_DEMAND_PRICES,
    PRICES_AS_OF,
    PRICES_SOURCE,
)
from ansible_collections.nixforge.images.plugins.module_utils._ec2._nested import catalogue_supports, is_bare_metal

EC2_MINIMUM_SECONDS = 60
# what a DigitalOcean build compares with when its candidates name no type of the other kind
DEFAULT_NESTED = "c8i.2xlarge"
DEFAULT_METAL = "c5.metal"


def number(value: Any) -> float:
    """A float from what a template hands over ('' and None are 0; a non-number is an error)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0.0
    result = float(value)
    if not math.isfinite(result):
        raise ValueError("%r is not a finite number" % (value,))
    return result


def billed_seconds(seconds: Any, provider: str = "ec2") -> int:
    """Seconds billed for ``seconds`` up: per second, at least 60 on EC2; 0 for 0 seconds up."""
    up = max(0, math.ceil(number(seconds)))
    if provider == "ec2" and up > 0:
        return max(EC2_MINIMUM_SECONDS, up)
    return up


def cost(price_per_hour: Any, seconds: Any, provider: str = "ec2") -> float:
    """USD for ``seconds`` up at ``price_per_hour`` (billed seconds)."""
    return number(price_per_hour) * billed_seconds(seconds, provider) / 3600.0


def kvm_kind(instance_type: str) -> Optional[str]:
    if is_bare_metal(instance_type):
        return "bare metal"
    if catalogue_supports(instance_type):
        return "nested virtualization"
    return None


def counterpart(instance_type: str, candidates: Sequence[str] = ()) -> Optional[str]:
    """The first candidate of the other kind of KVM builder (else the default one), priced in the catalogue."""
    kind = kvm_kind(instance_type)
    if kind is None:
        return None
    wanted = is_bare_metal if kind == "nested virtualization" else catalogue_supports
    default = DEFAULT_METAL if kind == "nested virtualization" else DEFAULT_NESTED
    for candidate in [*candidates, default]:
        candidate = str(candidate).strip()
        if wanted(candidate) and candidate in ON_DEMAND_PRICES:
            return candidate
    return None


def comparison(instance_type: str, seconds: Any, candidates: Sequence[str] = ()) -> Optional[Dict[str, Any]]:
    """This build's billed time on both kinds of KVM builder at catalogue on-demand prices; None
    when the builder is not a KVM type of the catalogue."""
    other = counterpart(instance_type, candidates)
    if other is None or instance_type not in ON_DEMAND_PRICES:
        return None
    billed = billed_seconds(seconds)
    mine, theirs = ON_DEMAND_PRICES[instance_type], ON_DEMAND_PRICES[other]
    nested, metal = (
        (instance_type, other) if kvm_kind(instance_type) == "nested virtualization" else (other, instance_type)
    )
    nested_cost, metal_cost = cost(ON_DEMAND_PRICES[nested], billed), cost(ON_DEMAND_PRICES[metal], billed)
    line = (
        "%s (nested virtualization) %.4f USD/h vs %s (bare metal) %.4f USD/h: %.4f vs %.4f USD for this build's "
        "%d s billed, %.4f USD less per build (catalogue on-demand prices, %s, %s)"
        % (
            nested,
            ON_DEMAND_PRICES[nested],
            metal,
            ON_DEMAND_PRICES[metal],
            nested_cost,
            metal_cost,
            billed,
            metal_cost - nested_cost,
            PRICES_SOURCE,
            PRICES_AS_OF,
        )
    )
    return {
        "other_type": other,
        "price_per_hour": mine,
        "other_price_per_hour": theirs,
        "nested_type": nested,
        "metal_type": metal,
        "nested_cost": nested_cost,
        "metal_cost": metal_cost,
        "saving": metal_cost - nested_cost,
        "billed_seconds": billed,
        "prices_as_of": PRICES_AS_OF,
        "prices_source": PRICES_SOURCE,
        "line": line,
    }


def builder_cost(
    builder: Mapping[str, Any], seconds: Any, candidates: Optional[List[str]] = None, extra: Any = 0
) -> Dict[str, Any]:
    """The build's real builder cost (``builder``: builder_host_result) and the comparison.

    ``extra`` (USD, e.g. the DigitalOcean boot check) is added to ``total``."""
    provider = str(builder.get("provider") or "ec2")
    price = number(builder.get("price_per_hour"))
    billed = billed_seconds(seconds, provider)
    builder_usd = cost(price, seconds, provider)
    compared = comparison(str(builder.get("type") or ""), seconds, candidates or []) if provider == "ec2" else None
    return {
        "seconds": max(0, math.ceil(number(seconds))),
        "billed_seconds": billed,
        "price_per_hour": price,
        "cost": builder_usd,
        "total": builder_usd + number(extra),
        "minimum_seconds": EC2_MINIMUM_SECONDS if provider == "ec2" else 0,
        "comparison": compared,
        "comparison_line": compared["line"] if compared else "",
    }
