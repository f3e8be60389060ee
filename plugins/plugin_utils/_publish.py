# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: no compatibility promise for anything outside it.
"""What the role do_image_publish makes of its inputs and of the outcome of its steps (the
action do_image_publish_step): the input check, the failure messages (what was removed, which
variable to raise, the reaper command when something could not be removed) and the published
result. Here once, in Python, instead of Jinja in set_fact, assert and fail tasks.

The outcomes are the registered results of the role's tasks, as Ansible hands them over:
a dict with ``failed`` when the task failed, ``skipped`` when it did not run, empty when
the task was never reached."""

from __future__ import annotations

import posixpath
from typing import Any, Dict, List, Mapping, Optional

from ansible.module_utils.parsing.convert_bool import boolean

ROLE = "do_image_publish"
# The role variables the steps read (as the task sees them: defaults, play vars, -e).
ROLE_VARIABLES = (
    "do_image_publish_build_id",
    "do_image_publish_bucket",
    "do_image_publish_name",
    "do_image_publish_artifact",
    "do_image_publish_object",
    "do_image_publish_sha256",
    "do_image_publish_url_mode",
    "do_image_publish_wait_timeout",
    "do_image_publish_keep_unbootable",
)
# Module parameter -> the role variable (or environment variable) a user sets for it, so that
# a failed check-mode call of the preflight names what to fix.
VARIABLES = {
    "name": "do_image_publish_name",
    "region": "do_image_publish_region",
    "regions": "do_image_publish_regions",
    "distribution": "do_image_publish_distribution",
    "description": "do_image_publish_description",
    "wait_timeout": "do_image_publish_wait_timeout",
    "bucket": "do_image_publish_bucket",
    "url_mode": "do_image_publish_url_mode",
    "url": "do_image_publish_url_mode",
    "url_ttl": "do_image_publish_url_ttl",
    "part_size": "do_image_publish_part_size",
    "sha256": "do_image_publish_sha256",
    "src": "do_image_publish_artifact",
    "build_id": "do_image_publish_build_id",
    "pipeline": "do_image_publish_pipeline",
    "ttl": "do_image_publish_ttl",
    "size": "do_image_publish_boot_size",
    "command": "do_image_publish_boot_command",
    "boot_timeout": "do_image_publish_boot_timeout",
    "oauth_token": "DIGITALOCEAN_TOKEN (or DO_API_TOKEN)",
    "application_key_id": "B2_APPLICATION_KEY_ID",
    "application_key": "B2_APPLICATION_KEY",
    "api_url": "the API URL (B2_API_URL / DIGITALOCEAN_API_URL)",
}
REAPER = "ansible-playbook playbooks/reap.yml -e nixforge_build_id=%s"
# The shape of the URL each url_mode gives, for the preflight's planned import: DigitalOcean
# refuses a URL with a query string, which an authorized URL has (do_custom_image says so).
PREFLIGHT_URLS = {
    "public": "https://nixforge.invalid/file/bucket/preflight.qcow2.gz",
    "authorized": "https://nixforge.invalid/file/bucket/preflight.qcow2.gz?Authorization=preflight",
}


class PublishError(Exception):
    """The role stops: the message says what happened, what was removed and what to do."""


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _failed(outcome: Optional[Mapping[str, Any]]) -> bool:
    return bool(outcome and outcome.get("failed"))


def _msg(outcome: Mapping[str, Any], default: str = "failed") -> str:
    return _text(outcome.get("msg")) or default


def _sentence(text: str) -> str:
    """The text without its closing full stop, so that it can be followed by one."""
    return text.rstrip().rstrip(".")


def input_problems(values: Mapping[str, Any], entry_point: str = "main") -> List[str]:
    """What is missing among the role's inputs, one sentence each naming the variable and the fix."""
    problems = []
    if not _text(values.get("do_image_publish_build_id")):
        problems.append(
            "do_image_publish_build_id is empty: set it, or nixforge_build_id, to the build's id (it tags the B2"
            " object and the image, and a re-run with it adopts the image)"
        )
    if not _text(values.get("do_image_publish_bucket")):
        problems.append(
            "do_image_publish_bucket is not set: name the B2 bucket the image passes through (an allPublic bucket"
            " for do_image_publish_url_mode=public)"
        )
    if not _text(values.get("do_image_publish_name")):
        problems.append("do_image_publish_name is empty: name the DigitalOcean image (default nixos-<build id>)")
    if entry_point == "main":
        problems.extend(
            _source_problems(values.get("do_image_publish_artifact"), values.get("do_image_publish_object"))
        )
    return problems


def _source_problems(artifact: Any, given: Any) -> List[str]:
    """The image comes from the controller's file or from the builder's B2 object."""
    if given:
        if not isinstance(given, Mapping):
            return ["do_image_publish_object is not a dict: give the object as the builder_upload entry point sets it"]
        missing = [key for key in ("name", "url") if not _text(given.get(key))]
        if missing:
            return [
                "do_image_publish_object has no %s: give the object as the builder_upload entry point sets it"
                " (or {} to upload do_image_publish_artifact from the controller)" % " and no ".join(missing)
            ]
        return []
    if not _text(artifact):
        return [
            "do_image_publish_artifact is not set: give the image file on the controller (or"
            " do_image_publish_object, the B2 object the builder_upload entry point leaves)"
        ]
    return []


def check_inputs(values: Mapping[str, Any], entry_point: str = "main") -> None:
    """Raise PublishError listing every missing input at once; nothing has been created yet."""
    found = input_problems(values, entry_point)
    if len(found) == 1:
        raise PublishError("Nothing was created: %s." % found[0])
    if found:
        listed = " ".join("(%d) %s." % (i + 1, p) for i, p in enumerate(found))
        raise PublishError("Nothing was created: %d problems: %s" % (len(found), listed))


def preflight_failure(parameter: str, msg: str) -> str:
    """A check-mode call of the preflight failed: its message, led by the variable to fix."""
    variable = VARIABLES.get(parameter or "", "")
    lead = "%s: " % variable if variable else ""
    return "%s%s (checked before anything was created; nothing was)." % (lead, msg or "failed")


def preflight_url(url_mode: Any) -> str:
    """The stand-in of the URL the upload will give in ``url_mode`` (b2_object refuses other modes)."""
    return PREFLIGHT_URLS.get(_text(url_mode), PREFLIGHT_URLS["public"])


def _what(values: Mapping[str, Any]) -> str:
    """The image as the user knows it: the controller's file, or the builder's B2 object."""
    for path in (_text(values.get("do_image_publish_artifact")), _text(_object(values).get("name"))):
        if path:
            return posixpath.basename(path.rstrip("/")) or path
    return "the image"


def _object(values: Mapping[str, Any]) -> Mapping[str, Any]:
    given = values.get("do_image_publish_object")
    return given if isinstance(given, Mapping) else {}


def publish_failure(
    values: Mapping[str, Any],
    upload: Mapping[str, Any],
    imported: Mapping[str, Any],
    image_removal: Mapping[str, Any],
) -> Optional[str]:
    """Why publishing failed and what was removed; None when the upload and the import went well.

    The B2 object is gone by now (its removal failing stops the role before this step), and so
    is the image of a failed import unless its removal failed: then the reaper is named."""
    if not _failed(upload) and not _failed(imported):
        return None
    name, build_id = _text(values.get("do_image_publish_name")), _text(values.get("do_image_publish_build_id"))
    if _failed(imported):
        reason = "Import into DigitalOcean: %s" % _msg(imported)
    else:
        reason = "Upload to B2: %s" % _msg(upload)
    if "wait_timeout" in reason:  # the module's timeout names its option; the user sets the role's
        reason += " (do_image_publish_wait_timeout is %s s; raise it for a slow import.)" % _text(
            values.get("do_image_publish_wait_timeout")
        )
    head = "Publishing %s as DigitalOcean image %s failed" % (_what(values), name)
    if _failed(imported) and _failed(image_removal):
        return (
            "%s; the B2 object was removed. Could not remove DigitalOcean image %s of build %s after its import"
            " failed: %s. The reaper removes it: %s. %s"
            % (head, name, build_id, _sentence(_msg(image_removal)), REAPER % build_id, reason)
        )
    removed = "the B2 object and the image were removed" if _failed(imported) else "the B2 object was removed"
    return "%s; %s. %s" % (head, removed, reason)


def existing_image(planned: Mapping[str, Any]) -> Dict[str, Any]:
    """The build's image when the preflight's planned import found it available in every region
    (nothing to change: a re-run builds nothing), else {}."""
    image = planned.get("image")
    if planned.get("changed") or not isinstance(image, Mapping) or image.get("id") is None:
        return {}
    return dict(image)


def published_image(lookup: Mapping[str, Any], imported: Mapping[str, Any]) -> Dict[str, Any]:
    """The DigitalOcean image: the one imported now, or the build's image found (a re-run)."""
    image = imported.get("image") or lookup.get("image")
    if not isinstance(image, Mapping) or image.get("id") is None:
        # not reachable through the role: the lookup adopts an image or the import returns one
        raise PublishError(
            "No DigitalOcean image to publish: neither the import nor the lookup of the build's image returned one."
        )
    return dict(image)


def boot_failure(
    values: Mapping[str, Any], boot: Mapping[str, Any], unbootable_removal: Mapping[str, Any]
) -> Optional[str]:
    """Why the image did not boot, and what became of it; None when it booted or was not checked."""
    if not _failed(boot):
        return None
    name, build_id = _text(values.get("do_image_publish_name")), _text(values.get("do_image_publish_build_id"))
    reason = _sentence(_msg(boot, "the boot check failed"))
    if boolean(values.get("do_image_publish_keep_unbootable") or False, strict=False):
        return "%s. The image %s was kept (do_image_publish_keep_unbootable)." % (reason, name)
    if _failed(unbootable_removal):
        return (
            "%s. Could not delete DigitalOcean image %s of build %s, which did not boot: %s. The reaper removes it: %s."
            % (reason, name, build_id, _sentence(_msg(unbootable_removal)), REAPER % build_id)
        )
    if unbootable_removal.get("changed"):
        return (
            "%s. The image was deleted so that nobody launches it (do_image_publish_keep_unbootable=true keeps it)."
            % reason
        )
    return "%s. The image %s was gone already." % (reason, name)


def publish_result(
    values: Mapping[str, Any],
    published: Mapping[str, Any],
    upload: Mapping[str, Any],
    object_removal: Mapping[str, Any],
    boot: Mapping[str, Any],
) -> Dict[str, Any]:
    """do_image_publish_result (documented in the role's argument specs and README)."""
    image = published.get("image") or {}
    given = _object(values)
    sha256 = (
        _text(given.get("sha256"))
        or _text((upload.get("object") or {}).get("sha256"))
        or _text(values.get("do_image_publish_sha256"))
    )
    return {
        "image_id": image.get("id"),
        "name": image.get("name"),
        "regions": list(image.get("regions") or []),
        "status": image.get("status"),
        "size_gigabytes": image.get("size_gigabytes"),
        "sha256": sha256,
        # who sent the image to B2: the builder (do_image_publish_object) or the controller
        "uploaded_from": "builder" if given else "controller",
        "url_mode": _text(values.get("do_image_publish_url_mode")),
        "imported": bool(published.get("imported")),
        # no object of this run is left: removed, or none uploaded (the image was adopted)
        "object_removed": not _failed(object_removal),
        "boot_check": dict(boot) if boot and not boot.get("skipped") else {},
    }


def result_sentence(result: Mapping[str, Any]) -> str:
    """What the role did, in one sentence for the output: imported or adopted, where, and the boot check."""
    lead = "Imported" if result.get("imported") else "Nothing imported: the build already has"
    text = "%s image %s (%s, %s) in %s." % (
        lead,
        result.get("image_id"),
        result.get("name"),
        result.get("status"),
        ", ".join(str(r) for r in result.get("regions") or []),
    )
    boot = result.get("boot_check") or {}
    if boot.get("boot_seconds") is None:
        return text + " No boot check."
    droplet = boot.get("droplet") or {}
    return "%s It booted in %s s on a %s droplet: %s" % (
        text,
        boot["boot_seconds"],
        droplet.get("size"),
        _text(boot.get("output")),
    )
