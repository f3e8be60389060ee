# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: what the *_build_info modules share; no stable interface.
"""What the four ``*_build_info`` modules share: options, validation and the result.

A subclass names its location option (``regions``, ``project_ids``, ``buckets`` or none)
and lists one location with its provider's ``_discovery_*.list_builds``; this class
asks every location and merges the build records per build id.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._discovery import merge_builds
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import validate_name
from ansible_collections.nixforge.images.plugins.module_utils._base._module import Action, NixforgeModule

__all__ = ["BuildInfoModule", "build_info_argument_spec"]


def build_info_argument_spec() -> Dict[str, Any]:
    return dict(
        build_id=dict(type="str"),
        expired=dict(type="bool"),
    )


class BuildInfoModule(NixforgeModule):
    """Read-only: lists builds; never changes anything, so check mode is the same run."""

    uses_build_identity = False
    uses_wait = False
    # The location option (a list) and the single provider option it defaults to.
    location_option: Optional[str] = None
    location_default_option: Optional[str] = None

    def locations(self) -> List[Optional[str]]:
        if self.location_option is None:
            return [None]
        wanted = [str(v) for v in self.params.get(self.location_option) or [] if v]
        if not wanted and self.location_default_option and self.params.get(self.location_default_option):
            wanted = [str(self.params[self.location_default_option])]
        if not wanted:
            raise UserInputError(
                "no %s given" % self.location_option.replace("_", " "),
                hint="Set '%s'%s"
                % (
                    self.location_option,
                    " (or '%s')" % self.location_default_option if self.location_default_option else "",
                ),
                parameter=self.location_option,
            )
        return [w for i, w in enumerate(wanted) if w not in wanted[:i]]

    def build_ids(self) -> List[str]:
        build_id = self.params.get("build_id")
        return [validate_name(build_id, "build_id")] if build_id else []

    def list_location(self, location: Optional[str], build_ids: List[str]) -> List[Dict[str, Any]]:
        raise NotImplementedError

    def prepare(self) -> None:
        build_ids = self.build_ids()
        per_location = [self.list_location(location, build_ids) for location in self.locations()]
        builds = merge_builds(*per_location)
        expired = self.params.get("expired")
        self.builds = [b for b in builds if expired is None or b["expired"] == expired]

    def plan(self) -> List[Action]:
        return []

    def describe(self) -> Dict[str, Any]:
        return {"builds": self.builds}
