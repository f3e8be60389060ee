# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the module base class and its flow; no stable interface.
"""The module base class: shared options, the plan/apply/rollback flow, errors as results.

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

The build identity (tags, expiry) is in ``_base/_identity.py``; a module reads it from
:attr:`NixforgeModule.identity`.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable, Dict, List, NoReturn, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import (
    NixforgeError,
    UserInputError,
    format_error,
    redact,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import (
    BuildIdentity,
    identity_argument_spec,
)

__all__ = ["Action", "NixforgeModule", "wait_argument_spec"]


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
