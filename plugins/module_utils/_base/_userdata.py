# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: cloud-config user data of every provider; no stable interface.
"""User data of every provider: the module's ``#cloud-config`` merged with the user's.

One rule for every module: the user's ``#cloud-config`` keys are merged into the module's
document; the lists in ``MERGED_LIST_KEYS`` are concatenated (the module's entries first:
its ``bootcmd`` guards must run before anything else; duplicates dropped); the keys the
module manages (the pinned host key) cannot be set by the user. Anything that is not
``#cloud-config`` (a shell script) becomes a second MIME part where the provider allows it.
"""

from __future__ import annotations

from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any, Dict, List, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._sshkeys import HostKey

MERGED_LIST_KEYS = ("bootcmd", "runcmd", "ssh_authorized_keys", "packages", "write_files")
HOST_KEY_SETTINGS = ("ssh_keys", "ssh_deletekeys", "ssh_genkeytypes")
PARAMETER = "user_data"


def _yaml() -> Any:
    import yaml  # ansible-core depends on PyYAML; imported late to keep module start-up light

    return yaml


def literal_dumper() -> Any:
    """A SafeDumper writing multi-line strings (keys, scripts) as ``|`` blocks: readable and exact."""
    yaml = _yaml()

    class Dumper(yaml.SafeDumper):  # type: ignore[name-defined,misc]
        pass

    def text(dumper: Any, value: str) -> Any:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return Dumper


def is_cloud_config(text: Optional[str]) -> bool:
    return bool(text) and (text or "").lstrip().startswith("#cloud-config")


def parse_cloud_config(text: str, parameter: str = PARAMETER) -> Dict[str, Any]:
    """The user's ``#cloud-config`` document as a mapping; YAML errors name ``parameter``."""
    try:
        loaded = _yaml().safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any YAML error is the user's input
        raise UserInputError(
            "the #cloud-config document is not valid YAML (%s)" % str(exc).splitlines()[0],
            hint="Fix the YAML, or give a shell script instead",
            parameter=parameter,
        ) from None
    if loaded is not None and not isinstance(loaded, dict):
        raise UserInputError(
            "the #cloud-config document is not a mapping",
            hint="Write it as 'key: value' lines after '#cloud-config'",
            parameter=parameter,
        )
    return loaded or {}


def merge_cloud_config(ours: Dict[str, Any], theirs: Dict[str, Any], parameter: str = PARAMETER) -> Dict[str, Any]:
    """``theirs`` merged into ``ours`` by the rule of this file."""
    merged = dict(ours)
    for key, value in theirs.items():
        if key in HOST_KEY_SETTINGS and key in ours:
            raise UserInputError(
                "it sets %r, which the module manages" % key,
                hint="Give the host key through 'host_key_private' and 'host_key_public' instead",
                parameter=parameter,
            )
        if key in MERGED_LIST_KEYS and not isinstance(value, list):
            raise UserInputError("%r must be a list" % key, hint="Write it as a YAML list", parameter=parameter)
        if key in MERGED_LIST_KEYS and key in merged:
            merged[key] = list(merged[key]) + [v for v in value if v not in merged[key]]
        else:
            merged[key] = value
    return merged


def host_key_config(host_key: Optional[HostKey]) -> Dict[str, Any]:
    """cloud-config that installs the pinned host key and no other."""
    if host_key is None:
        return {}
    return {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {"%s_private" % host_key.kind: host_key.private, "%s_public" % host_key.kind: host_key.public},
    }


def render(
    config: Dict[str, Any],
    extra: Optional[str] = None,
    allow_scripts: bool = True,
    comment: Optional[str] = None,
    parameter: str = PARAMETER,
) -> str:
    """The module's ``config`` plus the user's ``extra`` as one user data document.

    A ``#cloud-config`` ``extra`` is merged; another (a script) becomes a second MIME part,
    or, without ``allow_scripts``, is refused.
    """
    script: Optional[str] = None
    if extra and extra.strip():
        if is_cloud_config(extra):
            config = merge_cloud_config(config, parse_cloud_config(extra.lstrip(), parameter), parameter)
        elif allow_scripts:
            script = extra
        else:
            raise UserInputError(
                "for this operating system the user data must be a '#cloud-config' document",
                hint="Start it with '#cloud-config' (put shell commands under 'runcmd:')",
                parameter=parameter,
            )
    header = "#cloud-config\n" + ("# %s\n" % comment if comment else "")
    document = header + _yaml().dump(config, Dumper=literal_dumper(), default_flow_style=False, sort_keys=True)
    if script is None:
        return document
    multipart = MIMEMultipart()
    multipart.attach(MIMEText(document, "cloud-config"))
    multipart.attach(MIMEText(script, "x-shellscript" if script.startswith("#!") else "plain"))
    return multipart.as_string()


def authorized_keys(keys: List[str]) -> List[str]:
    """Stripped, non-empty, without repeats, in order."""
    result: List[str] = []
    for key in keys:
        text = (key or "").strip()
        if text and text not in result:
            result.append(text)
    return result
