# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: an EC2 build's resources: lookups and teardown; no stable interface.
"""The resources of one build (key pair, security group, launch template,
fleets, instances, volumes): lookups, creation and teardown.

Used by ec2_spot_host and meant for the reaper and the inventory plugin: everything is
found by the ``nixforge-build-id`` tag.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import (
    NixforgeError,
    ProviderError,
    UserInputError,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import TAG_BUILD_ID, BuildIdentity
from ansible_collections.nixforge.images.plugins.module_utils._base._module import Action
from ansible_collections.nixforge.images.plugins.module_utils._base._waiter import wait_for
from ansible_collections.nixforge.images.plugins.module_utils._ec2._client import filters, tag_dict
from ansible_collections.nixforge.images.plugins.module_utils._ec2._discovery import (
    find_fleets,
    find_instances,
    find_tagged,
)

SSH_PORT = 22
LIVE_STATES = ["pending", "running"]
NOT_TERMINATED_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
# kind of resource in ``removed`` -> (text in actions, id field)
RESOURCE_KINDS = {
    "fleets": ("fleet", "FleetId"),
    "instances": ("instance", "InstanceId"),
    "launch_templates": ("launch template", "LaunchTemplateId"),
    "key_pairs": ("key pair", "KeyName"),
    "security_groups": ("security group", "GroupId"),
    "volumes": ("volume", "VolumeId"),
}
# what EC2 lets go only once the build's instances are terminated (their network interfaces, their disks)
DEPENDENT_KINDS = ("security_groups", "volumes")
REMOVED_ORDER = ("instances", "fleets", "launch_templates", "security_groups", "key_pairs", "volumes")


class BuildResources:
    """The EC2 resources of one build, by its tag."""

    def __init__(self, client: Any, build: BuildIdentity, wait: bool = True, wait_timeout: int = 600) -> None:
        self.client = client
        self.build = build
        self.build_id = build.build_id
        self.wait = wait
        self.wait_timeout = wait_timeout
        self.terminating: Set[str] = set()

    # -- lookups -----------------------------------------------------------------------

    def find_instances(self, states: List[str]) -> List[Dict[str, Any]]:
        what = "Looking up the instances of build %s" % self.build_id
        instances = find_instances(self.client, [self.build_id], states, what=what)
        return sorted(instances, key=lambda i: str(i.get("LaunchTime", "")))

    def find(self) -> Dict[str, List[Any]]:
        """Every resource of the build, by kind (the finders the reaper uses)."""
        build_ids = [self.build_id]
        found = {"instances": self.find_instances(NOT_TERMINATED_STATES)}
        found["fleets"] = find_fleets(self.client, build_ids, what="Looking up the build's fleets")
        for kind in ("launch_template", "security_group", "key_pair", "volume"):
            what = "Looking up the %ss" % kind.replace("_", " ")
            found[kind + "s"] = find_tagged(self.client, kind, build_ids, what=what)
        return found

    def ended(self) -> List[Dict[str, str]]:
        """Instances of the build that EC2 ended, not we: a spot interruption or another
        ``Server.*`` reason, or the builder's own poweroff at expiry. Teardown reports them
        so that a failed build says why its builder vanished."""
        out = []
        for instance in self.find_instances(["shutting-down", "terminated", "stopping", "stopped"]):
            reason = instance.get("StateReason") or {}
            code = str(reason.get("Code") or "")
            if code.startswith("Server.") or code == "Client.InstanceInitiatedShutdown":
                out.append({"instance_id": instance["InstanceId"], "code": code, "message": reason.get("Message", "")})
        return out

    def owned(self, kind: str, name: str, found: List[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
        """``found`` (resources named ``name``), refusing one that belongs to another build."""
        for resource in found:
            if tag_dict(resource.get("Tags")).get(TAG_BUILD_ID) != self.build_id:
                raise UserInputError(
                    "a %s named %r exists and does not belong to build %s" % (kind, name, self.build_id),
                    hint="Choose another 'build_id', or delete or rename that %s" % kind,
                    parameter="build_id",
                )
        return found

    def find_owned(self, kind: str, name: str, operation: str, key: str, **spec: str) -> List[Mapping[str, Any]]:
        """The resources named ``name`` that ``operation`` finds with the filters ``spec``
        (its reply's list ``key``), refusing one of another build (``owned``)."""
        found = self.client.call(operation, what="Looking up the %s" % kind, Filters=filters(spec)).get(key, [])
        return self.owned(kind, name, found)

    def find_security_group(self, vpc_id: str) -> List[Mapping[str, Any]]:
        name = self.build.resource_name("ssh")
        spec = {"group-name": name, "vpc-id": vpc_id}
        return self.find_owned("security group", name, "describe_security_groups", "SecurityGroups", **spec)[:1]

    # -- removal -----------------------------------------------------------------------

    def removal(
        self, found: Mapping[str, List[Any]], left: Optional[Dict[str, List[str]]] = None
    ) -> Tuple[Dict[str, List[str]], List[Action]]:
        """``(removed ids by kind, the actions removing them in a safe order)``. With ``left`` (a dict
        to fill) and instances still to terminate, only their terminations are started and what does
        not depend on them is removed: the kinds that can go only once the instances are gone (security
        groups, volumes) are put into ``left`` for a later removal (ec2_spot_host's ``wait=false``)."""
        removed = {kind: [r[RESOURCE_KINDS[kind][1]] for r in found[kind]] for kind in REMOVED_ORDER}
        if left is not None and removed["instances"]:
            for kind in DEPENDENT_KINDS:
                if removed[kind]:
                    left[kind] = removed[kind]
                removed[kind] = []
        do: Dict[str, Callable[[str], Any]] = {
            "fleets": self.delete_fleet,
            "instances": self.terminate_instance,
            "launch_templates": self.delete_launch_template,
            "key_pairs": self.delete_key_pair,
            "security_groups": self.delete_security_group,
            "volumes": self.delete_volume,
        }
        actions = [
            Action("remove %s %s" % (RESOURCE_KINDS[kind][0], rid), functools.partial(do[kind], rid))
            for kind in RESOURCE_KINDS
            for rid in removed[kind]
        ]
        if actions and removed["instances"]:
            # Terminations are awaited by the first step that depends on them (security
            # group, volume), after the independent deletions; at the latest by the last step.
            last = actions[-1].do

            def last_then_await() -> None:
                last()
                self.await_terminations()

            actions[-1].do = last_then_await
        return removed, actions

    def remove_all(self) -> Dict[str, List[str]]:
        """Remove every resource of the build now (teardown, or rollback after a failure)."""
        removed, actions = self.removal(self.find())
        for action in actions:
            action.do()
        return removed

    def terminate_instance(self, instance_id: str) -> None:
        """Start the termination; `await_terminations` waits for it (when `wait`)."""
        self.client.call("terminate_instances", what="Terminating instance %s" % instance_id, InstanceIds=[instance_id])
        if self.wait:
            self.terminating.add(instance_id)

    def await_terminations(self) -> None:
        """Wait until every instance terminated by this object is gone (no-op when none is)."""
        pending = set(self.terminating)
        if not pending:
            return
        wait_for(
            lambda: [i for i in self.find_instances(NOT_TERMINATED_STATES) if i["InstanceId"] in pending],
            timeout=self.wait_timeout,
            what="instance %s of build %s to terminate" % (", ".join(sorted(pending)), self.build_id),
            done=lambda left: not left,
            describe=lambda left: ", ".join("%s %s" % (i["InstanceId"], i.get("State", {}).get("Name")) for i in left),
            # EC2 takes seconds to tens of seconds to terminate: looks from a quarter second,
            # then every 5 s at most, end the wait (and the teardown) close to it, not 15 s late.
            first_interval=0.25,
            interval=1.0,
            max_interval=5.0,
        )
        self.terminating.clear()

    def delete_launch_template(self, template_id: str) -> None:
        self.client.call(
            "delete_launch_template",
            what="Deleting launch template %s" % template_id,
            ignore_codes=["InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFoundException"],
            LaunchTemplateId=template_id,
        )

    def delete_key_pair(self, key_name: str) -> None:
        self.client.call(
            "delete_key_pair",
            what="Deleting key pair %s" % key_name,
            ignore_codes=["InvalidKeyPair.NotFound"],
            KeyName=key_name,
        )

    def delete_fleet(self, fleet_id: str) -> None:
        # Instant fleets can only be deleted together with their instances (EC2 refuses
        # TerminateInstances=false for them); a fleet already deleted, or gone, is done.
        what = "Deleting fleet %s" % fleet_id
        reply = self.client.call(
            "delete_fleets",
            what=what,
            ignore_codes=["InvalidFleetId.NotFound", "FleetNotFound"],
            FleetIds=[fleet_id],
            TerminateInstances=True,
        )
        for failure in (reply or {}).get("UnsuccessfulFleetDeletions") or []:
            error = failure.get("Error") or {}
            if error.get("Code") not in ("fleetIdDoesNotExist", "fleetNotInDeletableState"):
                raise ProviderError(
                    "%s: %s" % (error.get("Code"), error.get("Message")),
                    hint="Delete it in the EC2 console if it persists",
                    what=what,
                )

    def delete_security_group(self, group_id: str) -> None:
        self.await_terminations()  # an instance that still runs keeps its group in use
        client = self.client

        def attempt() -> str:
            try:
                client.call(
                    "delete_security_group",
                    what="Deleting security group %s" % group_id,
                    ignore_codes=["InvalidGroup.NotFound"],
                    GroupId=group_id,
                )
            except NixforgeError as exc:
                if exc.code == "DependencyViolation":
                    return "still in use (%s)" % (exc.details.get("provider_message") or exc.msg)
                raise
            return "deleted"

        wait_for(
            attempt,
            timeout=max(60, self.wait_timeout),
            what="security group %s to be deletable (its network interfaces to go)" % group_id,
            done=lambda state: state == "deleted",
            # EC2 lets the group go about a second after the termination (its interfaces detach)
            first_interval=0.25,
            interval=1.0,
            max_interval=10.0,
        )

    def delete_volume(self, volume_id: str) -> None:
        self.await_terminations()
        state = self.volume_state(volume_id)
        if state not in ("gone", "available", "deleting"):
            # attached to an instance that is terminating: it goes with it
            # (DeleteOnTermination), or becomes available and is deleted below
            state = wait_for(
                functools.partial(self.volume_state, volume_id),
                timeout=max(60, self.wait_timeout),
                what="volume %s to be released" % volume_id,
                done=lambda state: state in ("gone", "available", "deleting"),
            )
        if state == "available":
            self.client.call(
                "delete_volume",
                what="Deleting volume %s" % volume_id,
                ignore_codes=["InvalidVolume.NotFound"],
                VolumeId=volume_id,
            )

    def volume_state(self, volume_id: str) -> str:
        reply = self.client.call(
            "describe_volumes",
            what="Describing volume %s" % volume_id,
            ignore_codes=["InvalidVolume.NotFound"],
            VolumeIds=[volume_id],
        )
        volumes = (reply or {}).get("Volumes") or []
        return str(volumes[0].get("State")) if volumes else "gone"
