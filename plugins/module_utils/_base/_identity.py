# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the build identity every cloud resource carries; no stable interface.
"""The build identity every cloud resource carries: the build id, the pipeline and the
expiry, their checks, and the tags they become.

Every cloud resource is tagged ``nixforge-build-id``, ``nixforge-pipeline`` and
``nixforge-expires-at`` (UTC ISO-8601 with a ``Z`` suffix). A module reads the identity
from :attr:`NixforgeModule.identity` (``_base/_module.py``), never builds its own.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Dict, Mapping, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError

__all__ = [
    "DEFAULT_TTL",
    "MAX_TTL",
    "TAG_BUILD_ID",
    "TAG_EXPIRES_AT",
    "TAG_PIPELINE",
    "BuildIdentity",
    "build_tags",
    "compute_expiry",
    "format_timestamp",
    "identity_argument_spec",
    "is_expired",
    "parse_duration",
    "parse_timestamp",
    "utcnow",
    "validate_name",
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
