# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: EC2 instance type candidates, prices and the fleet retry loop; no stable interface.
"""Instance type candidates, prices and the instant-fleet retry loop."""

from __future__ import annotations

import math
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import (
    NixforgeError,
    ProviderError,
    UserInputError,
)
from ansible_collections.nixforge.images.plugins.module_utils._ec2._client import (
    CAPACITY_ERROR_CODES,
    tag_specifications,
)

DEFAULT_INSTANCE_TYPES = {
    "arm64": ["a1.2xlarge", "c6g.2xlarge", "c7g.2xlarge", "m7g.2xlarge"],
    "x86_64": ["c6i.2xlarge", "c7i.2xlarge", "m6i.2xlarge", "c5.2xlarge"],
}
# On-demand Linux prices in us-east-1, USD per hour (AWS price list, 2026). Other regions
# cost up to about a third more; override with the on_demand_prices option.
ON_DEMAND_PRICES = {
    "a1.2xlarge": 0.204,
    "a1.4xlarge": 0.408,
    "a1.metal": 0.408,
    "c6g.2xlarge": 0.272,
    "c6g.4xlarge": 0.544,
    "c6g.metal": 2.176,
    "c7g.2xlarge": 0.289,
    "c7g.4xlarge": 0.578,
    "c7g.metal": 2.32,
    "m6g.2xlarge": 0.308,
    "m7g.2xlarge": 0.3264,
    "m7g.metal": 2.611,
    "c5.2xlarge": 0.34,
    "c5.metal": 4.08,
    "c6i.2xlarge": 0.34,
    "c6i.metal": 5.44,
    "c7i.2xlarge": 0.357,
    "m5.metal": 4.608,
    "m6i.2xlarge": 0.384,
    "m6i.metal": 6.144,
    # nested virtualization (CpuOptions.NestedVirtualization=enabled): KVM without bare metal
    "c8i.large": 0.09371,
    "c8i.xlarge": 0.18742,
    "c8i.2xlarge": 0.37485,
    "c8i.4xlarge": 0.7497,
    "c8i-flex.2xlarge": 0.35612,
    "c8i-flex.4xlarge": 0.71224,
    "m8i.2xlarge": 0.42336,
    "m8i.4xlarge": 0.84672,
    "r8i.2xlarge": 0.5586,
    "c7i.metal-24xl": 4.284,
    "c5n.metal": 3.888,
}
# where the table comes from, for the summary and the docs
PRICES_AS_OF = "2026-12"
PRICES_SOURCE = "AWS on-demand price list, Linux, us-east-1"

# allocation strategies of an instant spot fleet (ec2_spot_host's choices)
STRATEGIES = [
    "price-capacity-optimized",
    "capacity-optimized",
    "capacity-optimized-prioritized",
    "lowest-price",
    "diversified",
]
Candidate = Dict[str, Any]
Launched = Tuple[str, str, str, Candidate]  # fleet id, instance id, lifecycle, candidate


def instance_type_list(types: Optional[List[str]], architecture: str) -> List[str]:
    """The user's types (or the default ones of ``architecture``), stripped, without repeats."""
    result: List[str] = []
    for t in types or DEFAULT_INSTANCE_TYPES[architecture]:
        t = str(t).strip()
        if t and t not in result:
            result.append(t)
    if not result:
        raise UserInputError("the list is empty", hint="Give at least one instance type", parameter="instance_types")
    return result


def order_candidates(instance_types: List[str], subnets: Sequence[Mapping[str, Any]]) -> List[Candidate]:
    """Instance types in the given order, each over the subnets sorted by zone.

    The candidate list keeps the user's preference: first type in every zone, then the next.
    """
    ordered = sorted(subnets, key=lambda s: (s["AvailabilityZone"], s["SubnetId"]))
    candidates = []
    for instance_type in instance_types:
        for subnet in ordered:
            candidates.append(
                {
                    "instance_type": instance_type,
                    "subnet_id": subnet["SubnetId"],
                    "availability_zone": subnet["AvailabilityZone"],
                    "priority": len(candidates),
                }
            )
    return candidates


def validate_max_price(value: Optional[str]) -> Optional[str]:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    try:
        price = float(text)
    except ValueError:
        price = -1.0
    if not (price > 0 and math.isfinite(price)):
        raise UserInputError(
            "%r is not a positive price" % text,
            hint="Give USD per hour as a number such as 0.25, or leave it empty for the on-demand price",
            parameter="max_price",
        )
    return text


def validate_price_overrides(overrides: Optional[Mapping[str, Any]]) -> Dict[str, float]:
    result = {}
    for key, value in (overrides or {}).items():
        try:
            price = float(value)
        except (TypeError, ValueError):
            price = -1.0
        if not price > 0:
            raise UserInputError(
                "the price of %r is not a positive number" % key,
                hint="Give USD per hour, for example {'c7g.2xlarge': 0.289}",
                parameter="on_demand_prices",
            )
        result[str(key)] = price
    return result


def price_for(
    instance_type: str, max_price: Optional[str], overrides: Mapping[str, Any]
) -> Tuple[Optional[str], Optional[float], str]:
    """``(MaxPrice to send or None, price upper bound to report, its source)``.

    Without ``max_price`` nothing is sent unless the user gave the type's on-demand price:
    EC2's default max price is the on-demand price of the type *in the region*, which a
    us-east-1 table cannot know.
    """
    if max_price is not None:
        return max_price, float(max_price), "max_price"
    if instance_type in overrides:
        price = float(overrides[instance_type])
        return ("%.6f" % price).rstrip("0").rstrip("."), price, "on_demand_prices"
    if instance_type in ON_DEMAND_PRICES:
        return None, ON_DEMAND_PRICES[instance_type], "table"
    return None, None, "unknown"


def price_bound(
    instance_type: str, lifecycle: str, max_price: Optional[str], overrides: Mapping[str, Any]
) -> Tuple[Optional[float], str]:
    """The one place the reported price upper bound comes from: ``(bound, source)``.

    A spot instance costs at most its max price; an on-demand one its on-demand price.
    """
    _send, bound, source = price_for(instance_type, max_price if lifecycle == "spot" else None, overrides)
    return bound, source


def fleet_errors(reply: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The ``Errors[]`` of a create_fleet reply as flat dicts."""
    result = []
    for error in reply.get("Errors") or []:
        overrides = (error.get("LaunchTemplateAndOverrides") or {}).get("Overrides") or {}
        result.append(
            {
                "instance_type": overrides.get("InstanceType"),
                "subnet_id": overrides.get("SubnetId"),
                "availability_zone": overrides.get("AvailabilityZone"),
                "lifecycle": error.get("Lifecycle"),
                "code": error.get("ErrorCode"),
                "message": error.get("ErrorMessage"),
            }
        )
    return result


def drop_failed(
    candidates: List[Candidate], errors: List[Dict[str, Any]], codes: Sequence[str] = CAPACITY_ERROR_CODES
) -> Tuple[List[Candidate], List[Dict[str, Any]]]:
    """Remove the candidates that had a capacity error (one of ``codes``); return ``(remaining, other errors)``.

    An error that does not say which override failed is charged to the first candidate
    (what an API that answers by raising was trying), so the loop always makes progress.
    """
    remaining = list(candidates)
    others = []
    for error in errors:
        if error.get("code") not in codes:
            others.append(error)
            continue
        matched = [
            c
            for c in remaining
            if (error.get("instance_type") in (None, c["instance_type"]))
            and (error.get("subnet_id") in (None, c["subnet_id"]))
            and (error.get("availability_zone") in (None, c["availability_zone"]))
        ]
        if error.get("instance_type") is None and error.get("subnet_id") is None:
            matched = remaining[:1]
        remaining = [c for c in remaining if c not in matched]
    return remaining, others


class Fleet:
    """Launches one instance through instant fleets, dropping the candidates without capacity.

    ``candidate_errors`` collects the capacity errors met, ``fleet_ids`` every fleet created
    (each is removed with the build).
    """

    def __init__(
        self,
        client: Any,
        allocation_strategy: str,
        max_price: Optional[str],
        price_overrides: Mapping[str, float],
        tags: Mapping[str, str],
        warn: Callable[[str], None],
    ) -> None:
        self.client = client
        self.allocation_strategy = allocation_strategy
        self.max_price = max_price
        self.price_overrides = price_overrides
        self.tags = tags
        self.warn = warn
        self.candidate_errors: List[Dict[str, Any]] = []
        self.fleet_ids: List[str] = []
        # codes that take a candidate out of the spot market only (set by the caller: EC2
        # may refuse a CPU option on spot capacity, then on-demand is the fallback)
        self.spot_refusal_codes: Tuple[str, ...] = ()

    def dropped_codes(self, market: str) -> Tuple[str, ...]:
        return tuple(CAPACITY_ERROR_CODES) + (self.spot_refusal_codes if market == "spot" else ())

    def launch(self, markets: List[str], candidates: List[Candidate], lt_id: Any) -> Launched:
        """Try each market in turn; fail with every capacity error when none has capacity.

        ``lt_id`` is the launch template id, or ``{template key: id}`` when the candidates
        name their template (``candidate["template"]``, default ``plain``)."""
        for market in markets:
            launched = self.launch_in_market(market, candidates, lt_id)
            if launched:
                return launched
            if market == "spot" and len(markets) > 1:
                self.warn("no spot capacity in any candidate; falling back to on-demand")
        tried = ", ".join(
            "%s in %s (%s)" % (e["instance_type"], e["availability_zone"] or e["subnet_id"], e["code"])
            for e in self.candidate_errors
        )
        raise ProviderError(
            "no capacity for any candidate: %s" % (tried or "the fleet launched nothing"),
            hint="Add instance types ('instance_types') or zones ('subnet_ids' / 'availability_zones'), "
            "raise 'max_price', set 'on_demand_fallback: true', or try again later",
            what="Launching the builder",
            code="InsufficientInstanceCapacity",
        )

    def request(self, market: str, remaining: List[Candidate], lt_id: Any) -> Dict[str, Any]:
        """The create_fleet request for one attempt over the ``remaining`` candidates."""
        templates = lt_id if isinstance(lt_id, Mapping) else {"plain": lt_id}
        configs: Dict[str, List[Dict[str, Any]]] = {}
        for c in remaining:
            overrides = configs.setdefault(str(templates[c.get("template") or "plain"]), [])
            override: Dict[str, Any] = {"InstanceType": c["instance_type"], "SubnetId": c["subnet_id"]}
            if market == "spot":
                send, _bound, _source = price_for(c["instance_type"], self.max_price, self.price_overrides)
                if send is not None:
                    override["MaxPrice"] = send
            if market != "spot" or self.allocation_strategy == "capacity-optimized-prioritized":
                override["Priority"] = float(c["priority"])
            overrides.append(override)
        request: Dict[str, Any] = {
            # One token per attempt: the client's retries of this call resend it, so a
            # CreateFleet that EC2 applied but whose answer was lost is not applied twice.
            "ClientToken": "nixforge-%s" % uuid.uuid4().hex,
            "Type": "instant",
            "LaunchTemplateConfigs": [
                {"LaunchTemplateSpecification": {"LaunchTemplateId": tid, "Version": "$Latest"}, "Overrides": overrides}
                for tid, overrides in configs.items()
            ],
            "TargetCapacitySpecification": {"TotalTargetCapacity": 1, "DefaultTargetCapacityType": market},
            "TagSpecifications": tag_specifications(["fleet"], self.tags),
        }
        if market == "spot":
            request["SpotOptions"] = {"AllocationStrategy": self.allocation_strategy}
        else:
            request["OnDemandOptions"] = {"AllocationStrategy": "prioritized"}
        return request

    def attempt(
        self, market: str, remaining: List[Candidate], request: Dict[str, Any]
    ) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
        """One create_fleet call: ``(reply, errors)``; a raised capacity fault is an error of the first candidate."""
        try:
            reply = self.client.call("create_fleet", what="Launching the instant fleet", **request)
        except NixforgeError as exc:
            if exc.code not in self.dropped_codes(market):
                raise
            first = remaining[0]
            error = {k: first[k] for k in ("instance_type", "subnet_id", "availability_zone")}
            error.update(lifecycle=market, code=exc.code, message=exc.details.get("provider_message") or exc.msg)
            return {}, [error]
        return reply, fleet_errors(reply)

    def launch_in_market(self, market: str, candidates: List[Candidate], lt_id: Any) -> Optional[Launched]:
        remaining = list(candidates)
        attempts = 0
        while remaining and attempts <= len(candidates):
            attempts += 1
            reply, errors = self.attempt(market, remaining, self.request(market, remaining, lt_id))
            for e in errors:
                e["lifecycle"] = e.get("lifecycle") or market
                if not e.get("availability_zone") and e.get("subnet_id"):
                    e["availability_zone"] = next(
                        (c["availability_zone"] for c in candidates if c["subnet_id"] == e["subnet_id"]), None
                    )
            if reply.get("FleetId"):
                self.fleet_ids.append(reply["FleetId"])
            launched = self.launched(reply, remaining, market)
            if launched:
                self.candidate_errors.extend(e for e in errors if e.get("code") in self.dropped_codes(market))
                return launched
            remaining, others = drop_failed(remaining, errors, self.dropped_codes(market))
            self.candidate_errors.extend(e for e in errors if e not in others)
            if others:
                first = others[0]
                raise ProviderError(
                    "%s: %s" % (first.get("code"), first.get("message")),
                    hint="Check the instance types, subnets and AMI; the fleet's error is not about capacity",
                    what="Launching the instant fleet",
                    code=first.get("code"),
                )
            if not errors:
                return None  # nothing launched and nothing said why: do not loop on the same request
        return None

    @staticmethod
    def launched(reply: Mapping[str, Any], remaining: List[Candidate], market: str) -> Optional[Launched]:
        """The instance a reply launched, with the candidate it was launched as."""
        for group in reply.get("Instances") or []:
            if not group.get("InstanceIds"):
                continue
            chosen = (group.get("LaunchTemplateAndOverrides") or {}).get("Overrides") or {}
            candidate = next(
                (
                    c
                    for c in remaining
                    if c["instance_type"] == (chosen.get("InstanceType") or group.get("InstanceType"))
                    and (not chosen.get("SubnetId") or c["subnet_id"] == chosen.get("SubnetId"))
                ),
                remaining[0],
            )
            return reply.get("FleetId") or "", group["InstanceIds"][0], group.get("Lifecycle") or market, candidate
        return None
