# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: what launching an EC2 builder looks up, creates and waits for; no stable interface.
"""What launching a builder looks up, creates and waits for.

``Launch`` takes the module's parameters (the names of ec2_spot_host's options) and a
``warn`` callback; lookups change nothing and also run in check mode.
"""

from __future__ import annotations

import datetime
import socket
import time
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import (
    NixforgeError,
    ProviderError,
    UserInputError,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import (
    TAG_EXPIRES_AT,
    TAG_PIPELINE,
    BuildIdentity,
    format_timestamp,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._waiter import wait_for
from ansible_collections.nixforge.images.plugins.module_utils._ec2._client import filters, tag_dict, tag_specifications
from ansible_collections.nixforge.images.plugins.module_utils._ec2._fleet import (
    DEFAULT_INSTANCE_TYPES,
    Candidate,
    price_bound,
)
from ansible_collections.nixforge.images.plugins.module_utils._ec2._nested import NESTED_CPU_OPTIONS, instance_kvm
from ansible_collections.nixforge.images.plugins.module_utils._ec2._resources import SSH_PORT, BuildResources

DEBIAN_OWNER = "136693071363"
DEBIAN_ARCH = {"arm64": "arm64", "x86_64": "amd64"}
VOLUME_TYPES = ["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"]
# what EC2 answers a create whose name is taken
DUPLICATE_CODES = (
    "InvalidKeyPair.Duplicate",
    "InvalidGroup.Duplicate",
    "InvalidLaunchTemplateName.AlreadyExistsException",
)


class Launch:
    """What creating a builder needs; the build's existing resources are ``resources``'
    (a :class:`BuildResources`, the teardown's too), held rather than inherited."""

    def __init__(
        self,
        client: Any,
        build: BuildIdentity,
        params: Mapping[str, Any],
        warn: Callable[[str], None],
        resources: Optional[BuildResources] = None,
    ) -> None:
        self.client = client
        self.build = build
        self.build_id = build.build_id
        self.wait = params["wait"]
        self.wait_timeout = params["wait_timeout"]
        self.params = params
        self.warn = warn
        self.resources = resources or BuildResources(client, build, self.wait, self.wait_timeout)

    # -- lookups -----------------------------------------------------------------------

    def find_image(self) -> Dict[str, Any]:
        p = self.params
        if p["image_id"]:
            images = self.client.call(
                "describe_images", what="Looking up the AMI", parameter="image_id", ImageIds=[p["image_id"]]
            ).get("Images", [])
            if not images:
                raise UserInputError(
                    "AMI %s does not exist in %s" % (p["image_id"], p["region"]),
                    hint="Check the id and the region, or leave 'image_id' unset for the Debian default",
                    parameter="image_id",
                )
            return images[0]
        name = p["image_name"] or "debian-%s-%s-*" % (p["debian_release"], DEBIAN_ARCH[p["architecture"]])
        images = self.client.paginate(
            "describe_images",
            "Images",
            what="Looking up the AMI",
            parameter="image_name",
            Owners=[p["image_owner"]],
            Filters=filters({"name": name, "architecture": p["architecture"], "state": "available"}),
        )
        if not images:
            raise UserInputError(
                "no available %s AMI named %r from owner %s in %s"
                % (p["architecture"], name, p["image_owner"], p["region"]),
                hint="Check 'debian_release', 'architecture', 'image_name' and 'image_owner', or give 'image_id'",
                parameter="image_name" if p["image_name"] else "debian_release",
            )
        return max(images, key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")))

    def check_instance_types(self, instance_types: List[str], architecture: str) -> Dict[str, Dict[str, Any]]:
        """EC2's description of each type, once each exists and can run ``architecture``."""
        examples = ", ".join(DEFAULT_INSTANCE_TYPES.get(architecture, []))
        try:
            reply = self.client.call(
                "describe_instance_types", what="Looking up the instance types", InstanceTypes=instance_types
            )
        except NixforgeError as exc:
            if exc.code in ("InvalidInstanceType", "InvalidParameterValue"):
                raise UserInputError(
                    exc.details.get("provider_message") or exc.msg,
                    hint="Use instance types that exist in %s, for example %s" % (self.params["region"], examples),
                    parameter="instance_types",
                ) from None
            raise
        found = {t["InstanceType"]: t for t in reply.get("InstanceTypes", [])}
        unknown = [t for t in instance_types if t not in found]
        if unknown:
            raise UserInputError(
                "unknown instance type(s) %s" % ", ".join(unknown),
                hint="Use instance types that exist in %s" % self.params["region"],
                parameter="instance_types",
            )
        wrong = []
        for t in instance_types:
            arches = (found[t].get("ProcessorInfo") or {}).get("SupportedArchitectures") or []
            if architecture not in arches:
                wrong.append("%s (%s)" % (t, "/".join(arches) or "unknown"))
        if wrong:
            raise UserInputError(
                "the AMI is %s but %s cannot run it" % (architecture, ", ".join(wrong)),
                hint="Choose %s instance types, for example %s, or change 'architecture'" % (architecture, examples),
                parameter="instance_types",
            )
        return found

    def offered(self, candidates: List[Candidate]) -> List[Candidate]:
        """Drop the candidates whose type EC2 does not offer in their zone.

        A type the offerings API says nothing about is kept (EC2 then answers for it).
        """
        types = sorted(set(c["instance_type"] for c in candidates))
        offerings = self.client.paginate(
            "describe_instance_type_offerings",
            "InstanceTypeOfferings",
            what="Looking up where the instance types are offered",
            LocationType="availability-zone",
            Filters=filters({"instance-type": types}),
        )
        zones: Dict[str, set] = {}
        for offering in offerings:
            zones.setdefault(offering["InstanceType"], set()).add(offering["Location"])
        kept = [
            c
            for c in candidates
            if c["instance_type"] not in zones or c["availability_zone"] in zones[c["instance_type"]]
        ]
        if not kept:
            raise UserInputError(
                "none of %s is offered in the zones of the subnets (%s)"
                % (", ".join(types), ", ".join(sorted(set(c["availability_zone"] for c in candidates)))),
                hint="Choose other instance types, or subnets in other availability zones",
                parameter="instance_types",
            )
        for t in types:
            if t in zones and not any(c["instance_type"] == t for c in kept):
                self.warn("%s is not offered in any of the subnets' zones; it is not tried" % t)
        return kept

    def find_subnets(self) -> List[Dict[str, Any]]:
        p = self.params
        if p["subnet_ids"]:
            subnets = self.client.call(
                "describe_subnets", what="Looking up the subnets", parameter="subnet_ids", SubnetIds=p["subnet_ids"]
            ).get("Subnets", [])
            vpcs = sorted(set(s["VpcId"] for s in subnets))
            if len(vpcs) > 1:
                raise UserInputError(
                    "the subnets are in different VPCs (%s)" % ", ".join(vpcs),
                    hint="Give subnets of one VPC; the security group belongs to one VPC",
                    parameter="subnet_ids",
                )
        else:
            subnets = self.client.paginate(
                "describe_subnets",
                "Subnets",
                what="Looking up the default subnets",
                Filters=filters({"default-for-az": "true"}),
            )
            if p["availability_zones"]:
                subnets = [s for s in subnets if s["AvailabilityZone"] in set(p["availability_zones"])]
        if not subnets:
            raise UserInputError(
                "no subnet to launch into in %s%s"
                % (p["region"], " in zones %s" % ", ".join(p["availability_zones"]) if p["availability_zones"] else ""),
                hint="Give 'subnet_ids', or check 'availability_zones' (the default VPC's default subnets are used)",
                parameter="subnet_ids" if p["subnet_ids"] else "availability_zones",
            )
        return subnets

    def check_key_pair_exists(self, name: str) -> None:
        try:
            self.client.call("describe_key_pairs", what="Looking up the key pair", KeyNames=[name])
        except NixforgeError as exc:
            if exc.code == "InvalidKeyPair.NotFound":
                raise UserInputError(
                    "key pair %r does not exist in %s" % (name, self.params["region"]),
                    hint="Create it first, or give 'public_key' to import a per-build key",
                    parameter="key_name",
                ) from None
            raise

    # -- creation ----------------------------------------------------------------------

    def create(self, operation: str, find: Callable[[], List[Mapping[str, Any]]], **kwargs: Any) -> Any:
        """``operation`` (a create); when EC2 answers that the resource exists, the build's own
        one is taken instead (``find``; ``owned`` refuses another build's). The create is
        retried on 5xx and dropped connections: when the answer to a request that EC2 carried
        out was lost, the retry meets the resource the first attempt made."""
        try:
            return self.client.call(operation, **kwargs)
        except ProviderError as exc:
            if exc.code not in DUPLICATE_CODES:
                raise
            found = find()
            if not found:
                raise
            return found[0]

    def find_key_pairs(self, name: str) -> List[Mapping[str, Any]]:
        return self.resources.find_owned("key pair", name, "describe_key_pairs", "KeyPairs", **{"key-name": name})

    def import_key_pair(self, name: str, public_key: str, tags: Mapping[str, str]) -> None:
        for _pair in self.find_key_pairs(name):
            # ours, from an earlier attempt: replace it (the key may have changed)
            self.client.call("delete_key_pair", what="Replacing the build's key pair", KeyName=name)
        self.create(
            "import_key_pair",
            lambda: self.find_key_pairs(name),
            what="Importing the key pair",
            parameter="public_key",
            KeyName=name,
            PublicKeyMaterial=public_key.encode("ascii"),
            TagSpecifications=tag_specifications(["key-pair"], tags),
        )

    def ensure_security_group(
        self, vpc_id: str, cidrs: List[str], tags: Mapping[str, str], existing: Optional[Mapping[str, Any]]
    ) -> str:
        """Create the build's SSH-only group (or reset the one ``existing``); its id."""
        if existing:
            group_id = existing["GroupId"]
            if existing.get("IpPermissions"):
                self.client.call(
                    "revoke_security_group_ingress",
                    what="Resetting the security group's rules",
                    GroupId=group_id,
                    IpPermissions=existing["IpPermissions"],
                )
        else:
            group_id = self.create(
                "create_security_group",
                lambda: self.resources.find_security_group(vpc_id),
                what="Creating the security group",
                GroupName=self.build.resource_name("ssh"),
                Description="SSH to the nixforge builder of build %s" % self.build_id,
                VpcId=vpc_id,
                TagSpecifications=tag_specifications(["security-group"], tags),
            )["GroupId"]
        permission: Dict[str, Any] = {"IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT}
        v4 = [{"CidrIp": c, "Description": "controller"} for c in cidrs if ":" not in c]
        v6 = [{"CidrIpv6": c, "Description": "controller"} for c in cidrs if ":" in c]
        if v4:
            permission["IpRanges"] = v4
        if v6:
            permission["Ipv6Ranges"] = v6
        self.client.call(
            "authorize_security_group_ingress",
            what="Allowing SSH in the security group",
            parameter="ssh_cidr",
            GroupId=group_id,
            IpPermissions=[permission],
        )
        return group_id

    def template_data(
        self, image: Mapping[str, Any], key_name: str, sg_id: str, user_data: str, nested: bool = False
    ) -> Dict[str, Any]:
        """LaunchTemplateData; ``nested`` asks for the nested virtualization CPU option."""
        p = self.params
        tags = self.build.tags({"Name": self.instance_name})
        data = {
            "ImageId": image["ImageId"],
            "KeyName": key_name,
            # Groups on the interface, not SecurityGroupIds: EC2 refuses both together, and the
            # interface is where the public address is asked for (fleet overrides set the subnet).
            "NetworkInterfaces": [
                {
                    "DeviceIndex": 0,
                    "AssociatePublicIpAddress": bool(p["public_ip"]),
                    "Groups": [sg_id],
                    "DeleteOnTermination": True,
                }
            ],
            "UserData": user_data,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "BlockDeviceMappings": [
                {
                    "DeviceName": image.get("RootDeviceName") or "/dev/xvda",
                    "Ebs": {
                        "VolumeSize": p["volume_size"],
                        "VolumeType": p["volume_type"],
                        "DeleteOnTermination": True,
                    },
                }
            ],
            "TagSpecifications": tag_specifications(["instance", "volume", "network-interface"], tags),
        }
        if nested:
            data["CpuOptions"] = dict(NESTED_CPU_OPTIONS)
        return data

    @property
    def instance_name(self) -> str:
        return self.params["instance_name"] or self.build.user_tags.get("Name") or "nixforge-%s" % self.build_id

    def find_launch_templates(self, name: str) -> List[Mapping[str, Any]]:
        spec = {"launch-template-name": name}
        return self.resources.find_owned(
            "launch template", name, "describe_launch_templates", "LaunchTemplates", **spec
        )

    def create_launch_template(self, data: Dict[str, Any], tags: Mapping[str, str], suffix: str = "lt") -> str:
        name = self.build.resource_name(suffix)
        for template in self.find_launch_templates(name):
            self.client.call(
                "delete_launch_template",
                what="Replacing the build's launch template",
                LaunchTemplateId=template["LaunchTemplateId"],
            )
        reply = self.create(
            "create_launch_template",
            lambda: [{"LaunchTemplate": t} for t in self.find_launch_templates(name)],
            what="Creating the launch template",
            LaunchTemplateName=name,
            LaunchTemplateData=data,
            TagSpecifications=tag_specifications(["launch-template"], tags),
            # EC2 answers a repeated request with the same token with the same template
            ClientToken=uuid.uuid4().hex,
        )
        return str(reply["LaunchTemplate"]["LaunchTemplateId"])

    def adoption(self, instances: List[Dict[str, Any]], build: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """``(the instance to adopt, return values read from it)``: the newest of the build's."""
        instance = instances[-1]
        if len(instances) > 1:
            self.warn(
                "build %s has %d live instances (%s); adopting the newest, %s. Run with state=absent to clean up."
                % (self.build_id, len(instances), ", ".join(i["InstanceId"] for i in instances), instance["InstanceId"])
            )
        tags = tag_dict(instance.get("Tags"))
        groups = [g.get("GroupId") for g in instance.get("SecurityGroups") or []]
        facts: Dict[str, Any] = {
            "build": dict(
                build,
                pipeline=tags.get(TAG_PIPELINE, build["pipeline"]),
                expires_at=tags.get(TAG_EXPIRES_AT, build["expires_at"]),
            ),
            "tags": tags,
            "adopted": True,
            "security_group_id": groups[0] if groups else None,
            "image_name": None,
        }
        for key, tag in (("launch_template_id", "aws:ec2launchtemplate:id"), ("fleet_id", "aws:ec2:fleet-id")):
            if tags.get(tag):
                facts[key] = tags[tag]
        return instance, facts

    # -- waiting and describing ----------------------------------------------------------

    @property
    def address_kind(self) -> str:
        return "public" if self.params["public_ip"] else "private"

    def address_of(self, instance: Mapping[str, Any]) -> Optional[str]:
        return instance.get("PublicIpAddress" if self.params["public_ip"] else "PrivateIpAddress")

    def describe_instance(self, instance_id: str) -> Optional[Dict[str, Any]]:
        reply = self.client.call(
            "describe_instances",
            what="Describing instance %s" % instance_id,
            ignore_codes=["InvalidInstanceID.NotFound"],  # eventual consistency right after launch
            InstanceIds=[instance_id],
        )
        for reservation in (reply or {}).get("Reservations", []):
            for instance in reservation.get("Instances", []):
                return dict(instance)
        return None

    def probe_running(self, instance_id: str) -> Dict[str, Any]:
        instance = self.describe_instance(instance_id) or {"State": {"Name": "unknown"}}
        state = instance.get("State", {}).get("Name")
        if state in ("shutting-down", "terminated", "stopping", "stopped"):
            reason = (instance.get("StateReason") or {}).get("Message") or "no reason given"
            raise ProviderError(
                "instance %s went to %s while starting (%s)" % (instance_id, state, reason),
                hint="Spot capacity may have been reclaimed; run again (other candidates are tried)",
                what="Starting the builder",
            )
        return instance

    def wait_until_ready(self, instance_id: str) -> Dict[str, Any]:
        """The instance once it runs with an address and SSH answers (when ``wait``)."""
        deadline = time.monotonic() + self.wait_timeout
        if not self.wait:
            return self.describe_instance(instance_id) or {"InstanceId": instance_id}
        instance = wait_for(
            lambda: self.probe_running(instance_id),
            timeout=self.wait_timeout,
            what="instance %s to be running with a %s address" % (instance_id, self.address_kind),
            done=lambda i: i.get("State", {}).get("Name") == "running" and bool(self.address_of(i)),
            describe=lambda i: (
                "%s, %s address %s"
                % (i.get("State", {}).get("Name"), self.address_kind, self.address_of(i) or "none yet")
            ),
            # EC2 starts most instances within seconds: early looks end the wait close to it
            first_interval=0.25,
            interval=1.0,
            max_interval=10.0,
        )
        address = self.address_of(instance)
        wait_for(
            lambda: ssh_banner(address),
            timeout=max(0.0, deadline - time.monotonic()),
            option_value=self.wait_timeout,
            what="SSH on %s:%d (instance %s)" % (address, SSH_PORT, instance_id),
            done=lambda state: state.startswith("SSH-"),
            # a TCP connection to the instance, no API call: looking often costs nothing
            first_interval=0.1,
            interval=0.25,
            max_interval=1.0,
            hint="Check that 'ssh_cidr' contains the controller's address as the instance sees it",
        )
        return instance

    def enforce_safety(self, instance: Mapping[str, Any], sg_id: str) -> None:
        """Make sure the instance terminates on shutdown and sits in the SSH-only group.

        The launch template asks for both; this verifies it on the instance, because an
        EC2-compatible API that drops either leaves a machine that outlives its build or
        is reachable from elsewhere.
        """
        instance_id = instance["InstanceId"]
        behaviour = self.client.call(
            "describe_instance_attribute",
            what="Checking the shutdown behaviour",
            InstanceId=instance_id,
            Attribute="instanceInitiatedShutdownBehavior",
        ).get("InstanceInitiatedShutdownBehavior", {})
        if behaviour.get("Value") != "terminate":
            self.client.call(
                "modify_instance_attribute",
                what="Setting the shutdown behaviour to terminate",
                InstanceId=instance_id,
                InstanceInitiatedShutdownBehavior={"Value": "terminate"},
            )
        if [g.get("GroupId") for g in instance.get("SecurityGroups") or []] != [sg_id]:
            self.client.call(
                "modify_instance_attribute",
                what="Putting the instance in the SSH-only security group",
                InstanceId=instance_id,
                Groups=[sg_id],
            )

    def current_spot_price(self, instance: Mapping[str, Any]) -> Optional[float]:
        """The latest Linux spot price of the instance's type in its zone, or None."""
        zone = (instance.get("Placement") or {}).get("AvailabilityZone")
        try:
            history = self.client.call(
                "describe_spot_price_history",
                what="Reading the spot price",
                InstanceTypes=[instance.get("InstanceType")],
                AvailabilityZone=zone,
                MaxResults=20,
            ).get("SpotPriceHistory", [])
        except NixforgeError as exc:
            self.warn("could not read the spot price: %s" % exc)
            return None
        linux = [h for h in history if str(h.get("ProductDescription", "")).startswith("Linux/UNIX")]
        linux = [h for h in linux if h.get("AvailabilityZone") in (None, zone)]
        if not linux:
            return None
        latest = max(linux, key=lambda h: str(h.get("Timestamp", "")))
        try:
            return float(latest["SpotPrice"])
        except (KeyError, TypeError, ValueError):
            return None

    def instance_result(
        self, instance: Mapping[str, Any], max_price: Optional[str], price_overrides: Mapping[str, float]
    ) -> Dict[str, Any]:
        """The return values describing ``instance``, with its price upper bound and spot price."""
        placement = instance.get("Placement") or {}
        launch_time = instance.get("LaunchTime")
        lifecycle = instance.get("InstanceLifecycle") or "on-demand"
        bound, source = price_bound(str(instance.get("InstanceType")), lifecycle, max_price, price_overrides)
        return dict(
            max_price=bound,
            max_price_source=source,
            spot_price=self.current_spot_price(instance) if lifecycle == "spot" else None,
            instance_id=instance.get("InstanceId"),
            instance_type=instance.get("InstanceType"),
            availability_zone=placement.get("AvailabilityZone"),
            subnet_id=instance.get("SubnetId"),
            lifecycle=lifecycle,
            public_ip=instance.get("PublicIpAddress"),
            private_ip=instance.get("PrivateIpAddress"),
            ssh_host=self.address_of(instance) or instance.get("PublicIpAddress") or instance.get("PrivateIpAddress"),
            launched_at=format_timestamp(launch_time) if isinstance(launch_time, datetime.datetime) else None,
            **instance_kvm(instance),
        )


def ssh_banner(address: Optional[str], port: int = SSH_PORT, timeout: float = 5.0, connect_timeout: float = 2.0) -> str:
    """``SSH-2.0-...`` when an SSH server answers on ``address:port``, else what happened.

    The connect timeout is short: while the instance boots its SYNs go unanswered, and the
    caller probes again anyway; waiting 5 s per probe added up to seconds of every launch."""
    if not address:
        return "no address"
    try:
        with socket.create_connection((address, port), timeout=connect_timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except socket.timeout:
        return "no answer on port %d (timeout)" % port
    except OSError as exc:
        return "port %d: %s" % (port, exc.strerror or exc)
    line = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    return line if line.startswith("SSH-") else "port %d answered without an SSH banner" % port
