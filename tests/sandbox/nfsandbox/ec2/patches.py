"""Small in-process extensions of moto 5.2's EC2, each filling one named gap.

They are installed once per process (``install(hooks)``) and do nothing while no sandbox
provider is active (``hooks`` None), so moto behaves as shipped in that case. Every patch
says which gap it fills; the gaps were measured on moto 5.2.5.

``hooks`` is the EC2 provider (``nfsandbox.ec2.Provider``): it owns the fault table and
attaches sandbox hosts to instances.
"""

from __future__ import annotations

import fnmatch
import math
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any
from xml.sax.saxutils import escape

from moto.core.responses import ActionResult
from moto.ec2.exceptions import DependencyViolationError, EC2ClientError
from moto.ec2.models import EC2Backend
from moto.ec2.models.amis import AmiBackend
from moto.ec2.models.fleets import Fleet
from moto.ec2.models.instance_types import INSTANCE_TYPE_OFFERINGS, INSTANCE_TYPES
from moto.ec2.models.instances import Instance, InstanceState, StateReason
from moto.ec2.models.launch_templates import LaunchTemplate
from moto.ec2.responses.fleets import Fleets
from moto.ec2.responses.instances import InstanceResponse
from moto.ec2.responses.spot_instances import SpotInstances
from werkzeug.exceptions import HTTPException

from . import catalog

_hooks: Any = None
_originals: dict[tuple[type, str], Any] = {}
_local = threading.local()


# --- errors ----------------------------------------------------------------------------


class EC2HTTPError(HTTPException):
    """An EC2 error with an HTTP status other than 400 (moto serialises every EC2 error as 400).

    EC2 answers ``InsufficientInstanceCapacity`` with HTTP 500, which SDKs retry before
    they give up; tests must see the same.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(description=error_xml(code, message))
        self.code = status
        self.ec2_code = code
        self.ec2_message = message

    def get_headers(self, environ: Any = None, scope: Any = None) -> list[tuple[str, str]]:
        return [("Content-Type", "text/xml;charset=UTF-8")]

    def __str__(self) -> str:
        return "%s: %s" % (self.ec2_code, self.ec2_message)


def error_xml(code: str, message: str, request_id: str = "") -> str:
    import uuid

    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>%s</Code>'
        "<Message>%s</Message></Error></Errors><RequestID>%s</RequestID></Response>"
        % (escape(code), escape(message), request_id or str(uuid.uuid4()))
    )


def zones_offering(region: str, instance_type: str) -> list[str]:
    offers = INSTANCE_TYPE_OFFERINGS["availability-zone"].get(region, [])
    return sorted(o["Location"] for o in offers if o["InstanceType"] == instance_type)


def capacity_message(code: str, instance_type: str, zone: str | None, market: str, region: str) -> str:
    if code == "InsufficientInstanceCapacity":
        if market == "spot":
            return "There is no Spot capacity available that matches your request."
        if zone:
            others = [z for z in zones_offering(region, instance_type) if z != zone]
            return (
                "We currently do not have sufficient %s capacity in the Availability Zone you requested (%s). "
                "Our system will be working on provisioning additional capacity. You can currently get %s "
                "capacity by not specifying an Availability Zone in your request or choosing %s."
                % (instance_type, zone, instance_type, ", ".join(others))
            )
        return "Insufficient capacity."
    return {
        "MaxSpotInstanceCountExceeded": "Max spot instance count exceeded",
        "VcpuLimitExceeded": "You have requested more vCPU capacity than your current vCPU limit allows for the "
        "instance bucket that the specified instance type belongs to. Please visit "
        "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.",
        "UnfulfillableCapacity": "Unable to fulfill capacity due to your request configuration. "
        "Please adjust your request and try again.",
    }.get(code, "Insufficient capacity.")


def capacity_exception(fault: dict[str, Any], instance_type: str, zone: str | None, market: str, region: str):
    code = fault.get("code") or "InsufficientInstanceCapacity"
    message = fault.get("message") or capacity_message(code, instance_type, zone, market, region)
    if code == "InsufficientInstanceCapacity":
        return EC2HTTPError(500, code, message)
    return EC2ClientError(code, message)


def unsupported_in_zone(instance_type: str, zone: str, region: str) -> EC2ClientError:
    return EC2ClientError(
        "Unsupported",
        "Your requested instance type (%s) is not supported in your requested Availability Zone (%s). "
        "Please retry your request by not specifying an Availability Zone or choosing %s."
        % (instance_type, zone, ", ".join(zones_offering(region, instance_type))),
    )


def architecture_mismatch(instance_type: str, type_arch: str, ami_arch: str) -> EC2ClientError:
    return EC2ClientError(
        "InvalidParameterValue",
        "The architecture '%s' of the specified instance type does not match the architecture '%s' of the "
        "specified AMI. Specify an instance type and an AMI that have matching architectures, and try again. "
        "You can use 'describe-instance-types' or 'describe-images' to discover the architecture of the "
        "instance type or AMI." % (type_arch, ami_arch),
    )


def invalid_instance_type(instance_type: str) -> EC2ClientError:
    return EC2ClientError("InvalidParameterValue", "Invalid value '%s' for InstanceType." % instance_type)


NESTED_FEATURE = "nested-virtualization"


def supports_nested(instance_type: str) -> bool:
    """What DescribeInstanceTypes says: ``nested-virtualization`` in ProcessorInfo.SupportedFeatures."""
    info = INSTANCE_TYPES.get(instance_type) or {}
    return NESTED_FEATURE in ((info.get("ProcessorInfo") or {}).get("SupportedFeatures") or [])


def nested_requested(tmpl: dict[str, Any]) -> bool:
    """The CPU option ``NestedVirtualization=enabled``, of RunInstances or of the launch template."""
    options = getattr(_local, "cpu_options", None) or tmpl.get("CpuOptions") or {}
    return str(options.get("NestedVirtualization", "")).lower() == "enabled"


def nested_unsupported(instance_type: str) -> EC2ClientError:
    # EC2 answers UnsupportedOperation (the code clients such as Karpenter handle for it);
    # the wording is the sandbox's, naming the type and the families that have the feature.
    return EC2ClientError(
        "UnsupportedOperation",
        "The instance type '%s' does not support nested virtualization. Nested virtualization is supported "
        "only on 8th generation Intel-based instance types (c8i, m8i, r8i, and their flex variants)." % instance_type,
    )


def cpu_options_of(instance_type: str, nested: bool) -> dict[str, Any]:
    """An instance's CpuOptions as DescribeInstances shows them."""
    info = INSTANCE_TYPES.get(instance_type) or {}
    vcpu = info.get("VCpuInfo") or {}
    options: dict[str, Any] = {
        "CoreCount": int(vcpu.get("DefaultCores") or 1),
        "ThreadsPerCore": int(vcpu.get("DefaultThreadsPerCore") or 1),
    }
    if nested:
        options["NestedVirtualization"] = "enabled"
    return options


def type_architectures(instance_type: str) -> list[str]:
    info = INSTANCE_TYPES.get(instance_type) or {}
    return list((info.get("ProcessorInfo") or {}).get("SupportedArchitectures") or [])


# --- patch plumbing ----------------------------------------------------------------------


def _patch(cls: type, name: str, value: Any) -> None:
    if (cls, name) not in _originals:
        _originals[(cls, name)] = cls.__dict__.get(name, _MISSING)
    setattr(cls, name, value)


_MISSING = object()


def _orig(cls: type, name: str) -> Any:
    value = _originals.get((cls, name), _MISSING)
    if value is _MISSING:  # inherited, not defined on cls itself
        for base in cls.__mro__[1:]:
            if name in base.__dict__:
                return base.__dict__[name]
        raise AttributeError(name)
    return value


def install(hooks: Any) -> None:
    """Activate the extensions for ``hooks`` (the EC2 provider)."""
    global _hooks
    _hooks = hooks
    if _originals:
        return
    _patch(AmiBackend, "_load_amis", _load_amis)
    _patch(EC2Backend, "run_instances", _run_instances)
    _patch(EC2Backend, "stop_instances", _stop_instances)
    _patch(EC2Backend, "create_fleet", _create_fleet)
    _patch(Instance, "terminate", _instance_terminate)
    _patch(EC2Backend, "delete_security_group", _delete_security_group)
    _patch(Instance, "stop", _instance_stop)
    _patch(Instance, "start", _instance_start)
    _patch(Instance, "state_reason", property(_get_state_reason, _set_state_reason))
    _patch(Fleet, "instances", property(_fleet_instances))
    _patch(Fleet, "terminate_instances", _fleet_terminate_instances)
    _patch(LaunchTemplate, "tags", property(_live_tags, _set_tags))
    _patch(InstanceResponse, "run_instances", _response_run_instances)
    _patch(Fleets, "create_fleet", _response_create_fleet)
    _patch(Fleets, "delete_fleets", _response_delete_fleets)
    _patch(SpotInstances, "describe_spot_price_history", _response_describe_spot_price_history)


def uninstall() -> None:
    """Deactivate: moto behaves as shipped again (the patches stay in place, inert)."""
    global _hooks
    _hooks = None


# --- AMIs --------------------------------------------------------------------------------


def _load_amis(self: Any) -> None:
    # Gap: moto labels every catalogue image owner alias "amazon" and has no EnaSupport;
    # Debian's images and the pre-baked builder images have no owner alias and support ENA.
    _orig(AmiBackend, "_load_amis")(self)
    if _hooks is None:
        return
    for ami in self.amis.values():
        if ami.owner_id in (catalog.DEBIAN_OWNER, catalog.PREBAKED_OWNER):
            ami.owner_alias = None
            ami.ena_support = True


# --- launching ---------------------------------------------------------------------------


def _template_data(backend: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    if not kwargs.get("launch_template"):
        return {}
    return backend._get_template_from_args(kwargs["launch_template"]).data or {}


def _explicit_zone(backend: Any, kwargs: dict[str, Any], tmpl: dict[str, Any]) -> str | None:
    if kwargs.get("placement"):
        return kwargs["placement"]
    subnet_id = kwargs.get("subnet_id") or next(
        (n.get("SubnetId") for n in kwargs.get("nics") or [] if n.get("SubnetId")), None
    )
    if not subnet_id:
        subnet_id = next((n.get("SubnetId") for n in tmpl.get("NetworkInterfaces") or [] if n.get("SubnetId")), None)
    if subnet_id:
        try:
            return backend.get_subnet(subnet_id).availability_zone
        except Exception:  # noqa: BLE001 - moto reports the bad subnet itself, later
            return None
    return (tmpl.get("Placement") or {}).get("AvailabilityZone")


def _check_launch(backend: Any, image_id: str | None, kwargs: dict[str, Any], tmpl: dict[str, Any]) -> None:
    """What EC2 checks before it launches and moto does not (raises the EC2 error)."""
    from moto import settings

    region = backend.region_name
    instance_type = kwargs.get("instance_type")
    if kwargs.get("is_instance_type_default") and tmpl.get("InstanceType"):
        instance_type = tmpl["InstanceType"]
    instance_type = instance_type or "m1.small"
    ami = backend.amis.get(image_id or tmpl.get("ImageId") or "")

    # Gap: moto's type check matches substrings ("c7g.2xlarge-x" passes) and words its error
    # differently from EC2.
    if settings.EC2_ENABLE_INSTANCE_TYPE_VALIDATION and instance_type not in INSTANCE_TYPES:
        raise invalid_instance_type(instance_type)

    # Gap: moto ignores CpuOptions; EC2 refuses nested virtualization for a type without it.
    if nested_requested(tmpl) and not supports_nested(instance_type):
        raise nested_unsupported(instance_type)

    # Gap: moto launches an arm64 AMI on an x86_64 type (and the reverse).
    arches = type_architectures(instance_type)
    if ami is not None and arches and ami.architecture not in arches:
        raise architecture_mismatch(instance_type, arches[0], ami.architecture)

    market = "spot" if _market(kwargs, tmpl) == "spot" else "on-demand"
    spot_options = _spot_options(tmpl)
    zone = _explicit_zone(backend, kwargs, tmpl)
    offered = zones_offering(region, instance_type)

    # Gap: moto does not check that the type is offered in the zone asked for.
    if zone and offered and zone not in offered and settings.EC2_ENABLE_INSTANCE_TYPE_VALIDATION:
        raise unsupported_in_zone(instance_type, zone, region)

    # Gap: moto never runs out of capacity; the sandbox's fault table decides.
    faults = _hooks.faults
    if zone:
        fault = faults.capacity_error(region, instance_type, zone, market)
        if fault:
            raise capacity_exception(fault, instance_type, zone, market, region)
    else:
        fault = faults.capacity_error(region, instance_type, None, market)
        if fault:
            raise capacity_exception(fault, instance_type, None, market, region)
        # EC2 picks a zone with capacity when the request names none.
        for candidate in offered or [region + "a"]:
            fault = faults.capacity_error(region, instance_type, candidate, market)
            if not fault:
                zone = candidate
                break
        else:
            raise capacity_exception(fault or {}, instance_type, None, market, region)
        if not kwargs.get("subnet_id") and not kwargs.get("nics"):
            kwargs["placement"] = zone

    # Gap: moto ignores the spot MaxPrice.
    if market == "spot" and spot_options.get("MaxPrice"):
        price = catalog.spot_price(instance_type, zone)
        if float(spot_options["MaxPrice"]) < price:
            raise EC2ClientError(
                "SpotMaxPriceTooLow",
                "Your Spot request price of %s is lower than the minimum required Spot request fulfillment "
                "price of %s." % (spot_options["MaxPrice"], price),
            )


def _market(kwargs: dict[str, Any], tmpl: dict[str, Any]) -> str | None:
    if kwargs.get("lifecycle") == "spot" or kwargs.get("instance_market_options") == "spot":
        return "spot"
    return (tmpl.get("InstanceMarketOptions") or {}).get("MarketType")


def _spot_options(tmpl: dict[str, Any]) -> dict[str, Any]:
    options = getattr(_local, "spot_options", None)
    if options:
        return options
    return ((tmpl.get("InstanceMarketOptions") or {}).get("SpotOptions")) or {}


def _run_instances(self: Any, image_id: str, count: int, user_data: Any, security_group_names: Any, **kwargs: Any):
    original = _orig(EC2Backend, "run_instances")
    if _hooks is None:
        return original(self, image_id, count, user_data, security_group_names, **kwargs)
    tmpl = _template_data(self, kwargs)
    # Gap: moto ignores the launch template's InstanceMarketOptions and
    # InstanceInitiatedShutdownBehavior (a template-launched builder would never terminate itself).
    if not kwargs.get("instance_market_options") and _market({}, tmpl) == "spot" and kwargs.get("lifecycle") is None:
        kwargs["instance_market_options"] = "spot"
    if not kwargs.get("instance_initiated_shutdown_behavior") and tmpl.get("InstanceInitiatedShutdownBehavior"):
        kwargs["instance_initiated_shutdown_behavior"] = tmpl["InstanceInitiatedShutdownBehavior"]
    # Gap: moto's own callers (fleets, RequestSpotInstances) leave associate_public_ip out,
    # which moto reads as False: their instances got no public IP even in a subnet that maps
    # one on launch. None lets the subnet decide, as RunInstances without the flag does.
    kwargs.setdefault("associate_public_ip", None)
    fleet_launch = getattr(_local, "fleet_launch", None)
    if fleet_launch is None and kwargs.get("lifecycle") != "spot":
        # (RequestSpotInstances and spot fleets pass lifecycle="spot": no capacity check there,
        # EC2 would leave such a request open rather than fail the call.)
        _check_launch(self, image_id, kwargs, tmpl)
    reservation = original(self, image_id, count, user_data, security_group_names, **kwargs)
    spot_type = _spot_options(tmpl).get("SpotInstanceType", "one-time")
    nested = nested_requested(tmpl)
    for instance in reservation.instances:
        if kwargs.get("instance_market_options") == "spot" and fleet_launch is None:
            instance._nf_spot_type = spot_type
        # Gap: moto drops CpuOptions; DescribeInstances shows them (NestedVirtualization included)
        instance.cpu_options = cpu_options_of(instance.instance_type, nested)
        wants_public = instance.nics[0].public_ip is not None if instance.nics else False
        _hooks.on_launch(self, instance, wants_public)
    return reservation


def _stop_instances(self: Any, instance_ids: list[str]):
    # Gap: moto stops one-time spot instances; EC2 refuses.
    if _hooks is not None:
        for instance in self.get_multi_instances_by_id(instance_ids):
            if instance.lifecycle == "spot" and _spot_type(self, instance) != "persistent":
                raise EC2ClientError(
                    "UnsupportedOperation",
                    "You can't stop the Spot Instance '%s' because it is associated with a one-time Spot Instance "
                    "request. You can only stop Spot Instances associated with persistent Spot Instance requests."
                    % instance.id,
                )
    return _orig(EC2Backend, "stop_instances")(self, instance_ids)


def _spot_type(backend: Any, instance: Any) -> str:
    if getattr(instance, "_nf_spot_type", None):
        return instance._nf_spot_type
    for request in backend.spot_instance_requests.values():
        if getattr(request, "instance", None) is instance:
            return request.type
    return "one-time"


def _instance_terminate(self: Any):
    if _hooks is None:
        return _orig(Instance, "terminate")(self)
    if self._state.name in ("shutting-down", "terminated"):
        return InstanceState(self._state.name, self._state.code)
    previous = InstanceState(self._state.name, self._state.code)
    # Gap: a one-time spot request stays "active" in moto after its instance is gone.
    for request in self.ec2_backend.spot_instance_requests.values():
        if getattr(request, "instance", None) is self and request.type == "one-time":
            request.state = "closed"
            request._status_code = "instance-terminated-by-user"
            request.status_message = "Spot Instance terminated due to user-initiated termination."
    delay = float(getattr(_hooks, "shutdown_seconds", 0) or 0)
    if delay > 0 and "_nf_state_reason" not in self.__dict__:
        set_reason(self, "Client.UserInitiatedShutdown", "User initiated shutdown")
    if delay > 0:
        self._state = InstanceState("shutting-down", 32)
    # The machine stops before the instance is terminated: on EC2 a terminated instance is off
    # (stopping a host can take longer than the shutting-down delay).
    started = time.monotonic()
    _hooks.on_gone(self)
    left = delay - (time.monotonic() - started)
    if left <= 0:
        _terminated(self)
    else:
        # As on EC2: shutting-down for a while (its security groups still in use), then terminated.
        timer = threading.Timer(left, _terminated, args=(self,))
        timer.daemon = True
        timer.start()
    return previous


def _terminated(instance: Any) -> None:
    """moto's terminate, and the moment it happened (its network interface lingers a while)."""
    _orig(Instance, "terminate")(instance)
    instance.__dict__["_nf_terminated_at"] = time.monotonic()


def _still_holds(instance: Any) -> bool:
    """Whether the instance keeps its security groups in use: not terminated yet, or
    terminated less than the sandbox's hold ago (EC2 releases the network interface of a
    terminated instance some time after; DeleteSecurityGroup answers DependencyViolation)."""
    if instance.state != "terminated":
        return True
    at = instance.__dict__.get("_nf_terminated_at")
    hold = float(_hooks.security_group_hold() if _hooks is not None else 0)
    return at is not None and time.monotonic() - at < hold


def _delete_security_group(self: Any, name: str | None = None, group_id: str | None = None) -> None:
    """EC2 refuses to delete a group that an instance still uses (not terminated, or
    terminated a moment ago)."""
    if _hooks is not None:
        wanted = group_id or getattr(self.get_security_group_by_name_or_id(name), "id", None)
        for reservation in list(self.reservations.values()):
            for instance in reservation.instances:
                if not _still_holds(instance):
                    continue
                groups = {getattr(g, "id", None) for g in getattr(instance, "security_groups", None) or []}
                nics = instance.nics.values() if isinstance(instance.nics, dict) else instance.nics
                for nic in nics:
                    groups |= {getattr(g, "id", None) for g in getattr(nic, "group_set", None) or []}
                if wanted in groups:
                    _hooks.faults.served("security_group_in_use", "DeleteSecurityGroup")
                    raise DependencyViolationError(
                        "resource %s has a dependent object (instance %s is %s)" % (wanted, instance.id, instance.state)
                    )
    return _orig(EC2Backend, "delete_security_group")(self, name=name, group_id=group_id)


def _instance_stop(self: Any):
    previous = _orig(Instance, "stop")(self)
    if _hooks is not None and previous.name not in ("stopped", "terminated"):
        _hooks.on_gone(self)
    return previous


def _instance_start(self: Any):
    previous = _orig(Instance, "start")(self)
    set_reason(self, None)
    if _hooks is not None and previous.name == "stopped":
        # A started instance gets a fresh host (its disk is not kept; see the README).
        wants_public = self.nics[0].public_ip is not None if self.nics else False
        _hooks.on_launch(self.ec2_backend, self, wants_public)
    return previous


def mark_spot_request(instance: Any, code: str, at: str) -> None:
    """The status EC2 gives the spot request of an instance it is about to reclaim."""
    for request in instance.ec2_backend.spot_instance_requests.values():
        if getattr(request, "instance", None) is instance:
            request._status_code = code
            request.status_message = "Spot Instance is marked for termination at %s." % at


def set_pending(instance: Any) -> None:
    instance._state = InstanceState("pending", 0)


def set_running(instance: Any) -> None:
    instance._state = InstanceState("running", 16)


def set_reason(instance: Any, code: str | None, message: str = "") -> None:
    """Give the instance EC2's StateReason for what happens next (call before terminate/stop).

    moto's terminate() and stop() write "Client.UserInitiatedShutdown" a moment after the
    state changes; the override wins from the start, so no reader ever sees a wrong reason.
    """
    if code is None:
        instance.__dict__.pop("_nf_state_reason", None)
    else:
        instance.__dict__["_nf_state_reason"] = StateReason("%s: %s" % (code, message), code)


def _get_state_reason(self: Any) -> Any:
    return self.__dict__.get("_nf_state_reason") or self.__dict__.get("state_reason")


def _set_state_reason(self: Any, value: Any) -> None:
    self.__dict__["state_reason"] = value


# --- instant fleets ----------------------------------------------------------------------


class _Candidate:
    def __init__(self, index: int, spec: Any, zone: str | None, pinned: bool) -> None:
        self.index = index
        self.spec = spec
        self.zone = zone
        self.pinned = pinned
        overrides = spec.overrides or {}
        self.priority = float(overrides["Priority"]) if overrides.get("Priority") is not None else math.inf
        self.max_price = overrides.get("MaxPrice")
        self.weight = float(spec.weighted_capacity or 1) or 1.0

    def overrides(self) -> dict[str, Any]:
        overrides = dict(self.spec.overrides or {})
        if self.zone and not self.pinned:
            overrides["AvailabilityZone"] = self.zone
        return overrides

    def launch_template_and_overrides(self) -> dict[str, Any]:
        result: dict[str, Any] = {"LaunchTemplateSpecification": self.spec.launch_template_spec}
        overrides = self.overrides()
        if overrides:
            result["Overrides"] = overrides
        return result


def _fleet_candidates(backend: Any, fleet: Fleet) -> list[_Candidate]:
    region = backend.region_name
    candidates = []
    for index, spec in enumerate(fleet.launch_specs):
        overrides = spec.overrides or {}
        zone = overrides.get("AvailabilityZone")
        if not zone and spec.subnet_id:
            try:
                zone = backend.get_subnet(spec.subnet_id).availability_zone
            except Exception:  # noqa: BLE001 - reported by run_instances itself
                zone = None
        if zone:
            candidates.append(_Candidate(index, spec, zone, True))
            continue
        # Not pinned to a zone: every zone that offers the type is a capacity pool.
        for z in zones_offering(region, spec.instance_type) or [region + "a"]:
            candidates.append(_Candidate(index, spec, z, False))
    return candidates


def _order(candidates: list[_Candidate], market: str, strategy: str) -> list[_Candidate]:
    def price(c: _Candidate) -> float:
        if market == "spot":
            return catalog.spot_price(c.spec.instance_type, c.zone or "") / c.weight
        return catalog.on_demand_price(c.spec.instance_type) / c.weight

    strategy = (strategy or "lowest-price").lower()
    if strategy in ("prioritized", "capacity-optimized-prioritized"):
        return sorted(candidates, key=lambda c: (c.priority, c.index, c.zone or ""))
    if strategy in ("lowest-price", "lowestprice", "price-capacity-optimized"):
        return sorted(candidates, key=lambda c: (price(c), c.index, c.zone or ""))
    # capacity-optimized / diversified: the sandbox has no capacity model; keep the request's order.
    return sorted(candidates, key=lambda c: (c.index, c.zone or ""))


def _create_fleet(self: Any, **kwargs: Any) -> Fleet:
    original = _orig(EC2Backend, "create_fleet")
    if _hooks is None or kwargs.get("fleet_type") != "instant":
        return original(self, **kwargs)
    # Gap: moto launches every instant fleet from its first override (lowest SpotPrice),
    # ignores the allocation strategy and never fails a candidate. Let moto build the fleet
    # record with nothing to launch, then allocate the way EC2 does.
    requested = dict(kwargs["target_capacity_specification"] or {})
    nothing = dict(requested, TotalTargetCapacity=0, SpotTargetCapacity=0, OnDemandTargetCapacity=0)
    fleet = original(self, **dict(kwargs, target_capacity_specification=nothing))
    fleet.target_capacity_specification = requested
    fleet.target_capacity = int(requested.get("TotalTargetCapacity") or 0)
    fleet.spot_target_capacity = int(requested.get("SpotTargetCapacity") or 0)
    fleet.on_demand_target_capacity = int(requested.get("OnDemandTargetCapacity") or 0)
    fleet._nf_instances = []
    fleet.errors = []
    _allocate(self, fleet, kwargs)
    return fleet


def _allocate(backend: Any, fleet: Fleet, kwargs: dict[str, Any]) -> None:
    region = backend.region_name
    spec = fleet.target_capacity_specification
    default_type = spec.get("DefaultTargetCapacityType") or "on-demand"
    needs = {"on-demand": float(fleet.on_demand_target_capacity), "spot": float(fleet.spot_target_capacity)}
    rest = fleet.target_capacity - needs["on-demand"] - needs["spot"]
    if rest > 0:
        needs[default_type] += rest
    candidates = _fleet_candidates(backend, fleet)
    strategies = {
        "spot": (fleet.spot_options or {}).get("AllocationStrategy") or "lowest-price",
        "on-demand": (fleet.on_demand_options or {}).get("AllocationStrategy") or "lowest-price",
    }
    for market in ("on-demand", "spot"):
        needed = needs[market]
        failed_pools: set[tuple[int, str | None]] = set()
        failed_specs: set[int] = set()
        ordered = _order(candidates, market, strategies[market])
        while needed > 0:
            launched = False
            for candidate in ordered:
                if candidate.index in failed_specs or (candidate.index, candidate.zone) in failed_pools:
                    continue
                error = _candidate_error(backend, candidate, market, region)
                if error is not None:
                    code, message, whole_spec = error
                    reported = _Candidate(candidate.index, candidate.spec, None, True) if whole_spec else candidate
                    fleet.errors.append(
                        {
                            "LaunchTemplateAndOverrides": reported.launch_template_and_overrides(),
                            "Lifecycle": market,
                            "ErrorCode": code,
                            "ErrorMessage": message,
                        }
                    )
                    if whole_spec:
                        failed_specs.add(candidate.index)
                    else:
                        failed_pools.add((candidate.index, candidate.zone))
                    continue
                if strategies[market].lower() == "diversified":
                    count = 1
                else:
                    count = max(1, math.ceil(needed / candidate.weight))
                try:
                    _launch(backend, fleet, candidate, market, count)
                except (EC2ClientError, EC2HTTPError) as exc:
                    fleet.errors.append(
                        {
                            "LaunchTemplateAndOverrides": candidate.launch_template_and_overrides(),
                            "Lifecycle": market,
                            "ErrorCode": getattr(exc, "ec2_code", None) or exc.code,
                            "ErrorMessage": getattr(exc, "ec2_message", None) or exc.message,
                        }
                    )
                    failed_pools.add((candidate.index, candidate.zone))
                    continue
                needed -= count * candidate.weight
                launched = True
                if strategies[market].lower() == "diversified":
                    # next unit from the next pool
                    ordered = ordered[ordered.index(candidate) + 1 :] + ordered[: ordered.index(candidate) + 1]
                break
            if not launched:
                break


def _candidate_error(backend: Any, candidate: _Candidate, market: str, region: str):
    """(code, message, applies_to_whole_spec) when EC2 would not launch this pool, else None."""
    instance_type = candidate.spec.instance_type
    ami = backend.amis.get(candidate.spec.image_id or "")
    arches = type_architectures(instance_type)
    if not arches:
        err = invalid_instance_type(instance_type)
        return (err.code, err.message, True)
    if ami is None:
        return ("InvalidAMIID.NotFound", "The image id '[%s]' does not exist" % candidate.spec.image_id, True)
    if ami.architecture not in arches:
        err = architecture_mismatch(instance_type, arches[0], ami.architecture)
        return (err.code, err.message, True)
    if nested_requested(_spec_template(backend, candidate.spec)) and not supports_nested(instance_type):
        err = nested_unsupported(instance_type)
        return (err.code, err.message, True)
    offered = zones_offering(region, instance_type)
    if candidate.pinned and offered and candidate.zone not in offered:
        err = unsupported_in_zone(instance_type, candidate.zone or "", region)
        return (err.code, err.message, True)
    faults = _hooks.faults
    if not candidate.pinned:
        # a fault without a zone takes the whole override out, once
        fault = faults.capacity_error(region, instance_type, None, market)
        if fault:
            exc = capacity_exception(fault, instance_type, None, market, region)
            return (fault.get("code") or "InsufficientInstanceCapacity", _message_of(exc), True)
    fault = faults.capacity_error(region, instance_type, candidate.zone, market)
    if fault:
        exc = capacity_exception(fault, instance_type, candidate.zone, market, region)
        return (fault.get("code") or "InsufficientInstanceCapacity", _message_of(exc), candidate.pinned)
    if market == "spot" and candidate.max_price:
        price = catalog.spot_price(instance_type, candidate.zone or "")
        if float(candidate.max_price) < price:
            return (
                "SpotMaxPriceTooLow",
                "Your Spot request price of %s is lower than the minimum required Spot request fulfillment "
                "price of %s." % (candidate.max_price, price),
                False,
            )
    return None


def _spec_template(backend: Any, spec: Any) -> dict[str, Any]:
    template_spec = spec.launch_template_spec or {}
    lt_arg = {"LaunchTemplateId": template_spec.get("LaunchTemplateId"), "Version": template_spec.get("Version")}
    try:
        return backend._get_template_from_args(lt_arg).data or {}
    except Exception:  # noqa: BLE001 - a bad template is reported by the launch itself
        return {}


def _message_of(exc: Any) -> str:
    return getattr(exc, "ec2_message", None) or getattr(exc, "message", str(exc))


def _launch(backend: Any, fleet: Fleet, candidate: _Candidate, market: str, count: int) -> None:
    spec = candidate.spec
    template_spec = spec.launch_template_spec or {}
    lt_arg = {"LaunchTemplateId": template_spec.get("LaunchTemplateId"), "Version": template_spec.get("Version")}
    tmpl = backend._get_template_from_args(lt_arg).data or {}
    nics = tmpl.get("NetworkInterfaces") or []
    public = None
    if nics and nics[0].get("AssociatePublicIpAddress") is not None:
        public = str(nics[0]["AssociatePublicIpAddress"]).lower() == "true"
    tags = {k: dict(v) for k, v in (spec.tag_specifications or {}).items()}
    tags.setdefault("instance", {})["aws:ec2:fleet-id"] = fleet.id
    launch_kwargs: dict[str, Any] = {
        "instance_type": spec.instance_type,
        "is_instance_type_default": False,
        "key_name": spec.key_name,
        "placement": None if spec.subnet_id else candidate.zone,
        "region_name": backend.region_name,
        "subnet_id": spec.subnet_id,
        "fleet_id": fleet.id,
        "tags": tags,
        "launch_template": lt_arg,
        "instance_initiated_shutdown_behavior": tmpl.get("InstanceInitiatedShutdownBehavior"),
        # groups given on the template's interface apply as EC2 applies them (moto drops them)
        "security_group_ids": tmpl.get("SecurityGroupIds") or list((nics[0].get("Groups") if nics else None) or []),
        "ebs_optimized": bool(spec.ebs_optimized),
    }
    if market == "spot":
        launch_kwargs["instance_market_options"] = "spot"
        launch_kwargs["lifecycle"] = "spot"
    if tmpl.get("BlockDeviceMappings"):
        launch_kwargs["block_device_mappings"] = tmpl["BlockDeviceMappings"]
    launch_kwargs["associate_public_ip"] = public  # None: the subnet's MapPublicIpOnLaunch decides
    _local.fleet_launch = {}
    try:
        reservation = backend.run_instances(
            spec.image_id,
            count,
            spec.user_data,
            list(spec.group_set or []) if not launch_kwargs["security_group_ids"] else [],
            **launch_kwargs,
        )
    finally:
        _local.fleet_launch = None
    for instance in reservation.instances:
        if market == "spot":
            instance._nf_spot_type = "one-time"
        fleet.on_demand_instances.append({"id": reservation.id, "instance": instance, "launch_spec": spec})
    fleet._nf_instances.append(
        {
            "LaunchTemplateAndOverrides": candidate.launch_template_and_overrides(),
            "Lifecycle": market,
            "InstanceIds": [i.id for i in reservation.instances],
            "InstanceType": spec.instance_type,
            "Platform": None,
        }
    )
    fleet.fulfilled_capacity += count * candidate.weight
    if market == "spot":
        fleet.fulfilled_spot_capacity += count * candidate.weight
    else:
        fleet.fulfilled_on_demand_capacity += count * candidate.weight


def _fleet_instances(self: Fleet):
    # Gap: moto rebuilds Instances[] from its own bookkeeping, which labels every
    # instance of the sandbox's allocation "on-demand"; report what was launched.
    if getattr(self, "_nf_instances", None) is not None:
        return [{k: v for k, v in entry.items() if v is not None} for entry in self._nf_instances]
    return _orig_fleet_instances(self)


def _fleet_terminate_instances(self: Fleet) -> None:
    # Gap: DeleteFleets(TerminateInstances=True) on a fleet whose instances are all gone
    # fails in moto ("No instances specified", from TerminateInstances with an empty list);
    # EC2 just deletes the fleet.
    live = [
        i
        for i in [r.instance for r in self.spot_requests] + [r["instance"] for r in self.on_demand_instances]
        if i.state != "terminated"
    ]
    if _hooks is not None and not live:
        return
    _orig(Fleet, "terminate_instances")(self)


def _live_tags(self: Any) -> Any:
    # Gap: moto copies a launch template's tags at creation, so DescribeLaunchTemplates
    # missed CreateTags/DeleteTags (EC2 shows them; the reaper reads the expiry there).
    return self.get_tags() if _hooks is not None else self.__dict__.get("_nf_tags", [])


def _set_tags(self: Any, value: Any) -> None:
    self.__dict__["_nf_tags"] = value


def _orig_fleet_instances(fleet: Fleet):
    prop = _originals.get((Fleet, "instances"))
    return prop.fget(fleet) if prop is not None and prop is not _MISSING else None


# --- responses ---------------------------------------------------------------------------


def _response_run_instances(self: Any):
    # Gap: moto drops InstanceMarketOptions.SpotOptions (MaxPrice, SpotInstanceType).
    _local.spot_options = self._get_param("InstanceMarketOptions.SpotOptions", {}) or {}
    # Gap: moto drops CpuOptions (NestedVirtualization)
    _local.cpu_options = self._get_param("CpuOptions", {}) or {}
    try:
        return _orig(InstanceResponse, "run_instances")(self)
    finally:
        _local.spot_options = None
        _local.cpu_options = None


def _response_create_fleet(self: Any):
    # Gaps: moto's CreateFleet reply has no Errors[], and it ignores ClientToken (EC2
    # answers a repeated token with the fleet it created the first time).
    token = self._get_param("ClientToken") if _hooks is not None else None
    known = getattr(self.ec2_backend, "_nf_fleet_tokens", None)
    if known is None:
        known = self.ec2_backend._nf_fleet_tokens = {}
    if token and token in known:
        return ActionResult(dict(known[token]))
    result = _create_fleet_reply(self)
    if token and isinstance(result, ActionResult) and isinstance(result.result, dict):
        known[token] = dict(result.result)
    return result


MAX_INSTANT_FLEET_DELETIONS = 25  # per DeleteFleets request (EC2 API reference)
FLEET_ID_RE = re.compile(r"^fleet-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _response_delete_fleets(self: Any):
    # Gaps: moto answers an unknown fleet id with a 500, deletes a deleted fleet again,
    # reports every previous state as "active", and lets an instant fleet be deleted
    # without its instances. EC2 documents: instant fleets go only with their instances
    # (TerminateInstances=true), at most 25 of them per request (else nothing is deleted),
    # and a fleet that cannot be deleted is listed in UnsuccessfulFleetDeletions with
    # fleetIdDoesNotExist, fleetIdMalformed or fleetNotInDeletableState.
    if _hooks is None:
        return _orig(Fleets, "delete_fleets")(self)
    fleet_ids = self._get_param("FleetIds", [])
    terminate = self._get_bool_param("TerminateInstances")
    if terminate is None:
        raise EC2ClientError("MissingParameter", "The request must contain the parameter TerminateInstances")
    fleets = self.ec2_backend.fleets
    instant = [i for i in fleet_ids if i in fleets and fleets[i].fleet_type == "instant"]
    if len(instant) > MAX_INSTANT_FLEET_DELETIONS:
        raise EC2ClientError(
            "InvalidParameterValue",
            "You can delete up to %d instant fleets in a single request; no fleet was deleted."
            % MAX_INSTANT_FLEET_DELETIONS,
        )
    if instant and not terminate:
        raise EC2ClientError(
            "InvalidParameterCombination",
            "Instant fleets (%s) can only be deleted with their instances: TerminateInstances must be true."
            % ", ".join(instant),
        )
    done, failed = [], []
    for fleet_id in fleet_ids:
        fleet = fleets.get(fleet_id)
        if fleet is None:
            code = "fleetIdMalformed" if not FLEET_ID_RE.match(fleet_id) else "fleetIdDoesNotExist"
            failed.append(
                {
                    "FleetId": fleet_id,
                    "Error": {
                        "Code": code,
                        "Message": "The fleet ID %r" % fleet_id
                        + (" is malformed" if code == "fleetIdMalformed" else " does not exist"),
                    },
                }
            )
            continue
        if str(fleet.state).startswith("deleted"):
            failed.append(
                {
                    "FleetId": fleet_id,
                    "Error": {"Code": "fleetNotInDeletableState", "Message": "The fleet is %s" % fleet.state},
                }
            )
            continue
        previous = fleet.state
        [deleted] = self.ec2_backend.delete_fleets([fleet_id], terminate)
        done.append({"CurrentFleetState": deleted.state, "PreviousFleetState": previous, "FleetId": fleet_id})
    return ActionResult({"SuccessfulFleetDeletions": done, "UnsuccessfulFleetDeletions": failed})


def _create_fleet_reply(self: Any):
    result = _orig(Fleets, "create_fleet")(self)
    if _hooks is not None and isinstance(result, ActionResult) and isinstance(result.result, dict):
        fleet = self.ec2_backend.get_fleet(result.result["FleetId"])
        if fleet is not None and getattr(fleet, "errors", None) is not None:
            body = dict(result.result)
            body["Errors"] = fleet.errors
            body["Instances"] = fleet.instances or []
            return ActionResult(body)
    return result


def _response_describe_spot_price_history(self: Any):
    # Gap: moto answers 0.00001 for every type, zone and time.
    original = _orig(SpotInstances, "describe_spot_price_history")
    if _hooks is None:
        return original(self)
    types = self._get_param("InstanceTypes", [])
    filters = self._filters_from_querystring()
    descriptions = (
        self._get_param("ProductDescriptions", [])
        or filters.get("product-description")
        or [
            "Linux/UNIX",
            "Linux/UNIX (Amazon VPC)",
        ]
    )
    if self._get_param("AvailabilityZone"):
        filters = dict(filters, **{"availability-zone": [self._get_param("AvailabilityZone")]})
    start = _parse_time(self._get_param("StartTime"))
    end = _parse_time(self._get_param("EndTime"))
    offers = self.ec2_backend.describe_spot_price_history(types, {})
    now = datetime.now(timezone.utc).replace(microsecond=0)
    current_since = now.replace(minute=0, second=0) - timedelta(hours=1)
    previous_since = current_since - timedelta(hours=29)
    history = []
    for offer in offers:
        instance_type, zone = offer["InstanceType"], offer["Location"]
        if not _matches(filters.get("availability-zone"), zone):
            continue
        if not _matches(filters.get("instance-type"), instance_type):
            continue
        for description in descriptions:
            if description not in ("Linux/UNIX", "Linux/UNIX (Amazon VPC)"):
                continue
            points = [
                (current_since, catalog.spot_price(instance_type, zone)),
                (previous_since, catalog.spot_price(instance_type, zone, previous=True)),
            ]
            for i, (since, price) in enumerate(points):
                until = points[i - 1][0] if i else None
                if end and since > end:
                    continue
                if start and until is not None and until <= start:
                    continue
                history.append(
                    {
                        "AvailabilityZone": zone,
                        "InstanceType": instance_type,
                        "ProductDescription": description,
                        "SpotPrice": "%.6f" % price,
                        "Timestamp": since,
                    }
                )
    history.sort(key=lambda h: (h["Timestamp"], h["InstanceType"], h["AvailabilityZone"]), reverse=True)
    max_results = int(self._get_param("MaxResults") or 1000)
    token = int(self._get_param("NextToken") or 0)
    page = history[token : token + max_results]
    result: dict[str, Any] = {"SpotPriceHistory": page}
    if token + max_results < len(history):
        result["NextToken"] = str(token + max_results)
    return ActionResult(result)


def _matches(patterns: list[str] | None, value: str) -> bool:
    return patterns is None or any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value).replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = datetime.fromtimestamp(float(text), tz=timezone.utc)
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
