# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

"""Filters of playbooks/reap.yml (documented in reap_targets.yml and reap_lines.yml)."""

import datetime
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._discovery import merge_builds
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import utcnow


def reap_targets(
    builds: Iterable[Mapping[str, Any]], keep_products: bool = True, types: Optional[Iterable[str]] = None
) -> List[Dict[str, Any]]:
    """The builds with only the resources to remove (products left out unless asked)."""
    wanted = list(types) if types else None
    targets = []
    for build in builds or []:
        resources = [
            dict(r)
            for r in build.get("resources") or []
            if not (keep_products and r.get("product")) and (wanted is None or r.get("type") in wanted)
        ]
        if resources:
            targets.append(dict(build, resources=resources))
    return targets


def reap_select(
    found: Mapping[str, Iterable[Mapping[str, Any]]], named: bool = False, now: Optional[datetime.datetime] = None
) -> Dict[str, List[Dict[str, Any]]]:
    """What reap.yml removes, per provider, from every build each provider listed
    (``{provider: builds}``, expired or not).

    A build's parts are judged together, across providers, regions and projects: its expiry
    is the latest one any part carries, so a build with a live, unexpired machine anywhere
    keeps every part everywhere (a key pair whose own expiry is past, a B2 object of a build
    whose builder still runs). ``named``: the user named the build (the modules listed only
    it): everything of it goes, products included.
    """
    found = {provider: [dict(b) for b in builds or []] for provider, builds in (found or {}).items()}
    expired = {b["build_id"]: b["expired"] for b in merge_builds(*found.values(), now=now or utcnow())}
    return {
        provider: reap_targets([b for b in builds if named or expired.get(b.get("build_id"), True)], not named)
        for provider, builds in found.items()
    }


def reap_lines(builds: Iterable[Mapping[str, Any]]) -> List[str]:
    """One line per resource: ``<build id>: <type> <name> [<id>] in <location>``."""
    lines = []
    for build in builds or []:
        for r in build.get("resources") or []:
            line = "%s: %s %s" % (build.get("build_id"), r.get("type"), r.get("name"))
            if r.get("id") and r.get("id") != r.get("name"):
                line += " [%s]" % r["id"]
            if r.get("location"):
                line += " in %s" % r["location"]
            lines.append(line)
    return lines


def reap_failures(registered: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The failed items of reap.yml's removal loops (``{provider: registered result}``) as
    ``{provider, build_id, msg, line}``; a loop item is a build id, or ``[build, location or resource]``."""
    failures = []
    for provider, result in (registered or {}).items():
        for item in (result or {}).get("results") or []:
            if not item.get("failed"):
                continue
            loop_item = item.get("item")
            if isinstance(loop_item, (list, tuple)) and loop_item and isinstance(loop_item[0], Mapping):
                build_id = str(loop_item[0].get("build_id"))
            else:
                build_id = str(loop_item)
            msg = str(item.get("msg") or "failed")
            line = "%s %s: %s" % (provider, build_id, msg)
            failures.append({"provider": provider, "build_id": build_id, "msg": msg, "line": line})
    return failures


def name_list(value: Any) -> List[str]:
    """Names from a list, or from text separated by commas or blanks (an AWX survey answer);
    empty entries dropped, order kept, no duplicates."""
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value or [])
    out: List[str] = []
    for item in items:
        text = str(item or "").strip()
        if text and text not in out:
            out.append(text)
    return out


def _aws_credentials(environ: Mapping[str, str]) -> bool:
    """AWS credentials the SDK would find without an instance profile (which is not detected)."""
    named = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")
    named += ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",)
    if any(environ.get(name) for name in named):
        return True
    shared = environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(environ.get("HOME", ""), ".aws", "credentials")
    return os.path.isfile(shared)


def reap_providers(
    chosen: Any = None,
    b2_buckets: Any = None,
    b2_application_key_id: str = "",
    metal_projects: Any = None,
    metal_auth_token: str = "",
    environ: Optional[Mapping[str, str]] = None,
) -> List[str]:
    """The providers reap.yml asks: ``chosen`` when given, else those whose credentials the
    controller has (the environment, or the reaper's own B2 key / the Metal token), B2 only with
    buckets to list and Metal only with projects."""
    if chosen:
        return name_list(chosen)
    env = os.environ if environ is None else environ
    found = []
    if env.get("DIGITALOCEAN_TOKEN") or env.get("DO_API_TOKEN"):
        found.append("digitalocean")
    if (env.get("B2_APPLICATION_KEY_ID") or b2_application_key_id) and name_list(b2_buckets):
        found.append("b2")
    if _aws_credentials(env):
        found.append("ec2")
    if (env.get("METAL_AUTH_TOKEN") or env.get("PACKET_AUTH_TOKEN") or metal_auth_token) and name_list(metal_projects):
        found.append("metal")
    return found


class FilterModule:
    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {
            "reap_targets": reap_targets,
            "reap_select": reap_select,
            "reap_lines": reap_lines,
            "reap_failures": reap_failures,
            "name_list": name_list,
            "reap_providers": reap_providers,
        }
