# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""packet-python behind one door: client, retries, errors, tags, catalogue, user data.

Equinix Metal (ex-Packet) was sunset on 2026-06-30. The API base URL is a parameter so
that Metal-compatible endpoints (and the sandbox emulator) keep working.

    client = metal_client(module.params)               # UserInputError on bad input
    plans = client.call("plans", what="Listing plans")["plans"]
    devices = client.paginate("projects/%s/devices" % project, "devices", tag=tag)

packet-python is used for the transport (``Manager.call_api``: HTTPS, auth header,
Metal's error bodies) but not for its object layer: ``Manager.create_device`` only
sends ``termination_time`` for spot instances and sends ``tags``/``features`` as
dicts, so requests are built here. Calls are retried with ``retry.call_with_retry`` on
HTTP 429, 5xx and dropped connections; packet-python has no retries of its own.
"""

from __future__ import annotations

import os
import re
import traceback
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple
from urllib.parse import quote

from ansible.module_utils.basic import env_fallback
from ansible_collections.nixforge.images.plugins.module_utils.errors import (
    NixforgeError,
    ProviderError,
    UserInputError,
    redact,
)
from ansible_collections.nixforge.images.plugins.module_utils.retry import (
    RetryingClient,
    RetryPolicy,
    is_retryable_http_status,
)

try:
    import packet
    from packet.baseapi import Error as PacketError

    HAS_PACKET = True
    PACKET_IMPORT_ERROR: Optional[str] = None
except ImportError:  # pragma: no cover - exercised only without packet-python
    HAS_PACKET = False
    PACKET_IMPORT_ERROR = traceback.format_exc()
    PacketError = Exception  # type: ignore[misc,assignment]

try:
    import requests

    _CONNECTION_ERRORS: tuple = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
except ImportError:  # pragma: no cover - packet-python depends on requests
    _CONNECTION_ERRORS = ()

__all__ = [
    "DEFAULT_API_URL",
    "HAS_PACKET",
    "REQUIRED_LIBRARIES",
    "Catalogue",
    "MetalClient",
    "is_retryable_metal_error",
    "metal_argument_spec",
    "metal_client",
    "normalize_api_url",
    "render_cloud_config",
    "render_nixos_userdata",
    "tag_dict",
    "tag_list",
]

REQUIRED_LIBRARIES = [("packet-python", HAS_PACKET, PACKET_IMPORT_ERROR)]
DEFAULT_API_URL = "api.equinix.com/metal/v1"
TOKEN_ENV = ("METAL_AUTH_TOKEN", "PACKET_AUTH_TOKEN")
DEFAULT_POLICY = RetryPolicy(max_attempts=8, base_delay=0.5, max_delay=20.0, max_total_delay=90.0)
PER_PAGE = 100


def metal_argument_spec() -> Dict[str, Any]:
    """Options of ``doc_fragments/metal.py`` (keep both in step)."""
    return dict(
        api_url=dict(type="str", default=DEFAULT_API_URL, fallback=(env_fallback, ["METAL_API_URL"])),
        auth_token=dict(type="str", no_log=True, aliases=["api_token"], fallback=(env_fallback, list(TOKEN_ENV))),
        project_id=dict(type="str", fallback=(env_fallback, ["METAL_PROJECT_ID"])),
        ca_bundle=dict(type="path"),
    )


def normalize_api_url(value: Optional[str]) -> str:
    """packet-python wants ``host[:port][/base/path]``: it prepends ``https://`` itself."""
    text = (value or DEFAULT_API_URL).strip()
    if text.startswith("http://"):
        raise UserInputError(
            "%r uses plain http, but the Metal client only speaks https" % text,
            hint="Use an https endpoint, for example 'https://api.equinix.com/metal/v1'",
            parameter="api_url",
        )
    if text.startswith("https://"):
        text = text[len("https://") :]
    text = text.rstrip("/")
    if not text or "://" in text or not re.match(r"^[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/]*)?$", text):
        raise UserInputError(
            "%r is not a host with an optional path" % (value,),
            hint="Write it like 'api.equinix.com/metal/v1' or 'https://metal.example.com:8443/metal/v1'",
            parameter="api_url",
        )
    return text


# -- errors ------------------------------------------------------------------------


def metal_error_status(exc: BaseException) -> Optional[int]:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if status is not None else None


def metal_error_message(exc: BaseException) -> str:
    """The text of Metal's ``{"errors": [...]}`` / ``{"error": ...}`` body, else the exception."""
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            body = response.json()
        except Exception:  # noqa: BLE001 - any undecodable body falls back to the exception text
            body = None
        if isinstance(body, Mapping):
            if body.get("errors"):
                return "; ".join(str(e) for e in body["errors"])
            if body.get("error"):
                return str(body["error"])
    text = str(exc)
    return re.sub(r"^Error \d+: ", "", text)


def _is_connection_error(exc: BaseException) -> bool:
    cause = getattr(exc, "cause", None)
    return bool(_CONNECTION_ERRORS) and (isinstance(exc, _CONNECTION_ERRORS) or isinstance(cause, _CONNECTION_ERRORS))


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text


def is_retryable_metal_error(exc: BaseException) -> bool:
    """Retry classifier: HTTP 408/429/5xx and dropped connections; never other 4xx."""
    if _is_connection_error(exc):
        return True
    return is_retryable_http_status(metal_error_status(exc))


def translate_metal_error(exc: BaseException, what: str, parameter: Optional[str] = None) -> NixforgeError:
    status = metal_error_status(exc)
    message = metal_error_message(exc)
    if _is_connection_error(exc):
        cause = getattr(exc, "cause", None) or exc
        text = str(cause)
        if "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in type(cause).__name__:
            return UserInputError(
                "the TLS certificate of the Metal API was not trusted (%s)" % text,
                hint="Check 'api_url'; for a private endpoint give its CA in 'ca_bundle' (or REQUESTS_CA_BUNDLE)",
                parameter="api_url",
                what=what,
            )
        return ProviderError(
            "the Metal API did not answer (%s)" % text,
            hint="Check 'api_url' and the network",
            what=what,
            retryable=True,
        )
    if status == 401:
        return UserInputError(
            "the Metal API refused the token (HTTP 401: %s; %s)" % (message, _lower_first(what)),
            hint="Check 'auth_token' (or %s) and 'api_url'" % " / ".join(TOKEN_ENV),
            parameter="auth_token",
            status=status,
        )
    if status == 403:
        return UserInputError(
            "the token may not do this (HTTP 403: %s; %s)" % (message, _lower_first(what)),
            hint="Use a token with access to 'project_id', or check 'project_id'",
            parameter="auth_token",
            status=status,
        )
    if status is not None and is_retryable_http_status(status):
        return ProviderError(
            "HTTP %d: %s" % (status, message),
            hint="The Metal API kept throttling or failing after retries; try again later",
            what=what,
            status=status,
            retryable=True,
        )
    if status is not None and 400 <= status < 500:
        return UserInputError(
            "HTTP %d: %s" % (status, message),
            hint=("Check the parameter '%s'" % parameter) if parameter else "Check the parameters named in the message",
            parameter=parameter,
            what=what,
            status=status,
        )
    return ProviderError("%s%s" % ("HTTP %d: " % status if status else "", message), what=what, status=status)


# -- client ------------------------------------------------------------------------


class MetalClient(RetryingClient):
    """A packet-python Manager whose calls retry with our policy and raise ``NixforgeError``."""

    def __init__(
        self,
        manager: Any,
        policy: Optional[RetryPolicy] = None,
        secrets: Iterable[Optional[str]] = (),
        sleep: Optional[Callable[[float], None]] = None,
    ) -> None:
        self.manager = manager
        super().__init__(policy or DEFAULT_POLICY, secrets, sleep)

    def call_raw(self, path: str, method: str = "GET", params: Optional[Mapping[str, Any]] = None) -> Any:
        """Call with retries but without translating the final error."""
        return self._with_retry(self.manager.call_api, is_retryable_metal_error, path, method, dict(params or {}))

    def call(
        self,
        path: str,
        method: str = "GET",
        params: Optional[Mapping[str, Any]] = None,
        what: Optional[str] = None,
        parameter: Optional[str] = None,
        missing_ok: bool = False,
    ) -> Any:
        """One API call; with ``missing_ok`` a 404 returns ``None``."""
        try:
            return self.call_raw(path, method, params)
        except NixforgeError:
            raise
        except Exception as exc:
            if not isinstance(exc, PacketError) and not _is_connection_error(exc):
                raise
            if missing_ok and metal_error_status(exc) == 404:
                return None
            error = translate_metal_error(exc, what or "Metal %s %s" % (method, path), parameter)
            error.msg = redact(error.msg, self.secrets)
            raise error from None

    def create_idempotent(
        self,
        path: str,
        params: Mapping[str, Any],
        find: Callable[[], Optional[Dict[str, Any]]],
        what: str,
        parameter: Optional[str] = None,
    ) -> Dict[str, Any]:
        """POST with retries; before each retry, ``find()`` what an earlier attempt may have created.

        A 5xx or a dropped connection can hide a create that succeeded: retrying blindly
        would make a second device (a leak). ``find`` looks it up by the build's tags.
        """
        attempts = [0]

        def attempt() -> Any:
            if attempts[0]:
                existing = find()
                if existing:
                    return existing
            attempts[0] += 1
            return self.manager.call_api(path, "POST", dict(params))

        try:
            return self._with_retry(attempt, is_retryable_metal_error)
        except NixforgeError:
            raise
        except Exception as exc:
            if not isinstance(exc, PacketError) and not _is_connection_error(exc):
                raise
            error = translate_metal_error(exc, what, parameter)
            error.msg = redact(error.msg, self.secrets)
            raise error from None

    def paginate(self, path: str, key: str, what: Optional[str] = None, **query: Any) -> List[Dict[str, Any]]:
        """Every item of a paged list, following ``meta.next``."""
        items: List[Dict[str, Any]] = []
        page = 1
        while True:
            params: Dict[str, Any] = {k: quote(str(v), safe="") for k, v in query.items() if v is not None}
            params.update(page=page, per_page=PER_PAGE)
            data = self.call(path, params=params, what=what) or {}
            items.extend(data.get(key) or [])
            meta = data.get("meta") or {}
            if not meta.get("next") or page >= int(meta.get("last_page") or page):
                return items
            page += 1


def metal_client(params: Mapping[str, Any], policy: Optional[RetryPolicy] = None) -> MetalClient:
    """Build a retrying client from the ``metal_argument_spec`` options (no API call)."""
    token = params.get("auth_token")
    if not token:
        raise UserInputError(
            "no API token given",
            hint="Set 'auth_token' or one of the environment variables %s" % ", ".join(TOKEN_ENV),
            parameter="auth_token",
        )
    end_point = normalize_api_url(params.get("api_url"))
    ca_bundle = params.get("ca_bundle")
    if ca_bundle:
        if not os.path.isfile(ca_bundle):
            raise UserInputError(
                "%r is not a file" % ca_bundle, hint="Give the path of a PEM CA bundle", parameter="ca_bundle"
            )
        # packet-python has no verify knob; requests reads this for every call of this process.
        os.environ["REQUESTS_CA_BUNDLE"] = ca_bundle
    manager = packet.Manager(auth_token=token)
    manager.end_point = end_point
    return MetalClient(manager, policy=policy, secrets=[token])


# -- tags --------------------------------------------------------------------------


def tag_list(tags: Mapping[str, Any]) -> List[str]:
    """Metal tags are plain strings: ``{"k": "v"}`` becomes ``["k=v"]`` (sorted)."""
    return ["%s=%s" % (k, "" if v is None else v) for k, v in sorted(tags.items())]


def tag_dict(tags: Optional[Iterable[str]]) -> Dict[str, str]:
    result: Dict[str, str] = {}
    for tag in tags or []:
        key, sep, value = str(tag).partition("=")
        result[key] = value if sep else ""
    return result


# -- catalogue ---------------------------------------------------------------------


class Catalogue:
    """Plans, metros, facilities and operating systems, checked before creating anything."""

    def __init__(
        self,
        plans: List[Dict[str, Any]],
        metros: List[Dict[str, Any]],
        facilities: List[Dict[str, Any]],
        operating_systems: List[Dict[str, Any]],
    ) -> None:
        self.plans: Dict[str, Dict[str, Any]] = {str(p["slug"]): p for p in plans if p.get("slug")}
        self.metros: Dict[str, Dict[str, Any]] = {str(m["code"]): m for m in metros if m.get("code")}
        self.metro_ids: Dict[str, str] = {str(m["id"]): str(m["code"]) for m in metros if m.get("id") and m.get("code")}
        self.facilities: Dict[str, Dict[str, Any]] = {str(f["code"]): f for f in facilities if f.get("code")}
        self.operating_systems: Dict[str, Dict[str, Any]] = {
            str(o["slug"]): o for o in operating_systems if o.get("slug")
        }

    @classmethod
    def load(cls, client: MetalClient) -> Catalogue:
        what = "Reading the Metal catalogue"
        return cls(
            client.call("plans", what=what).get("plans") or [],
            client.call("locations/metros", what=what).get("metros") or [],
            client.call("facilities", what=what).get("facilities") or [],
            client.call("operating-systems", what=what).get("operating_systems") or [],
        )

    @staticmethod
    def _choices(values: Iterable[str]) -> str:
        return ", ".join(sorted(v for v in values if v))

    def plan(self, slug: str) -> Dict[str, Any]:
        if slug not in self.plans:
            raise UserInputError(
                "unknown plan %r" % slug,
                hint="Valid plans: %s" % self._choices(self.plans),
                parameter="plan",
            )
        return self.plans[slug]

    def metro_for(self, metro: Optional[str], facility: Optional[str]) -> Tuple[str, Optional[str]]:
        """(metro code, facility code or None) from the ``metro`` or ``facility`` option."""
        if facility:
            fac = self.facilities.get(facility)
            if fac is None:
                raise UserInputError(
                    "unknown facility %r" % facility,
                    hint="Valid facilities: %s (or use 'metro')" % self._choices(self.facilities),
                    parameter="facility",
                )
            code = (fac.get("metro") or {}).get("code")
            if metro and code and metro != code:
                raise UserInputError(
                    "facility %s is in metro %s, not %s" % (facility, code, metro),
                    hint="Give only one of 'metro' and 'facility', or make them agree",
                    parameter="facility",
                )
            return code or metro or "", facility
        if not metro:
            raise UserInputError(
                "no location given",
                hint="Set 'metro' (valid: %s) or 'facility'" % self._choices(self.metros),
                parameter="metro",
            )
        if metro not in self.metros:
            by_id = self.metro_ids.get(metro)
            if not by_id:
                raise UserInputError(
                    "unknown metro %r" % metro,
                    hint="Valid metros: %s" % self._choices(self.metros),
                    parameter="metro",
                )
            metro = by_id
        return metro, None

    def plan_metros(self, plan: Mapping[str, Any]) -> List[str]:
        codes = []
        for entry in plan.get("available_in_metros") or []:
            metro_id = str(entry.get("href", "")).rstrip("/").rsplit("/", 1)[-1]
            code = self.metro_ids.get(metro_id)
            if code:
                codes.append(code)
        return sorted(set(codes))

    def check_plan_in_metro(self, plan: Mapping[str, Any], metro: str, parameter: str = "metro") -> None:
        available = self.plan_metros(plan)
        if plan.get("available_in_metros") is not None and metro not in available:
            raise UserInputError(
                "plan %s is not available in metro %s" % (plan.get("slug"), metro),
                hint=("Metros offering %s: %s" % (plan.get("slug"), ", ".join(available)))
                if available
                else "Pick another plan",
                parameter=parameter,
            )

    def operating_system(self, slug: str, plan: Mapping[str, Any]) -> Dict[str, Any]:
        plan_slug = plan.get("slug")
        os_entry = self.operating_systems.get(slug)
        if os_entry is None:
            raise UserInputError(
                "unknown operating system %r" % slug,
                hint="Valid operating systems for %s: %s" % (plan_slug, self._choices(self.os_for_plan(plan_slug))),
                parameter="operating_system",
            )
        provisionable = os_entry.get("provisionable_on")
        if provisionable is not None and plan_slug not in provisionable:
            raise UserInputError(
                "operating system %s cannot be installed on plan %s" % (slug, plan_slug),
                hint="Valid operating systems for %s: %s" % (plan_slug, self._choices(self.os_for_plan(plan_slug))),
                parameter="operating_system",
            )
        return os_entry

    def os_for_plan(self, plan_slug: Any) -> List[str]:
        return [
            s
            for s, o in self.operating_systems.items()
            if o.get("provisionable_on") is None or plan_slug in (o.get("provisionable_on") or [])
        ]

    @staticmethod
    def has_kvm(plan: Mapping[str, Any]) -> bool:
        """Whether the plan exposes /dev/kvm.

        Every Equinix Metal plan was bare metal with hardware virtualisation, and the real
        API has no field for it; a Metal-compatible endpoint (such as the sandbox) may say
        ``specs.features.kvm: false``, which is honoured.
        """
        features = (plan.get("specs") or {}).get("features") or {}
        if "kvm" in features:
            return bool(features["kvm"])
        return plan.get("line", "baremetal") == "baremetal"

    @staticmethod
    def architecture(plan: Mapping[str, Any]) -> str:
        slug = str(plan.get("slug") or "")
        if slug.endswith((".arm64", ".arm")) or "arm" in slug.rsplit(".", 1)[-1]:
            return "aarch64"
        return "x86_64"

    @staticmethod
    def hourly_price(
        plan: Mapping[str, Any], metro: Optional[str] = None, metro_ids: Optional[Mapping[str, str]] = None
    ) -> Optional[float]:
        for entry in plan.get("available_in_metros") or []:
            metro_id = str(entry.get("href", "")).rstrip("/").rsplit("/", 1)[-1]
            if metro and metro_ids and metro_ids.get(metro_id) == metro:
                hour = (entry.get("price") or {}).get("hour")
                if hour is not None:
                    return float(hour)
        hour = (plan.get("pricing") or {}).get("hour")
        return float(hour) if hour is not None else None


# -- user data ---------------------------------------------------------------------

HOST_KEY_TYPES = {
    "ssh-ed25519": "ed25519",
    "ssh-rsa": "rsa",
    "ecdsa-sha2-nistp256": "ecdsa",
    "ecdsa-sha2-nistp384": "ecdsa",
    "ecdsa-sha2-nistp521": "ecdsa",
}
HOST_KEY_BEGIN = "# nixforge-host-key-begin"
HOST_KEY_END = "# nixforge-host-key-end"
NIXOS_USERDATA_PATH = "/etc/nixos/packet/userdata.nix"


def host_key_type(public_key: str) -> str:
    kind = (public_key or "").split(" ", 1)[0]
    if kind not in HOST_KEY_TYPES:
        raise UserInputError(
            "the host public key is not an OpenSSH public key of a known type",
            hint="Give the content of the .pub file made by ssh-keygen (types: %s)" % ", ".join(sorted(HOST_KEY_TYPES)),
            parameter="host_key_public",
        )
    return HOST_KEY_TYPES[kind]


def check_host_key_pair(private_key: Optional[str], public_key: Optional[str]) -> None:
    if bool(private_key) != bool(public_key):
        raise UserInputError(
            "'host_key_private' and 'host_key_public' go together, but only one is set",
            hint="Give both halves of the host key generated on the controller",
            parameter="host_key_public" if private_key else "host_key_private",
        )
    if private_key:
        host_key_type(public_key or "")
        if not re.search(r"-----BEGIN (OPENSSH|RSA|EC) PRIVATE KEY-----", private_key) or "-----END" not in private_key:
            raise UserInputError(
                "the host private key is not a PEM/OpenSSH private key",
                hint="Give the content of the private key file made by ssh-keygen (not its path)",
                parameter="host_key_private",
            )


def _yaml() -> Any:
    import yaml  # ansible-core depends on PyYAML; imported late to keep module start-up light

    return yaml


def _literal_dumper() -> Any:
    """A SafeDumper writing multi-line strings (the private key) as ``|`` blocks."""
    yaml = _yaml()

    class Dumper(yaml.SafeDumper):  # type: ignore[name-defined,misc]
        pass

    def text(dumper: Any, value: str) -> Any:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return Dumper


def render_cloud_config(
    build_id: str,
    host_key_private: Optional[str] = None,
    host_key_public: Optional[str] = None,
    authorized_keys: Iterable[str] = (),
    user_userdata: Optional[str] = None,
) -> str:
    """``#cloud-config`` for Debian/Ubuntu devices: pinned host key, root's keys, the user's part.

    Metal installs the device's SSH keys for root itself; they are repeated here so that a
    device still lets us in when the image's metadata agent is late. No poweroff is
    scheduled: a powered-off Metal device is still billed, ``termination_time`` ends it.
    """
    config: Dict[str, Any] = {}
    if user_userdata and user_userdata.strip():
        text = user_userdata.lstrip()
        if not text.startswith("#cloud-config"):
            raise UserInputError(
                "for this operating system the user data must be a '#cloud-config' document",
                hint="Start it with '#cloud-config' (put shell commands under 'runcmd:')",
                parameter="userdata",
            )
        try:
            loaded = _yaml().safe_load(text)
        except Exception as exc:  # noqa: BLE001 - any YAML error is the user's input
            raise UserInputError(
                "the user data is not valid YAML (%s)" % exc, hint="Fix the YAML", parameter="userdata"
            ) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserInputError(
                "the '#cloud-config' user data must be a mapping", hint="Fix the YAML", parameter="userdata"
            )
        config.update(loaded or {})
    keys = [k.strip() for k in authorized_keys if k and k.strip()]
    if keys:
        existing = config.get("ssh_authorized_keys") or []
        config["ssh_authorized_keys"] = list(existing) + [k for k in keys if k not in existing]
        config["disable_root"] = False
    if host_key_private and host_key_public:
        kind = host_key_type(host_key_public)
        config["ssh_deletekeys"] = True
        config["ssh_genkeytypes"] = []
        ssh_keys = dict(config.get("ssh_keys") or {})
        ssh_keys["%s_private" % kind] = host_key_private.strip() + "\n"
        ssh_keys["%s_public" % kind] = host_key_public.strip()
        config["ssh_keys"] = ssh_keys
    body = _yaml().dump(config, Dumper=_literal_dumper(), default_flow_style=False, sort_keys=True)
    return "#cloud-config\n# nixforge.images metal_device, build %s\n%s" % (build_id, body)


def nix_string(value: str) -> str:
    """A Nix double-quoted string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return '"%s"' % escaped


def _nixos_version(os_slug: str) -> Tuple[int, int]:
    match = re.match(r"^nixos_(\d+)_(\d+)", os_slug or "")
    if not match:
        return (99, 99)  # nixos_unstable and friends: current options
    return int(match.group(1)), int(match.group(2))


def render_nixos_userdata(
    build_id: str,
    os_slug: str,
    host_key_private: Optional[str] = None,
    host_key_public: Optional[str] = None,
    authorized_keys: Iterable[str] = (),
    system_features: Iterable[str] = (),
    user_module: Optional[str] = None,
) -> str:
    """A NixOS module for a NixOS device: a Nix remote builder with our keys.

    Metal's NixOS images import the user data from ``/etc/nixos/packet/userdata.nix`` at
    first boot. The pinned host key is written there as a comment block and copied to
    ``/etc/ssh`` by an activation script reading that root-only file, so the private key
    never enters the world-readable Nix store. The user's own module (``userdata``) is
    imported as is.
    """
    version = _nixos_version(os_slug)
    keys = [k.strip() for k in authorized_keys if k and k.strip()]
    features = [f for f in system_features if f]
    lines = [
        "# nixforge.images metal_device: NixOS configuration of build %s." % build_id,
        "# Imported by the NixOS image from %s at first boot." % NIXOS_USERDATA_PATH,
    ]
    kind = None
    if host_key_private and host_key_public:
        kind = host_key_type(host_key_public)
        lines += [
            "#",
            "# The SSH host key below was generated on the controller, which pins it. It is a comment on",
            "# purpose: the activation script copies it from this root-only file to /etc/ssh, so that the",
            "# private key never enters the world-readable Nix store.",
            "%s %s" % (HOST_KEY_BEGIN, kind),
        ]
        lines += ["# " + line if line else "#" for line in host_key_private.strip().splitlines()]
        lines.append(HOST_KEY_END)
    lines.append("{ config, lib, pkgs, ... }:")
    lines.append("{")
    if user_module and user_module.strip():
        lines += ["  imports = [", "    (", _indent(user_module.strip(), 6), "    )", "  ];"]
    lines.append("  services.openssh.enable = true;")
    if kind:
        key_path = "/etc/ssh/ssh_host_%s_key" % kind
        lines += [
            '  services.openssh.hostKeys = [ { type = "%s"; path = "%s"; } ];' % (kind, key_path),
            "  system.activationScripts.nixforgeHostKey = lib.stringAfter [ \"etc\" ] ''",
            "    src=%s" % NIXOS_USERDATA_PATH,
            '    if [ -r "$src" ]; then',
            "      umask 077",
            "      ${pkgs.gnused}/bin/sed -n -e '/^%s/,/^%s/{' -e '/^# nixforge-host-key-/d' "
            "-e 's/^# \\{0,1\\}//' -e p -e '}' \"$src\" > %s.nixforge" % (HOST_KEY_BEGIN, HOST_KEY_END, key_path),
            "      if [ -s %s.nixforge ]; then" % key_path,
            "        mv %s.nixforge %s" % (key_path, key_path),
            "        echo %s > %s.pub" % (_shell_quote(host_key_public.strip()), key_path),  # type: ignore[union-attr]
            "      fi",
            "      rm -f %s.nixforge" % key_path,
            "    fi",
            "  '';",
        ]
    if keys:
        lines.append("  users.users.root.openssh.authorizedKeys.keys = [")
        lines += ["    %s" % nix_string(k) for k in keys]
        lines.append("  ];")
    trusted = '[ "root" ]'
    feature_list = "[ %s ]" % " ".join(nix_string(f) for f in features) if features else "[ ]"
    if version >= (22, 5):
        lines.append("  nix.settings.trusted-users = %s;" % trusted)
        if features:
            lines.append("  nix.settings.system-features = %s;" % feature_list)
    else:
        lines.append("  nix.trustedUsers = %s;" % trusted)
        if features:
            lines.append("  nix.systemFeatures = %s;" % feature_list)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _indent(text: str, width: int) -> str:
    pad = " " * width
    return "\n".join(pad + line if line.strip() else "" for line in text.splitlines())


def _shell_quote(text: str) -> str:
    """Single-quote for sh; the result also sits inside a Nix '' string (no '' in it)."""
    if "'" in text:
        raise UserInputError("a public key must not contain quotes", parameter="host_key_public")
    return "'%s'" % text
