# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a build's builder cost (EC2: per second, 60 s minimum) and the price difference
between the two kinds of KVM builder (documentation: builder_cost.yml next to this file)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from ansible.errors import AnsibleFilterError
from ansible_collections.nixforge.images.plugins.plugin_utils._cost import builder_cost as _builder_cost


def builder_cost(builder: Any, seconds: Any, candidates: Optional[List[str]] = None, extra: Any = 0) -> Dict[str, Any]:
    if not isinstance(builder, Mapping):
        raise AnsibleFilterError("builder_cost: expected builder_host_result (a dict), got %r" % (builder,))
    try:
        return _builder_cost(builder, seconds, list(candidates or []), extra)
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError("builder_cost: %s" % exc) from None


class FilterModule:
    def filters(self) -> Dict[str, Any]:
        return {"builder_cost": builder_cost}
