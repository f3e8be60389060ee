# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: builders
short_description: The build hosts of nixforge.images builds, across EC2, Equinix Metal and DigitalOcean
version_added: "0.2.0"
description:
  - Lists every machine that carries the C(nixforge-build-id) tag (with C(nixforge-pipeline) and
    C(nixforge-expires-at)) in the EC2 regions, Equinix Metal projects and DigitalOcean account given, so that a
    playbook or an AWX job template can find the builder another job created.
  - Each builder is named C(nixforge-builder-<build id>), the name the C(nixforge.images.builder_host) role gives it,
    and is in the groups C(nixforge_builders), C(nixforge_<provider>) and C(nixforge_expired) or C(nixforge_live).
  - The builder's pinned SSH host key reaches the connection. It is read from the per-build state directory the
    C(nixforge.images.builder_host) role writes on the controller (see O(state_dirs)) or from O(host_public_keys);
    the plugin writes a known_hosts file per host under O(known_hosts_dir) and sets C(ansible_ssh_common_args) to
    use only that file with C(StrictHostKeyChecking=yes). Host key checking is never turned off; a builder whose
    key is not known cannot be connected to.
  - The inventory file's name must end in C(builders.yml) or C(builders.yaml).
  - The credential options accept templates (for example C({{ lookup('ansible.builtin.env', 'MY_TOKEN') }})), as
    AWX injects credentials into the environment of an inventory update.
extends_documentation_fragment:
  - constructed
  - inventory_cache
requirements:
  - boto3 >= 1.34.0 (for C(ec2))
  - packet-python >= 1.44.0 (for C(metal))
  - python-digitalocean >= 1.17.0 (for C(digitalocean))
options:
  plugin:
    description: The name of this plugin; makes the file an inventory source of it.
    required: true
    type: str
    choices: [nixforge.images.builders]
  providers:
    description:
      - Which providers to list builders from.
      - A provider without any credentials (no token, no AWS credentials) is skipped with a warning.
    type: list
    elements: str
    choices: [ec2, metal, digitalocean]
    default: [ec2, metal, digitalocean]
  build_ids:
    description: Only builders of these build ids. Empty means every build.
    type: list
    elements: str
    default: []
  pipelines:
    description: Only builders whose C(nixforge-pipeline) tag is one of these. Empty means every pipeline.
    type: list
    elements: str
    default: []
  expired:
    description:
      - V(true) lists only builders past their C(nixforge-expires-at), V(false) only those still within it.
        Not set lists both.
      - A builder without a readable expiry counts as expired.
    type: bool
  hostname_prefix:
    description: The inventory name of a builder is this prefix followed by its build id.
    type: str
    default: nixforge-builder-
  regions:
    description:
      - EC2 regions to search. Falls back to E(AWS_REGION), then E(AWS_DEFAULT_REGION) (one region).
    type: list
    elements: str
    default: []
  endpoint_url:
    description: URL of an EC2-compatible API instead of AWS's regional endpoints.
    type: str
    env:
      - name: AWS_ENDPOINT_URL_EC2
      - name: AWS_ENDPOINT_URL
    aliases: [aws_endpoint_url]
  access_key:
    description: AWS access key id. Without it (and O(profile)), boto3's usual chain applies.
    type: str
    env:
      - name: AWS_ACCESS_KEY_ID
      - name: AWS_ACCESS_KEY
    aliases: [aws_access_key_id]
  secret_key:
    description: AWS secret access key.
    type: str
    env:
      - name: AWS_SECRET_ACCESS_KEY
      - name: AWS_SECRET_KEY
    aliases: [aws_secret_access_key]
  session_token:
    description: AWS session token of temporary credentials.
    type: str
    env:
      - name: AWS_SESSION_TOKEN
      - name: AWS_SECURITY_TOKEN
    aliases: [aws_session_token]
  profile:
    description: Named profile of the AWS shared config files.
    type: str
    env:
      - name: AWS_PROFILE
    aliases: [aws_profile]
  metal_api_url:
    description:
      - Base URL of the Equinix Metal API or a Metal-compatible endpoint (https only).
      - Equinix Metal stopped on 2026-06-30; this serves Metal-compatible endpoints.
    type: str
    default: api.equinix.com/metal/v1
    env:
      - name: METAL_API_URL
  metal_auth_token:
    description: Metal API token.
    type: str
    env:
      - name: METAL_AUTH_TOKEN
      - name: PACKET_AUTH_TOKEN
  metal_project_ids:
    description: UUIDs of the Metal projects to search. Falls back to E(METAL_PROJECT_ID) (one project).
    type: list
    elements: str
    default: []
  metal_ca_bundle:
    description: PEM file of certificate authorities to trust for O(metal_api_url).
    type: str
  do_api_token:
    description: DigitalOcean API token.
    type: str
    env:
      - name: DIGITALOCEAN_TOKEN
      - name: DO_API_TOKEN
  do_api_url:
    description: Base URL of the DigitalOcean API (or a compatible endpoint).
    type: str
    default: https://api.digitalocean.com/v2/
    env:
      - name: DIGITALOCEAN_API_URL
  do_ca_bundle:
    description:
      - PEM file of certificate authorities to trust for O(do_api_url) (an endpoint with its own CA).
      - Without it the system's trust store (or E(REQUESTS_CA_BUNDLE)) is used.
    type: str
    env:
      - name: DIGITALOCEAN_CA_BUNDLE
  state_dirs:
    description:
      - Folders holding per-build state directories (C(<folder>/<build id>/)) as the C(nixforge.images.builder_host)
        role writes them (its C(builder_host_state_dir) is C(<playbook dir>/.nixforge/<build id>) by default).
      - From there the plugin takes the builder's host key (C(ssh_host_ed25519_key.pub) or C(known_hosts)) and the
        login key (C(id_ed25519), set as C(ansible_ssh_private_key_file)).
      - Relative paths are relative to the current directory.
    type: list
    elements: str
    default: []
    env:
      - name: NIXFORGE_STATE_DIRS
  host_public_keys:
    description:
      - SSH host public keys by build id (C(ssh-ed25519 AAAA...)), for controllers without the state directory.
        They win over what O(state_dirs) hold.
    type: dict
    default: {}
  known_hosts_dir:
    description:
      - Where the plugin writes one known_hosts file per builder. Default C(nixforge/known_hosts) under
        Ansible's home (E(ANSIBLE_HOME)).
    type: str
  fetch_prices:
    description: Read the current spot price of EC2 spot builders (one call per instance type and zone).
    type: bool
    default: true
"""

EXAMPLES = r"""
# inventories/builders/nixforge.builders.yml: every live builder of the sd-aarch64 pipeline
plugin: nixforge.images.builders
providers: [ec2, metal]
regions: [us-east-1, eu-central-1]
pipelines: [sd-aarch64]
expired: false
state_dirs: [/srv/nixforge/playbooks/.nixforge]
keyed_groups:
  - key: nixforge_pipeline
    prefix: pipeline
  - key: nixforge_architecture
    prefix: arch
compose:
  ansible_become: true
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: /var/cache/nixforge/inventory
cache_timeout: 300

---
# For AWX: credentials come from the environment a custom credential type injects.
plugin: nixforge.images.builders
providers: [metal]
metal_auth_token: "{{ lookup('ansible.builtin.env', 'METAL_AUTH_TOKEN') }}"
metal_project_ids: ["{{ lookup('ansible.builtin.env', 'METAL_PROJECT_ID') }}"]
build_ids: [do-image-42]
"""

import os
from typing import Any, Dict, List, Optional

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.display import Display
from ansible_collections.nixforge.images.plugins.module_utils._base._discovery import matches
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import NixforgeError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import is_expired, utcnow
from ansible_collections.nixforge.images.plugins.module_utils._base._sshkeys import HOST_KEY_TYPES
from ansible_collections.nixforge.images.plugins.plugin_utils.builder import write_private

display = Display()

# Options that may hold templates (AWX injects credentials into the environment).
TEMPLATED = (
    "regions",
    "endpoint_url",
    "access_key",
    "secret_key",
    "session_token",
    "profile",
    "metal_api_url",
    "metal_auth_token",
    "metal_project_ids",
    "metal_ca_bundle",
    "do_api_token",
    "do_api_url",
    "do_ca_bundle",
    "state_dirs",
    "known_hosts_dir",
    "build_ids",
    "pipelines",
)
SSH_ARGS = (
    "-o UserKnownHostsFile=%s -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
)


def public_key_of(text: str) -> Optional[str]:
    """``type base64`` from a .pub file or a known_hosts line, or None."""
    for line in (text or "").splitlines():
        fields = line.split()
        for i, field in enumerate(fields[:-1]):
            if field in HOST_KEY_TYPES:
                return "%s %s" % (field, fields[i + 1])
    return None


def read_state_dir(roots: List[str], build_id: str) -> Dict[str, Optional[str]]:
    """Host key and login key of a build from the first state dir that has them."""
    found: Dict[str, Optional[str]] = {"host_public_key": None, "private_key_file": None, "state_dir": None}
    for root in roots:
        directory = os.path.join(os.path.abspath(os.path.expanduser(root)), build_id)
        if not os.path.isdir(directory):
            continue
        for name in ("ssh_host_ed25519_key.pub", "known_hosts"):
            path = os.path.join(directory, name)
            if found["host_public_key"] is None and os.path.isfile(path):
                with open(path) as handle:
                    found["host_public_key"] = public_key_of(handle.read())
        key_file = os.path.join(directory, "id_ed25519")
        if found["private_key_file"] is None and os.path.isfile(key_file):
            found["private_key_file"] = key_file
        if found["host_public_key"] or found["private_key_file"]:
            found["state_dir"] = found["state_dir"] or directory
    return found


# (module option, this plugin's option) per provider, for error messages
OPTION_NAMES = {
    "digitalocean": (("oauth_token", "do_api_token"), ("api_url", "do_api_url"), ("ca_bundle", "do_ca_bundle")),
    "metal": (("auth_token", "metal_auth_token"), ("api_url", "metal_api_url")),
}


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "nixforge.images.builders"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith(("builders.yml", "builders.yaml"))

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = bool(self.get_option("cache")) and cache
        update_cache = bool(self.get_option("cache")) and not cache
        records = None
        if use_cache:
            try:
                records = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if records is None:
            records = self._discover()
        if update_cache:
            self._cache[cache_key] = records
        self._populate(records)

    # -- options -----------------------------------------------------------------------

    def _opt(self, name: str) -> Any:
        value = self.get_option(name)
        if name in TEMPLATED and value is not None:
            value = self._template(value)
        return value

    def _path_opt(self, name: str) -> Optional[str]:
        """A path option made absolute, ``~`` expanded (None when it is not set)."""
        value = self._opt(name)
        return os.path.abspath(os.path.expanduser(value)) if value else None

    def _endpoint_opts(self, prefix: str) -> Dict[str, Any]:
        """``api_url`` and ``ca_bundle`` of a client from ``<prefix>_api_url`` / ``<prefix>_ca_bundle``
        (the Metal and DigitalOcean options are named alike)."""
        return {"api_url": self._opt(prefix + "_api_url"), "ca_bundle": self._path_opt(prefix + "_ca_bundle")}

    def _template(self, value: Any) -> Any:
        if isinstance(value, list):
            return [v for v in (self._template(v) for v in value) if v not in (None, "")]
        if isinstance(value, str) and self.templar.is_template(value):
            return self.templar.template(value)
        return value

    # -- discovery ---------------------------------------------------------------------

    def _discover(self) -> List[Dict[str, Any]]:
        """Builder records of every provider (expiry is judged later, at each read)."""
        records: List[Dict[str, Any]] = []
        build_ids = self._opt("build_ids") or []
        pipelines = self._opt("pipelines") or []
        readers = {"ec2": self._discover_ec2, "metal": self._discover_metal, "digitalocean": self._discover_do}
        for provider in self.get_option("providers"):
            try:
                records.extend(readers[provider](build_ids, pipelines))
            except NixforgeError as exc:
                message = to_native(exc)
                # the clients name the modules' options; name this plugin's instead
                for module_option, option in OPTION_NAMES.get(provider, ()):
                    message = message.replace("'%s'" % module_option, "'%s'" % option)
                raise AnsibleError("nixforge.images.builders, provider %s: %s" % (provider, message)) from None
        return records

    def _skip(self, provider: str, why: str) -> List[Dict[str, Any]]:
        display.warning("nixforge.images.builders: skipping %s: %s" % (provider, why))
        return []

    def _discover_ec2(self, build_ids: List[str], pipelines: List[str]) -> List[Dict[str, Any]]:
        from ansible_collections.nixforge.images.plugins.module_utils._ec2 import _discovery as _discovery_ec2
        from ansible_collections.nixforge.images.plugins.module_utils._ec2._client import HAS_BOTO3, ec2_client

        if not HAS_BOTO3:
            return self._skip("ec2", "boto3 is not installed on the controller")
        regions = (
            self._opt("regions")
            or [r for r in (os.environ.get("AWS_REGION"), os.environ.get("AWS_DEFAULT_REGION")) if r][:1]
        )
        if not regions:
            return self._skip("ec2", "no region given (set 'regions', or AWS_REGION)")
        params = {k: self._opt(k) for k in ("endpoint_url", "access_key", "secret_key", "session_token", "profile")}
        records = []
        for region in regions:
            client = ec2_client(dict(params, region=region))
            records.extend(
                _discovery_ec2.list_builders(
                    client, region, build_ids, pipelines, with_prices=bool(self.get_option("fetch_prices"))
                )
            )
        return records

    def _discover_metal(self, build_ids: List[str], pipelines: List[str]) -> List[Dict[str, Any]]:
        from ansible_collections.nixforge.images.plugins.module_utils._metal import _discovery as _discovery_metal
        from ansible_collections.nixforge.images.plugins.module_utils._metal._client import HAS_PACKET, metal_client

        token = self._opt("metal_auth_token")
        if not token:
            return self._skip("metal", "no token (set 'metal_auth_token', or METAL_AUTH_TOKEN)")
        if not HAS_PACKET:
            return self._skip("metal", "packet-python is not installed on the controller")
        projects = self._opt("metal_project_ids") or [p for p in [os.environ.get("METAL_PROJECT_ID")] if p]
        if not projects:
            return self._skip("metal", "no project (set 'metal_project_ids', or METAL_PROJECT_ID)")
        client = metal_client(dict(self._endpoint_opts("metal"), auth_token=token))
        records = []
        for project in projects:
            records.extend(_discovery_metal.list_builders(client, project, build_ids, pipelines))
        return records

    def _discover_do(self, build_ids: List[str], pipelines: List[str]) -> List[Dict[str, Any]]:
        from ansible_collections.nixforge.images.plugins.module_utils._digitalocean import _discovery as _discovery_do

        token = self._opt("do_api_token")
        if not token:
            return self._skip("digitalocean", "no token (set 'do_api_token', or DIGITALOCEAN_TOKEN)")
        from ansible_collections.nixforge.images.plugins.module_utils._digitalocean._client import digitalocean_client

        client = digitalocean_client(dict(self._endpoint_opts("do"), oauth_token=token))
        return _discovery_do.list_builders(client, build_ids, pipelines)

    # -- inventory ---------------------------------------------------------------------

    def _populate(self, records: List[Dict[str, Any]]) -> None:
        now = utcnow()
        wanted = self.get_option("expired")
        names: Dict[str, int] = {}
        self.inventory.add_group("nixforge_builders")
        for record in records:
            record = dict(record, expired=is_expired(record.get("expires_at"), now))
            if not matches(record, expired=wanted):
                continue
            name = self.get_option("hostname_prefix") + record["build_id"]
            names[name] = names.get(name, 0) + 1
            if names[name] > 1:  # a second machine of one build: a leak, but it must show up
                name = "%s-%s" % (name, record["id"])
            self._add_builder(name, record)

    def _add_builder(self, name: str, record: Dict[str, Any]) -> None:
        strict = self.get_option("strict")
        self.inventory.add_host(name, group="nixforge_builders")
        for group in ("nixforge_%s" % record["provider"], "nixforge_expired" if record["expired"] else "nixforge_live"):
            self.inventory.add_group(group)
            self.inventory.add_child(group, name)
        hostvars = self._hostvars(name, record)
        for key, value in hostvars.items():
            self.inventory.set_variable(name, key, value)
        self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), hostvars, name, strict=strict)
        self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, name, strict=strict)

    def _hostvars(self, name: str, record: Dict[str, Any]) -> Dict[str, Any]:
        hostvars: Dict[str, Any] = {"nixforge_%s" % k: v for k, v in record.items() if k != "provider"}
        hostvars.update(
            nixforge_provider=record["provider"],
            nixforge_builder_provider=record["provider"],  # the name builder_host's add_host uses
            nixforge_builder_lifecycle=record.get("lifecycle") or "",  # nix_build watches spot builders
            ansible_host=record["address"],
            ansible_user=record["ssh_user"],
            ansible_connection="ssh",
            ansible_host_key_checking=True,
        )
        state = read_state_dir(self._opt("state_dirs") or [], record["build_id"])
        given = (self.get_option("host_public_keys") or {}).get(record["build_id"])
        host_key = public_key_of(given) if given else state["host_public_key"]
        hostvars["nixforge_host_public_key"] = host_key
        hostvars["nixforge_state_dir"] = state["state_dir"]
        if state["private_key_file"]:
            hostvars["ansible_ssh_private_key_file"] = state["private_key_file"]
        if host_key and record["address"]:
            known_hosts = self._write_known_hosts(name, record["address"], host_key)
            hostvars["nixforge_known_hosts_file"] = known_hosts
            hostvars["ansible_ssh_common_args"] = SSH_ARGS % known_hosts
        else:
            display.vvv("nixforge.images.builders: no host key known for %s; ssh will refuse it" % name)
        return hostvars

    def _known_hosts_dir(self) -> str:
        directory = self._opt("known_hosts_dir")
        if not directory:
            from ansible import constants as C

            home = C.config.get_config_value("ANSIBLE_HOME") or os.path.expanduser("~/.ansible")
            directory = os.path.join(home, "nixforge", "known_hosts")
        return os.path.abspath(os.path.expanduser(directory))

    def _write_known_hosts(self, name: str, address: str, host_key: str) -> str:
        directory = self._known_hosts_dir()
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = os.path.join(directory, name)
        write_private(path, "%s %s\n" % (address, host_key))
        return path
