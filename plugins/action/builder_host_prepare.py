# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: the controller-side steps of the builder_host role's entry points, in
this process (no module to start). Provision: check every input, work out the lifetime,
make the private state directory and the per-build keys. Describe: one description of the
builder, whatever the provider. Record: pin the host key and write state.json (describing the
builder first when given the provider's result rather than the description), answer
builder_host_result and add the builder to the inventory (see ``_add_host``).
Teardown: check the build id and read the build's state. Cleanup:
remove the private keys (or the state directory) and the SSH control sockets, and note when the
builder was gone.

Every stage answers in its result, which the role registers (builder_host__prepared, ...;
roles/builder_host/vars/main.yml names their parts), never in ansible_facts: facts would be
read as top-level variables, which ansible-core 2.20 deprecates (INJECT_FACTS_AS_VARS), and
would land in a user's persistent fact cache, where a later run could find a stale builder."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Dict

from ansible_collections.nixforge.images.plugins.plugin_utils._action import ControllerAction
from ansible_collections.nixforge.images.plugins.plugin_utils._machine import (
    builder_result,
    describe,
    inventory_host,
    teardown_result,
)
from ansible_collections.nixforge.images.plugins.plugin_utils.builder import (
    InputError,
    check_build_id,
    check_provision,
    cleanup_paths,
    expiry,
    prepare_state_dir,
    read_state,
    record_state,
    remove_paths,
    write_private,
)

STAGES = ("provision", "describe", "record", "teardown", "cleanup")
ARGUMENT_SPEC: Dict[str, Any] = {
    "stage": {"type": "str", "default": "provision", "choices": [*STAGES]},
    "build_id": {"type": "raw", "required": True},
    "provider": {"type": "str", "required": True},
    "state_dir": {"type": "path", "required": True},
    "ttl": {"type": "str", "default": "3h"},
    "ssh_connection": {"type": "str", "default": "ssh"},
    "ssh_host": {"type": "str", "default": ""},
    "ssh_work_dir": {"type": "str", "default": ""},
    "ssh_cidr": {"type": "str", "default": ""},
    "ssh_cidr_lookup": {"type": "bool", "default": False},
    "ssh_cidr_lookup_url": {"type": "str", "default": ""},
    "machine": {"type": "dict", "default": {}},
    "result": {"type": "dict", "default": {}},
    "given": {"type": "dict", "default": {}},
    "record": {"type": "dict", "default": {}},
    "inventory": {"type": "dict", "default": {}},
    "control_path_dir": {"type": "path", "default": ""},
    "remove_state_dir": {"type": "bool", "default": False},
}


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC

    def act(self, result: Dict[str, Any], params: Dict[str, Any], task_vars: Dict[str, Any]) -> Dict[str, Any]:
        stage = getattr(self, "_" + params["stage"])
        if params["inventory"]:
            # the controller itself as the builder (ssh provider, local connection) runs Ansible's own Python
            params["inventory"] = dict(
                params["inventory"], playbook_python=task_vars.get("ansible_playbook_python") or sys.executable
            )
        try:
            result.update(stage(params, bool(self._task.check_mode)))
            if "add_host" in result:
                self._add_host(result["add_host"])
        except InputError as exc:
            result.update(failed=True, msg=str(exc))
        except (OSError, subprocess.CalledProcessError) as exc:
            result.update(
                failed=True, msg="%s: the build's state directory %s: %s" % (params["stage"], params["state_dir"], exc)
            )
        return result

    def _add_host(self, entry: Dict[str, Any]) -> None:
        """Add the builder to the inventory as ansible.builtin.add_host does: from ansible-core 2.21
        through the action's own (experimental) add_host; before, the strategy applies the
        ``add_host`` answer of any action."""
        add_host = getattr(super(), "add_host", None)
        if add_host is not None:
            add_host(entry["host_name"], host_vars=entry["host_vars"], parent_group_names=entry["groups"])

    @staticmethod
    def _provision(p: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
        check_provision(p)
        if check_mode:
            return dict(expiry(p["ttl"], time.time()), changed=True)
        made = prepare_state_dir(p)
        return dict(made["keys"], changed=bool(made["made"]), keys_made=made["made"], **expiry(p["ttl"], time.time()))

    @staticmethod
    def _describe(p: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
        """machine (builder_host__machine) from the provider's result; an own host's known_hosts
        is written now, before the first login to it."""
        machine = describe(p["provider"], p["result"], p["given"], p["state_dir"])
        written = False
        if p["provider"] == "ssh" and machine["connection"] == "ssh" and not check_mode:
            lines = "".join("%s\n" % line for line in machine["known_hosts_lines"])
            written = write_private(machine["known_hosts_file"], lines)
        return {"changed": written, "machine": machine}

    @staticmethod
    def _record(p: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
        """Pin the host key and write state.json for ``machine``; without one, describe the builder
        from the provider's ``result`` first (stage describe), in the same step."""
        check_build_id(p["build_id"])
        machine = p["machine"] or ActionModule._describe(p, check_mode)["machine"]
        answer: Dict[str, Any] = {"changed": True, "machine": machine}
        if p["inventory"].get("name"):
            # builder_host_result, and the builder added to the inventory as add_host would (see
            # _add_host): one step, not three
            answer.update(builder_result(machine, p["inventory"], p["provider"], p["build_id"], p["state_dir"]))
            answer["add_host"] = inventory_host(machine, p["inventory"], p["provider"], p["build_id"])
        if not check_mode:
            written = record_state(p["state_dir"], machine, dict(p["record"], build_id=p["build_id"]))
            answer.update(changed=bool(written), written=written)
        return answer

    @staticmethod
    def _teardown(p: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
        check_build_id(p["build_id"], teardown=True)
        return {"changed": False, "state": read_state(p["state_dir"])}

    @staticmethod
    def _cleanup(p: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
        """The role registers this result as builder_host_teardown_result (documented: provider,
        build_id, removed, ended); the local files removed are removed_paths."""
        check_build_id(p["build_id"], teardown=True)
        paths = cleanup_paths(p["state_dir"], p["control_path_dir"], p["remove_state_dir"])
        removed = remove_paths(paths, check_mode=check_mode)
        # when the builder was gone: the provider's module, which waits for that, has just returned
        return dict(teardown_result(p), changed=bool(removed), removed_paths=removed, gone_epoch=int(time.time()))
