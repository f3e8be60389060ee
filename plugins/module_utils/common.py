# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module base class and the build identity every cloud resource carries.

A module subclasses :class:`NixforgeModule` and declares its own ``argument_spec``;
the base class adds the shared options (``build_id``, ``pipeline``,
``expires_at``/``ttl``, ``tags``, ``wait``, ``wait_timeout``), validates the build
identity, and turns ``NixforgeError`` into a ``fail_json`` whose message names the
parameter or resource and the fix.

Every module follows one flow (``run()``; a module overrides the hooks, not ``run``):

1. ``prepare()``  validate input and look up what exists; changes nothing;
2. ``plan()``     the list of :class:`Action` (text, do, undo) that would reach the
                  desired state; an empty plan means "nothing to change";
3. check mode:    ``actions`` lists the texts of the plan and nothing is done;
   real run:      each action's ``do()`` runs in order and its text is recorded, so both
                  modes report the same list for the same input;
4. on failure:    ``undo()`` of the actions this run started, newest first, the
                  failing one included (``rolled_back`` in the result), then the
                  error; an undo must therefore be safe when its ``do()`` did not finish;
5. ``describe()`` the result (merged into the module's return values)::

    class DoCustomImage(NixforgeModule):
        def prepare(self):
            self.image = self.client.find_image(self.params["name"], self.build.build_id)

        def plan(self):
            if self.image is None:
                return [Action("import image %s" % name, self.import_image, undo=self.delete_image)]
            return []

        def describe(self):
            return {"image": self.image_dict()}

    def main():
        DoCustomImage().execute()

Every cloud resource is tagged ``nixforge-build-id``, ``nixforge-pipeline`` and
``nixforge-expires-at`` (UTC ISO-8601 with a ``Z`` suffix).
"""

from __future__ import annotations

import datetime
import re
import traceback
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.nixforge.images.plugins.module_utils.errors import (
    NixforgeError,
    UserInputError,
    format_error,
    redact,
)

__all__ = [
    "DEFAULT_TTL",
    "MAX_TTL",
    "TAG_BUILD_ID",
    "TAG_EXPIRES_AT",
    "TAG_PIPELINE",
    "Action",
    "BuildIdentity",
    "NixforgeModule",
    "build_tags",
    "compute_expiry",
    "format_timestamp",
    "identity_argument_spec",
    "is_expired",
    "parse_duration",
    "parse_timestamp",
    "utcnow",
    "validate_name",
    "wait_argument_spec",
]

TAG_BUILD_ID = "nixforge-build-id"
TAG_PIPELINE = "nixforge-pipeline"
TAG_EXPIRES_AT = "nixforge-expires-at"
RESERVED_TAG_PREFIX = "nixforge-"

DEFAULT_TTL = "3h"
MAX_TTL = datetime.timedelta(days=7)
NAME_MAX_LENGTH = 40

# A DNS label of at most 40 characters: fits every provider's tag/label rules, hostnames
# and resource names derived from it ("nixforge-<build id>-sg", Metal hostnames, ...).
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,%d}[a-z0-9])?$" % (NAME_MAX_LENGTH - 2))
_DURATION_RE = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
UTC = datetime.timezone.utc


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def validate_name(value: Any, parameter: str) -> str:
    """Check a build id / pipeline name; the error names ``parameter``."""
    text = "" if value is None else str(value)
    if not _NAME_RE.match(text):
        raise UserInputError(
            "%r is not a valid name" % text,
            hint="Use 1 to %d lowercase letters, digits and hyphens, starting and ending with a letter or digit "
            "(for example 'sd-aarch64-20261122-1')" % NAME_MAX_LENGTH,
            parameter=parameter,
        )
    return text


def parse_duration(value: Any, parameter: str = "ttl") -> datetime.timedelta:
    """Parse ``90m``, ``2h``, ``1h30m``, ``1d``, ``45s`` or a plain number of seconds."""
    text = str(value).strip().lower()
    if re.match(r"^\d+$", text):
        delta = datetime.timedelta(seconds=int(text))
    else:
        match = _DURATION_RE.match(text)
        if not text or not match or not any(match.groups()):
            raise UserInputError(
                "%r is not a duration" % (value,),
                hint="Write it like '90m', '2h', '1h30m' or '1d'",
                parameter=parameter,
            )
        days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
        delta = datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if delta <= datetime.timedelta(0):
        raise UserInputError("%r is not a positive duration" % (value,), hint="Give at least '1m'", parameter=parameter)
    return delta


def parse_timestamp(value: Any, parameter: str = "expires_at") -> datetime.datetime:
    """Parse an ISO-8601 timestamp into an aware UTC datetime.

    Accepts ``2026-11-22T10:00:00Z``, ``...+00:00``, other offsets (converted to UTC)
    and fractional seconds. A timestamp without a zone is rejected: guessing the zone
    would move the expiry by hours.
    """
    if isinstance(value, datetime.datetime):
        parsed = value
    else:
        text = str(value).strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise UserInputError(
                "%r is not an ISO-8601 timestamp" % (value,),
                hint="Write it in UTC like '2026-11-22T18:00:00Z'",
                parameter=parameter,
            ) from None
    if parsed.tzinfo is None or parsed.tzinfo.utcoffset(parsed) is None:
        raise UserInputError(
            "%r has no time zone" % (value,),
            hint="Add a 'Z' suffix for UTC, like '2026-11-22T18:00:00Z'",
            parameter=parameter,
        )
    return parsed.astimezone(UTC)


def format_timestamp(moment: datetime.datetime) -> str:
    """UTC ISO-8601 with a ``Z`` suffix, second precision: ``2026-11-22T18:00:00Z``."""
    if moment.tzinfo is None:
        raise ValueError("format_timestamp needs an aware datetime")
    return moment.astimezone(UTC).strftime(_TIMESTAMP_FORMAT)


def compute_expiry(
    expires_at: Any = None, ttl: Any = None, now: Optional[datetime.datetime] = None
) -> datetime.datetime:
    """The expiry from ``expires_at`` or from ``now + ttl`` (default ``DEFAULT_TTL``).

    Rounded down to the second, so that the tag and the scheduled poweroff agree.
    """
    now = now or utcnow()
    if expires_at not in (None, ""):
        if ttl not in (None, ""):
            raise UserInputError(
                "both 'expires_at' and 'ttl' are set",
                hint="Give one of them: 'expires_at' for a fixed moment, 'ttl' for a duration from now",
                parameter="ttl",
            )
        moment = parse_timestamp(expires_at, "expires_at")
        parameter = "expires_at"
    else:
        moment = now + parse_duration(ttl if ttl not in (None, "") else DEFAULT_TTL, "ttl")
        parameter = "ttl"
    if moment - now > MAX_TTL:
        raise UserInputError(
            "the expiry %s is more than %d days away" % (format_timestamp(moment), MAX_TTL.days),
            hint="Builders are rented by the minute; choose an expiry within %d days" % MAX_TTL.days,
            parameter=parameter,
        )
    return moment.replace(microsecond=0)


def is_expired(value: Any, now: Optional[datetime.datetime] = None, invalid_is_expired: bool = True) -> bool:
    """Whether an ``nixforge-expires-at`` value lies in the past (or is exactly now).

    A missing or unreadable value counts as expired by default: for the reaper, a
    resource we tagged but cannot date is a leak, not something to keep forever.
    """
    if value in (None, ""):
        return invalid_is_expired
    try:
        moment = parse_timestamp(value)
    except UserInputError:
        return invalid_is_expired
    return moment <= (now or utcnow())


def build_tags(
    build_id: str, pipeline: str, expires_at: datetime.datetime, extra: Optional[Mapping[str, Any]] = None
) -> Dict[str, str]:
    """The three ``nixforge-*`` tags plus the user's tags (which cannot override them)."""
    tags: Dict[str, str] = {}
    for key, value in (extra or {}).items():
        if str(key).startswith(RESERVED_TAG_PREFIX):
            raise UserInputError(
                "tag %r uses the reserved prefix %r" % (key, RESERVED_TAG_PREFIX),
                hint="Set 'build_id', 'pipeline' and 'expires_at'/'ttl' instead, or rename the tag",
                parameter="tags",
            )
        tags[str(key)] = "" if value is None else str(value)
    tags[TAG_BUILD_ID] = build_id
    tags[TAG_PIPELINE] = pipeline
    tags[TAG_EXPIRES_AT] = format_timestamp(expires_at)
    return tags


class BuildIdentity:
    """Build id, pipeline and expiry of one build, validated."""

    def __init__(
        self,
        build_id: str,
        pipeline: str = "default",
        expires_at: Optional[datetime.datetime] = None,
        user_tags: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.build_id = validate_name(build_id, "build_id")
        self.pipeline = validate_name(pipeline, "pipeline")
        self.expires_at = expires_at or compute_expiry()
        self.user_tags = dict(user_tags or {})
        build_tags(self.build_id, self.pipeline, self.expires_at, self.user_tags)  # validates user tags

    @classmethod
    def from_params(cls, params: Mapping[str, Any], now: Optional[datetime.datetime] = None) -> BuildIdentity:
        if not params.get("build_id"):
            raise UserInputError(
                "no build id given",
                hint="Set 'build_id' to a name for this build, for example 'sd-aarch64-1'",
                parameter="build_id",
            )
        return cls(
            build_id=params["build_id"],
            pipeline=params.get("pipeline") or "default",
            expires_at=compute_expiry(params.get("expires_at"), params.get("ttl"), now),
            user_tags=params.get("tags"),
        )

    def tags(self, extra: Optional[Mapping[str, Any]] = None) -> Dict[str, str]:
        merged = dict(self.user_tags)
        merged.update(extra or {})
        return build_tags(self.build_id, self.pipeline, self.expires_at, merged)

    @property
    def expires_at_str(self) -> str:
        return format_timestamp(self.expires_at)

    def resource_name(self, kind: str) -> str:
        """A provider-side name for one of this build's resources: ``nixforge-<id>-<kind>``."""
        return "nixforge-%s-%s" % (self.build_id, kind)

    @property
    def ssh_key_name(self) -> str:
        """The name of the build's login key at every provider (key pair, project key)."""
        return self.resource_name("ssh")

    def require_future_expiry(self, now: Optional[datetime.datetime] = None) -> None:
        """Fail when creating something that would already be expired."""
        if self.expires_at <= (now or utcnow()):
            raise UserInputError(
                "the expiry %s is in the past" % self.expires_at_str,
                hint="Use 'ttl' (for example '3h') or an 'expires_at' in the future",
                parameter="expires_at",
            )

    def as_dict(self) -> Dict[str, str]:
        return {"build_id": self.build_id, "pipeline": self.pipeline, "expires_at": self.expires_at_str}


def identity_argument_spec(build_id_required: bool = True) -> Dict[str, Any]:
    """Options of ``doc_fragments/common.py`` (keep both in step)."""
    return dict(
        build_id=dict(type="str", required=build_id_required),
        pipeline=dict(type="str", default="default"),
        expires_at=dict(type="str"),
        ttl=dict(type="str"),
        tags=dict(type="dict", default={}),
    )


def wait_argument_spec(default_timeout: int = 600) -> Dict[str, Any]:
    return dict(
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=default_timeout),
    )


class Action:
    """One step of a module's plan: what it does (``text``, the same in check mode and
    in a real run), how (``do``) and, for something this run creates, how to remove it
    again if a later step fails (``undo``)."""

    def __init__(self, text: str, do: Callable[[], Any], undo: Optional[Callable[[], Any]] = None) -> None:
        self.text = text
        self.do = do
        self.undo = undo

    def __repr__(self) -> str:
        return "Action(%r)" % self.text


class NixforgeModule:
    """Base class of the collection's modules.

    Class attributes a subclass sets:

    ``argument_spec``
        its own options; they win over shared options of the same name.
    ``module_kwargs``
        extra ``AnsibleModule`` keywords (``required_if``, ``mutually_exclusive``, ...).
    ``provider_argument_spec``
        options of the provider doc fragment (for example ``ec2.ec2_argument_spec()``).
    ``uses_build_identity`` / ``build_id_required`` / ``uses_wait`` / ``default_wait_timeout``
        which shared options the module takes.
    ``required_libraries``
        ``(pip name, imported?, import traceback)`` triples; a missing one fails with
        Ansible's standard "missing required library" message before anything else.
    """

    argument_spec: Dict[str, Any] = {}
    module_kwargs: Dict[str, Any] = {}
    provider_argument_spec: Dict[str, Any] = {}
    uses_build_identity = True
    build_id_required = True
    uses_wait = True
    default_wait_timeout = 600
    required_libraries: List[Tuple[str, bool, Optional[str]]] = []

    def __init__(self, module: Optional[AnsibleModule] = None) -> None:
        self.module = module or AnsibleModule(
            argument_spec=self.full_argument_spec(), supports_check_mode=True, **self.full_module_kwargs()
        )
        self.params: Dict[str, Any] = self.module.params
        self.result: Dict[str, Any] = {"changed": False}
        self.build: Optional[BuildIdentity] = None
        for library, present, import_error in self.required_libraries:
            if not present:
                self.module.fail_json(msg=missing_required_lib(library), exception=import_error)
        if self.uses_build_identity and (self.build_id_required or self.params.get("build_id")):
            try:
                self.build = BuildIdentity.from_params(self.params)
            except NixforgeError as exc:
                self.fail_error(exc)

    @classmethod
    def full_argument_spec(cls) -> Dict[str, Any]:
        spec: Dict[str, Any] = {}
        if cls.uses_build_identity:
            spec.update(identity_argument_spec(cls.build_id_required))
        if cls.uses_wait:
            spec.update(wait_argument_spec(cls.default_wait_timeout))
        spec.update(cls.provider_argument_spec)
        spec.update(cls.argument_spec)
        return spec

    @classmethod
    def full_module_kwargs(cls) -> Dict[str, Any]:
        kwargs = dict(cls.module_kwargs)
        if cls.uses_build_identity:
            kwargs["mutually_exclusive"] = [*kwargs.get("mutually_exclusive", []), ["expires_at", "ttl"]]
        return kwargs

    @property
    def identity(self) -> BuildIdentity:
        """The build identity; the one accessor every module uses."""
        if self.build is None:
            raise UserInputError("no build id given", hint="Set 'build_id'", parameter="build_id")
        return self.build

    # -- running -----------------------------------------------------------------

    def prepare(self) -> None:
        """Validate input and look up existing resources; must not change anything."""

    def plan(self) -> List[Action]:
        """The actions that reach the desired state (empty: nothing to do)."""
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        """Return values describing the resulting state (merged into the result)."""
        return {}

    def run(self) -> None:
        """The one flow: prepare, plan, (check mode: report) apply, rollback, describe."""
        self.prepare()
        actions = self.plan()
        self.apply(actions)
        self.result.update(self.describe())

    def apply(self, actions: List[Action]) -> None:
        """Run ``actions`` (or only record them in check mode); undo on failure."""
        done: List[Action] = []
        for action in actions:
            if not self.would_change(action.text):
                continue
            try:
                action.do()
            except BaseException:
                # the failing action may have created part of its resource (created, then
                # its wait failed): its undo runs too, which is why undo must be safe when
                # do() did not finish
                self.rollback([*done, action])
                raise
            done.append(action)

    def rollback(self, done: List[Action]) -> None:
        """Undo what this run created, newest first; failures to undo are reported, not raised."""
        rolled_back: List[str] = []
        for action in reversed(done):
            if action.undo is None:
                continue
            try:
                action.undo()
                rolled_back.append(action.text)
            except Exception as exc:  # noqa: BLE001 - the original error is what the user must see
                self.warn("could not undo %r after the failure: %s" % (action.text, exc))
        if rolled_back:
            self.result["rolled_back"] = rolled_back

    def execute(self) -> NoReturn:
        """Run the module; ``NixforgeError`` becomes ``fail_json``, success ``exit_json``.

        Any other exception (a bug, or a library error nobody translated) fails the same
        way: secrets masked, the result so far (ids created, ``rolled_back``) kept, the
        traceback in ``exception`` for ``-vvv``, instead of Ansible's bare MODULE FAILURE.
        """
        try:
            self.run()
        except NixforgeError as exc:
            self.fail_error(exc)
        except Exception as exc:  # noqa: BLE001 - reported, never swallowed
            self.fail(
                "%s: %s" % (type(exc).__name__, exc),
                hint="This is unexpected; the traceback is in 'exception' (run with -vvv)",
                exception=self.redact(traceback.format_exc()),
            )
        self.exit()

    @property
    def check_mode(self) -> bool:
        return bool(self.module.check_mode)

    def would_change(self, action: str) -> bool:
        """Record that ``action`` changes something; return whether to actually do it.

        The result gets ``changed=True`` and the action appended to ``actions`` in both
        modes, so check mode reports exactly what a real run would do.
        """
        self.result["changed"] = True
        self.result.setdefault("actions", []).append(action)
        return not self.check_mode

    def warn(self, msg: str) -> None:
        self.module.warn(self.redact(msg))

    def secret_values(self) -> List[str]:
        """Values of this module's ``no_log`` options (masked in every message)."""
        values: List[str] = []
        for name, spec in self.full_argument_spec().items():
            if spec.get("no_log") and isinstance(self.params.get(name), str):
                values.append(self.params[name])
        return values

    def redact(self, text: Any) -> str:
        return redact(text, self.secret_values())

    def fail(self, msg: str, hint: Optional[str] = None, what: Optional[str] = None, **kwargs: Any) -> NoReturn:
        """``fail_json`` with the collection's message shape and secrets masked.

        With ``what``: ``"<what> failed: <msg>. <hint>"``; without: ``"<msg>. <hint>"``.
        The current ``result`` (for example ids of resources already created) is kept.
        """
        if what:
            message = format_error(what, msg, hint)
        else:
            message = msg.strip()
            if hint:
                message = message.rstrip(".") + ". " + hint.strip()
        result = dict(self.result)
        result.update(kwargs)
        result.pop("msg", None)
        self.module.fail_json(msg=self.redact(message), **result)
        raise AssertionError("unreachable")  # pragma: no cover - fail_json exits

    def fail_error(self, exc: NixforgeError) -> NoReturn:
        extra: Dict[str, Any] = {}
        if exc.details:
            extra["error"] = {
                k: self.redact(v) if isinstance(v, str) else v for k, v in exc.details.items() if v is not None
            }
        parameter = getattr(exc, "parameter", None)
        if parameter:
            extra["parameter"] = parameter
        if exc.code:
            extra["error_code"] = exc.code
        self.fail(exc.format(), **extra)

    def exit(self, **kwargs: Any) -> NoReturn:
        result = dict(self.result)
        result.update(kwargs)
        self.module.exit_json(**result)
        raise AssertionError("unreachable")  # pragma: no cover - exit_json exits
