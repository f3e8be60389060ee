# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role variables as a task sees them, for the action plugins that judge a role's inputs
(image_preflight, do_image_publish_step)."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Tuple

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text


def template_values(
    templar: Any, task_vars: Mapping[str, Any], names: Iterable[str]
) -> Tuple[Dict[str, Any], List[str]]:
    """The variables of ``names`` that are set (role defaults, play vars, -e), templated, in
    the order given; and one message per variable that cannot be evaluated."""
    values: Dict[str, Any] = {}
    unusable: List[str] = []
    for name in names:
        if name not in task_vars:
            continue
        try:
            values[name] = templar.template(task_vars[name])
        except AnsibleError as exc:  # e.g. an undefined variable inside the value
            unusable.append("%s cannot be evaluated: %s" % (name, to_text(exc).splitlines()[0]))
    return values, unusable
