"""plugin_utils/_publish.py and the action do_image_publish_step: the role do_image_publish's input
check, its failure messages (what was removed, what to raise, the reaper command) and its
published result, from registered results shaped as Ansible hands them over."""

from __future__ import annotations

import re
from typing import Any, Dict

import pytest
from ansible_collections.nixforge.images.plugins.action import do_image_publish_step as action
from ansible_collections.nixforge.images.plugins.plugin_utils import _publish as p

VALUES: Dict[str, Any] = {
    "do_image_publish_build_id": "b1",
    "do_image_publish_bucket": "images",
    "do_image_publish_name": "nixos-b1",
    "do_image_publish_artifact": "/out/b1/nixos.qcow2.gz",
    "do_image_publish_object": {},
    "do_image_publish_sha256": "",
    "do_image_publish_url_mode": "public",
    "do_image_publish_wait_timeout": 1800,
    "do_image_publish_keep_unbootable": False,
}
IMAGE = {"id": 7000001, "name": "nixos-b1", "regions": ["nyc3"], "status": "available", "size_gigabytes": 0.5}
SKIPPED = {"changed": False, "skipped": True, "skip_reason": "Conditional result was False"}
OBJECT = {"name": "nixforge/b1/0a1b/nixos.qcow2.gz", "url": "https://b2/file/images/x.qcow2.gz", "sha256": "cd" * 32}


def values(**changes: Any) -> Dict[str, Any]:
    return dict(VALUES, **changes)


def stop(args: Dict[str, Any], given: Dict[str, Any]) -> str:
    """The message the role stops with (the step must fail)."""
    with pytest.raises(p.PublishError) as caught:
        action.step(dict(ARGS, **args), given)
    return str(caught.value)


ARGS: Dict[str, Any] = {key: {} for key in action.ARGUMENT_SPEC if action.ARGUMENT_SPEC[key]["type"] == "dict"}
ARGS.update(step="check")


# --- the input check -----------------------------------------------------------------------


def test_complete_inputs_pass_for_both_entry_points() -> None:
    assert p.input_problems(VALUES) == [] and p.input_problems(VALUES, "preflight") == []
    # the builder's object instead of the controller's file
    assert p.input_problems(values(do_image_publish_artifact="", do_image_publish_object=OBJECT)) == []
    assert action.step(dict(ARGS, step="check"), VALUES) == {"msg": "The inputs are set."}


def test_each_missing_input_is_named_with_its_fix() -> None:
    message = stop({"step": "check"}, values(do_image_publish_bucket=""))
    assert message.startswith("Nothing was created: do_image_publish_bucket is not set: name the B2 bucket"), message
    assert "allPublic" in message
    message = stop({"step": "check"}, values(do_image_publish_build_id="  "))
    assert "do_image_publish_build_id is empty: set it, or nixforge_build_id," in message
    message = stop({"step": "check"}, values(do_image_publish_artifact=""))
    assert "do_image_publish_artifact is not set: give the image file on the controller" in message
    assert "do_image_publish_object" in message


def test_every_problem_is_reported_at_once() -> None:
    empty = values(do_image_publish_build_id="", do_image_publish_bucket="", do_image_publish_name="")
    message = stop({"step": "check"}, dict(empty, do_image_publish_artifact=""))
    assert message.startswith("Nothing was created: 4 problems: (1) do_image_publish_build_id"), message
    assert all(n in message for n in ("(2) do_image_publish_bucket", "(3) do_image_publish_name", "(4) do_image_"))
    # the preflight has no image yet: the artifact is not asked for
    with pytest.raises(p.PublishError, match="3 problems"):
        p.check_inputs(dict(empty, do_image_publish_artifact=""), "preflight")


def test_a_builder_object_without_its_url_is_refused() -> None:
    broken = values(do_image_publish_artifact="", do_image_publish_object={"name": "x"})
    assert p.input_problems(broken) == [
        "do_image_publish_object has no url: give the object as the builder_upload entry point sets it"
        " (or {} to upload do_image_publish_artifact from the controller)"
    ]
    assert "is not a dict" in p.input_problems(values(do_image_publish_object="x"))[0]


def test_a_failed_preflight_call_is_led_by_the_variable_to_fix() -> None:
    message = p.preflight_failure("region", "unknown region mars1")
    assert (
        message == "do_image_publish_region: unknown region mars1 (checked before anything was created; nothing was)."
    )
    assert p.preflight_failure("oauth_token", "no token").startswith("DIGITALOCEAN_TOKEN (or DO_API_TOKEN): no token")
    # a parameter without a variable: the module's own message
    assert p.preflight_failure("", "HTTP 500").startswith("HTTP 500 (checked")


def test_the_preflight_answers_the_existing_image_only_when_nothing_is_to_change() -> None:
    assert p.existing_image({"changed": False, "image": IMAGE}) == IMAGE
    # an import or a transfer is still to do, or no image of the build
    assert p.existing_image({"changed": True, "image": IMAGE}) == {}
    assert p.existing_image({"changed": True, "image": {}}) == {}
    assert p.existing_image({"changed": False}) == {}


# --- publishing: the upload and the import -------------------------------------------------


def published(**args: Any) -> Dict[str, Any]:
    return action.step(dict(ARGS, step="published", **args), VALUES)


def test_an_imported_image_is_published_and_an_adopted_one_too() -> None:
    done = published(
        lookup={"changed": True, "image": {}}, upload={"object": OBJECT}, imported={"image": IMAGE, "imported": True}
    )
    assert done == {"image": IMAGE, "imported": True}
    # a re-run: the block was skipped, the lookup's image is the one
    adopted = published(
        lookup={"changed": False, "image": IMAGE}, upload=SKIPPED, imported=SKIPPED, image_removal=SKIPPED
    )
    assert adopted == {"image": IMAGE, "imported": False}


def test_a_failed_upload_says_the_b2_object_was_removed() -> None:
    message = stop({"step": "published", "upload": {"failed": True, "msg": "B2 said 401"}, "imported": SKIPPED}, VALUES)
    assert message == (
        "Publishing nixos.qcow2.gz as DigitalOcean image nixos-b1 failed; the B2 object was removed."
        " Upload to B2: B2 said 401"
    )


def test_a_failed_import_says_the_image_was_removed_too() -> None:
    refused = {"failed": True, "msg": "We don't support the format of the image you provided"}
    removed = {"changed": True, "removed": [{"id": 7000001}]}
    message = stop(
        {"step": "published", "upload": {"object": OBJECT}, "imported": refused, "image_removal": removed}, VALUES
    )
    assert message.startswith(
        "Publishing nixos.qcow2.gz as DigitalOcean image nixos-b1 failed; the B2 object and the image"
    )
    assert message.endswith(
        "were removed. Import into DigitalOcean: We don't support the format of the image you provided"
    )
    assert "wait_timeout" not in message and "reap.yml" not in message


def test_an_import_timeout_names_the_role_variable_to_raise() -> None:
    timeout = {"failed": True, "msg": "timed out after 60s. Raise the 'wait_timeout' option (currently 60 seconds)"}
    given = values(do_image_publish_wait_timeout=60)
    message = stop({"step": "published", "imported": timeout, "image_removal": {"changed": True}}, given)
    assert message.endswith("(do_image_publish_wait_timeout is 60 s; raise it for a slow import.)"), message


def test_an_image_that_could_not_be_removed_names_the_reaper() -> None:
    message = stop(
        {
            "step": "published",
            "imported": {"failed": True, "msg": "the import failed: unable to download"},
            "image_removal": {"failed": True, "msg": "HTTP 503: unavailable."},
        },
        VALUES,
    )
    assert (
        "; the B2 object was removed. Could not remove DigitalOcean image nixos-b1 of build b1 after its import"
        in message
    )
    assert "failed: HTTP 503: unavailable. The reaper removes it: ansible-playbook playbooks/reap.yml" in message
    assert "-e nixforge_build_id=b1. Import into DigitalOcean: the import failed: unable to download" in message


def test_the_builder_uploaded_image_is_named_by_its_object() -> None:
    given = values(do_image_publish_artifact="", do_image_publish_object=OBJECT)
    message = stop({"step": "published", "imported": {"failed": True, "msg": "x"}}, given)
    assert message.startswith("Publishing nixos.qcow2.gz as DigitalOcean image nixos-b1 failed"), message


# --- the boot check -------------------------------------------------------------------------


def booted(boot: Dict[str, Any], removal: Dict[str, Any], **changes: Any) -> str:
    return stop({"step": "booted", "boot": boot, "unbootable_removal": removal}, values(**changes))


NO_BOOT = {
    "failed": True,
    "reached": "tcp",
    "msg": "The image did not boot within 60 s (do_image_publish_boot_timeout).",
}


def test_a_booted_or_unchecked_image_goes_on() -> None:
    assert action.step(dict(ARGS, step="booted", boot={"reached": "login"}, unbootable_removal=SKIPPED), VALUES) == {}
    assert action.step(dict(ARGS, step="booted", boot=SKIPPED, unbootable_removal=SKIPPED), VALUES) == {}


def test_an_image_that_did_not_boot_is_deleted_and_the_message_says_so() -> None:
    message = booted(NO_BOOT, {"changed": True})
    assert message == (
        "The image did not boot within 60 s (do_image_publish_boot_timeout). The image was deleted so that nobody"
        " launches it (do_image_publish_keep_unbootable=true keeps it)."
    )


def test_an_unbootable_image_kept_or_not_removable_says_what_became_of_it() -> None:
    kept = booted(NO_BOOT, SKIPPED, do_image_publish_keep_unbootable="true")
    assert kept.endswith(". The image nixos-b1 was kept (do_image_publish_keep_unbootable).")
    stuck = booted(NO_BOOT, {"failed": True, "msg": "HTTP 500"})
    assert "Could not delete DigitalOcean image nixos-b1 of build b1, which did not boot: HTTP 500." in stuck
    assert stuck.endswith("The reaper removes it: ansible-playbook playbooks/reap.yml -e nixforge_build_id=b1.")
    assert booted({"failed": True}, {"changed": False}).startswith("the boot check failed. The image nixos-b1 was gone")


# --- the result -------------------------------------------------------------------------------


def test_the_result_has_the_documented_keys() -> None:
    boot = {
        "changed": True,
        "reached": "login",
        "boot_seconds": 21.5,
        "droplet": {"size": "s-1vcpu-512mb-10gb"},
        "output": "nixforge sandbox image (do)",
    }
    result = action.step(
        dict(
            ARGS,
            step="result",
            published={"changed": False, "image": IMAGE, "imported": True},
            upload={"changed": True, "object": OBJECT},
            object_removal={"changed": True},
            boot=boot,
        ),
        VALUES,
    )
    # shown at every verbosity, as a debug task would be
    assert result.pop("_ansible_verbose_always") is True
    assert result.pop("msg") == (
        "Imported image 7000001 (nixos-b1, available) in nyc3. It booted in 21.5 s on a s-1vcpu-512mb-10gb"
        " droplet: nixforge sandbox image (do)"
    )
    assert result == {
        "image_id": 7000001,
        "name": "nixos-b1",
        "regions": ["nyc3"],
        "status": "available",
        "size_gigabytes": 0.5,
        "sha256": "cd" * 32,
        "uploaded_from": "controller",
        "url_mode": "public",
        "imported": True,
        "object_removed": True,
        "boot_check": boot,
    }


def test_the_result_of_a_builder_upload_and_of_an_adopted_image() -> None:
    given = values(do_image_publish_artifact="", do_image_publish_object=dict(OBJECT, sha256="ef" * 32))
    result = p.publish_result(given, {"image": IMAGE, "imported": False}, SKIPPED, SKIPPED, SKIPPED)
    assert (result["uploaded_from"], result["sha256"], result["imported"]) == ("builder", "ef" * 32, False)
    assert result["object_removed"] is True and result["boot_check"] == {}
    # nothing uploaded by this run and no object: the sha256 the user gave
    again = p.publish_result(values(do_image_publish_sha256="ab" * 32), {"image": IMAGE}, SKIPPED, SKIPPED, {})
    assert again["sha256"] == "ab" * 32 and again["uploaded_from"] == "controller"


def test_the_result_sentence_says_imported_or_adopted_and_how_it_booted() -> None:
    adopted = {"imported": False, "image_id": 7, "name": "nixos-b1", "status": "available", "regions": ["nyc3", "ams3"]}
    assert p.result_sentence(dict(adopted, boot_check={})) == (
        "Nothing imported: the build already has image 7 (nixos-b1, available) in nyc3, ams3. No boot check."
    )
    booted = {"boot_seconds": 3.2, "droplet": {"size": "s-1vcpu-1gb"}, "output": "NixOS 25.05\n"}
    assert p.result_sentence(dict(adopted, imported=True, boot_check=booted)) == (
        "Imported image 7 (nixos-b1, available) in nyc3, ams3. It booted in 3.2 s on a s-1vcpu-1gb droplet: NixOS 25.05"
    )


def test_no_image_at_all_is_an_error_not_a_result() -> None:
    with pytest.raises(p.PublishError, match=re.escape("No DigitalOcean image to publish")):
        p.published_image({"changed": True}, SKIPPED)


def test_every_preflight_parameter_maps_to_a_role_or_environment_variable() -> None:
    for parameter, variable in p.VARIABLES.items():
        assert variable.startswith(("do_image_publish_", "DIGITALOCEAN_", "B2_", "the API URL")), parameter


def test_the_action_reads_the_role_variables_as_the_task_sees_them() -> None:
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    # as Ansible hands over role defaults: templates from a trusted file
    task_vars = {
        "nixforge_build_id": "b9",
        "do_image_publish_build_id": trust_as_template("{{ nixforge_build_id }}"),
        "do_image_publish_name": trust_as_template("nixos-{{ do_image_publish_build_id }}"),
        "unrelated": trust_as_template("{{ undefined_here }}"),  # not one of the role's: never evaluated
    }
    module = action.ActionModule.__new__(action.ActionModule)  # no task or connection: role_values needs neither
    module._templar = Templar(loader=DataLoader(), variables=task_vars)
    assert module.role_values(task_vars) == {"do_image_publish_build_id": "b9", "do_image_publish_name": "nixos-b9"}
    broken = dict(task_vars, do_image_publish_bucket=trust_as_template("{{ undefined_here }}"))
    module._templar = Templar(loader=DataLoader(), variables=broken)
    with pytest.raises(p.PublishError, match=r"^do_image_publish_bucket cannot be evaluated: "):
        module.role_values(broken)


# --- the preflight: both modules planned in check mode, in one step ---------------------------


class FakeShell:
    @staticmethod
    def join_path(*parts: str) -> str:
        return "/".join(parts)


class Preflight(action.ActionModule):
    """The action with Ansible's module execution and remote tmp replaced by records (logic only)."""

    def __init__(self, answers: Dict[str, Dict[str, Any]]) -> None:
        self.answers = answers
        self.ran: list = []
        self.files: Dict[str, str] = {}
        self.removed: list = []
        self._task = type("Task", (), {"check_mode": False})()
        self._connection = type("Connection", (), {"_shell": FakeShell()})()

    def role_values(self, task_vars: Any) -> Dict[str, Any]:
        return dict(VALUES, **task_vars)

    def _execute_module(self, module_name: Any = None, module_args: Any = None, **_: Any) -> Dict[str, Any]:
        self.ran.append((module_name, dict(module_args), self._task.check_mode, dict(self.files)))
        return dict(self.answers.get(module_name, {}))

    def _make_tmp_path(self, *_: Any) -> str:
        return "/remote/tmp/ansible-tmp-1"

    def _transfer_data(self, remote_path: str, data: str) -> str:
        self.files[remote_path] = data
        return remote_path

    def _remove_tmp_path(self, tmp_path: str, *_: Any) -> None:
        self.removed.append(tmp_path)


PLAN = {
    "import_options": {"name": "nixos-b1", "region": "nyc3", "build_id": "b1"},
    "upload_options": {"bucket": "images", "url_mode": "authorized", "build_id": "b1"},
}


def preflight(answers: Dict[str, Dict[str, Any]], **task_vars: Any) -> tuple:
    step = Preflight(answers)
    result = step.act({}, dict(ARGS, step="preflight", **PLAN), task_vars)
    return step, result


def test_the_preflight_plans_the_import_then_the_upload_in_check_mode() -> None:
    step, result = preflight({"nixforge.images.do_custom_image": {"changed": False, "image": IMAGE}})
    assert result == {"existing": IMAGE, "changed": False}
    (image_module, image_args, image_check, no_files), (b2_module, b2_args, b2_check, files) = step.ran
    assert (image_module, b2_module) == ("nixforge.images.do_custom_image", "nixforge.images.b2_object")
    assert image_check is True and b2_check is True and step._task.check_mode is False  # forced, then restored
    assert image_args == dict(PLAN["import_options"], state="present", url=p.PREFLIGHT_URLS["authorized"])
    # the upload of an empty stand-in in Ansible's remote tmp, which is removed afterwards
    assert b2_args == dict(PLAN["upload_options"], state="present", src="/remote/tmp/ansible-tmp-1/preflight.qcow2.gz")
    assert no_files == {} and files == {b2_args["src"]: ""} and step.removed == ["/remote/tmp/ansible-tmp-1"]


def test_the_modules_warnings_are_the_steps_own() -> None:
    answers = {
        "nixforge.images.do_custom_image": {"changed": True, "warnings": ["region nyc2 is closing"]},
        "nixforge.images.b2_object": {"changed": True, "warnings": ["part_size rounded up"]},
    }
    result = preflight(answers)[1]
    assert result["warnings"] == ["region nyc2 is closing", "part_size rounded up"]
    assert "warnings" not in preflight({})[1]


def test_a_failed_plan_stops_naming_the_variable_and_leaves_no_stand_in() -> None:
    refused = {"failed": True, "parameter": "region", "msg": "unknown region mars1"}
    step, result = preflight({"nixforge.images.do_custom_image": refused})
    assert result["failed"] is True and result["msg"].startswith("do_image_publish_region: unknown region mars1")
    assert [r[0] for r in step.ran] == ["nixforge.images.do_custom_image"] and step.files == {}
    step, result = preflight({"nixforge.images.b2_object": {"failed": True, "parameter": "bucket", "msg": "no such"}})
    assert result["msg"].startswith("do_image_publish_bucket: no such (checked before anything was created")
    assert step.removed == ["/remote/tmp/ansible-tmp-1"] and step._task.check_mode is False


def test_the_preflight_checks_the_inputs_before_any_module_runs() -> None:
    step, result = preflight({}, do_image_publish_bucket="")
    assert result["failed"] is True and "do_image_publish_bucket is not set" in result["msg"]
    assert step.ran == []
