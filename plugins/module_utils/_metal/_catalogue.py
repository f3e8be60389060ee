# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the Metal catalogue checks; no stable interface.
"""The provider's catalogue (plans, metros, facilities, operating
systems, prices), checked before anything is created."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._metal._client import MetalClient


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
