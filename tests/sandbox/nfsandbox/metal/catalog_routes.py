"""What can be ordered (`/locations/metros`, `/facilities`, `/plans`, `/operating-systems`,
`/market/spot/prices`), answered from `catalog.py`.
"""

from __future__ import annotations

import logging
from typing import Any

from . import catalog as cat
from .model import (
    ApiError,
    Response,
)

log = logging.getLogger("nfsandbox.metal")


class CatalogRoutes:
    """Part of `MetalAPI` (a mixin: it uses the API's state and lock)."""

    def _list_metros(self, query: Any, body: Any) -> Response:
        return 200, {"metros": [cat.metro_obj(c) for c, _n, _x in cat.METROS]}, {}

    def _get_metro(self, query: Any, body: Any, metro_id: str) -> Response:
        code = cat.resolve_metro(metro_id)
        if code is None:
            raise ApiError(404, "Not found")
        return 200, cat.metro_obj(code), {}

    def _list_facilities(self, query: Any, body: Any) -> Response:
        return 200, {"facilities": [cat.facility_obj(c) for c, _n, _m in cat.FACILITIES]}, {}

    def _list_plans(self, query: dict[str, list[str]], body: Any) -> Response:
        slug = self._q(query, "slug")
        type_ = self._q(query, "type")
        categories = query.get("categories[]") or query.get("categories") or []
        plans = [cat.plan_obj(s) for s in cat.PLANS]
        if slug:
            plans = [p for p in plans if p["slug"] == slug]
        if type_:
            plans = [p for p in plans if p["type"] == type_]
        if categories:
            plans = [p for p in plans if set(categories) & set(p["categories"])]
        return 200, {"plans": plans}, {}

    def _list_os(self, query: Any, body: Any) -> Response:
        return 200, {"operating_systems": [cat.os_obj(s) for s in cat.OPERATING_SYSTEMS]}, {}

    def _spot_prices(self, query: Any, body: Any) -> Response:
        prices: dict[str, dict[str, dict[str, float]]] = {}
        for fac, _n, metro in cat.FACILITIES:
            prices[fac] = {
                slug: {"price": cat.spot_price(slug, metro)} for slug, p in cat.PLANS.items() if metro in p["metros"]
            }
        return 200, {"spot_market_prices": prices}, {}

    def _spot_prices_metros(self, query: Any, body: Any) -> Response:
        prices = {
            metro: {
                slug: {"price": cat.spot_price(slug, metro)} for slug, p in cat.PLANS.items() if metro in p["metros"]
            }
            for metro, _n, _c in cat.METROS
        }
        return 200, {"spot_market_prices": prices}, {}
