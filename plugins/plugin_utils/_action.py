# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The start every action plugin of the collection shares: Ansible's base result and the
task's arguments checked against the plugin's spec, then the plugin's own ``act``."""

from __future__ import annotations

from typing import Any, Dict, Optional

from ansible.plugins.action import ActionBase


class NixforgeAction(ActionBase):
    """An action plugin whose arguments are checked against ``argument_spec`` before ``act`` runs."""

    TRANSFERS_FILES = False
    argument_spec: Dict[str, Any] = {}

    def run(self, tmp: Optional[str] = None, task_vars: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        params = self.validate_argument_spec(argument_spec=self.argument_spec)[1]
        return self.act(result, params, task_vars)

    def act(self, result: Dict[str, Any], params: Dict[str, Any], task_vars: Dict[str, Any]) -> Dict[str, Any]:
        """The plugin's work: ``result`` is Ansible's base result, to be updated and returned."""
        raise NotImplementedError


class ControllerAction(NixforgeAction):
    """An action plugin that works on the controller alone (or through its own SSH processes):
    Ansible opens no connection to the host for it."""

    _requires_connection = False
