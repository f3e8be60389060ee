"""State and request handling of the DigitalOcean emulator, independent of HTTP.

`DigitalOceanAPI.handle(method, path, query, headers, body)` answers one request with
`(status, json_body_or_None, headers)`. Every answer carries DigitalOcean's
`ratelimit-limit` / `ratelimit-remaining` / `ratelimit-reset` headers and errors are
DigitalOcean's `{"id", "message", "request_id"}` bodies.

Custom images are imported the way DigitalOcean does it: `POST /v2/images` answers 202
with the image `NEW`; a background thread fetches the URL (HEAD, then GET streamed to
disk), looks inside (importer.py) and, no sooner than `import_delay` after the create,
makes the image `available` in its region with its real size, or `deleted` with an
`error_message` (and its `import` action `errored`). A failed image is no longer listed
but stays readable by id for `failed_grace` seconds, then answers 404.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import json
import logging
import math
import re
import secrets
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

from . import catalog as cat
from . import importer
from .droplets import SIZE_SPECS, Droplets, ImageRef
from .faults import DigitalOceanFaults
from .keys import Keys
from .machine import Machines

log = logging.getLogger("nfsandbox.digitalocean")

Response = tuple[int, Any, dict[str, str]]

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 200
TAG_RE = re.compile(r"^[a-zA-Z0-9_\-:]{1,255}$")
ERROR_IDS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    422: "unprocessable_entity",
    429: "too_many_requests",
    500: "server_error",
    503: "service_unavailable",
}
FAULT_MESSAGES = {
    429: "API Rate limit exceeded.",
    500: "Server was unable to give you a response.",
    503: "Service is temporarily unavailable, please try again later.",
}


class TagsBadRequest(Exception):
    """A 400 of the tags service, in its own body shape."""

    def body(self) -> dict[str, Any]:
        return {
            "error": str(self),
            "messages": None,
            "root_causes": [f"rpc error: code = InvalidArgument desc = {self}"],
        }


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_id = error_id or ERROR_IDS.get(status, "error")


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Image:
    id: int
    name: str
    url: str
    region: str
    distribution: str
    description: str
    tags: list[str]
    created_at: float
    status: str = "NEW"
    regions: list[str] = field(default_factory=list)
    size_gigabytes: float | None = None
    min_disk_size: int | None = None
    error_message: str = ""
    deleted_at: float | None = None  # when the import failed
    removed: bool = False  # deleted by the user
    # emulator-only facts, shown by resources() and never in API answers
    sha256: str | None = None
    downloaded_bytes: int | None = None
    format: str | None = None
    compression: str | None = None
    virtual_size: int | None = None
    path: Path | None = None  # the fetched bytes, kept while the image exists (droplets boot them)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": "custom",
            "distribution": self.distribution,
            "slug": None,
            "public": False,
            "regions": list(self.regions),
            "created_at": iso(self.created_at),
            "min_disk_size": self.min_disk_size,
            "size_gigabytes": self.size_gigabytes,
            "description": self.description,
            "tags": list(self.tags),
            "status": self.status,
            "error_message": self.error_message,
        }


@dataclass
class Action:
    id: int
    type: str
    resource_id: int
    region_slug: str
    started_at: float
    status: str = "in-progress"
    completed_at: float | None = None
    resource_type: str = "image"

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "type": self.type,
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "resource_id": self.resource_id,
            "resource_type": self.resource_type,
            "region": cat.region_obj(self.region_slug),
            "region_slug": self.region_slug,
        }


class RateLimit:
    """DigitalOcean's limits per token, as documented: every request counts against the
    hourly budget for one window after it was made (ratelimit-reset is when the oldest
    counted one expires), and against the burst budget (250 a minute) for one burst window;
    past either, 429 with `retry-after` (seconds until a counted request expires)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: collections.deque[float] = collections.deque()

    def charge(self, limits: tuple[int, float, int, float]) -> tuple[bool, dict[str, str]]:
        """(allowed, headers) for one request; `limits` is (hourly, window, burst, burst window)."""
        limit, window, burst, burst_window = limits
        with self.lock:
            t = now()
            self._expire(t, window)
            recent = [x for x in self.times if x > t - burst_window]
            wait = 0.0
            if len(self.times) >= limit:
                wait = self.times[len(self.times) - limit] + window - t
            if len(recent) >= burst:
                wait = max(wait, recent[len(recent) - burst] + burst_window - t)
            if wait <= 0:
                self.times.append(t)
            headers = self._headers(t, limit, window)
            if wait > 0:
                headers["ratelimit-remaining"] = "0"  # DO's 429 says 0 even when only the burst was met
                headers["retry-after"] = str(max(1, math.ceil(wait)))
            return wait <= 0, headers

    def headers(self, limits: tuple[int, float, int, float]) -> dict[str, str]:
        with self.lock:
            t = now()
            self._expire(t, limits[1])
            return self._headers(t, limits[0], limits[1])

    def _expire(self, t: float, window: float) -> None:
        while self.times and self.times[0] <= t - window:
            self.times.popleft()

    def _headers(self, t: float, limit: int, window: float) -> dict[str, str]:
        oldest = self.times[0] if self.times else t
        return {
            "ratelimit-limit": str(limit),
            "ratelimit-remaining": str(max(0, limit - len(self.times))),
            "ratelimit-reset": str(math.ceil(oldest + window)),
        }

    def reset(self) -> None:
        with self.lock:
            self.times.clear()


class DigitalOceanAPI:
    def __init__(
        self,
        token: str | None = None,
        work_dir: Path | None = None,
        networks: list[str] | None = None,
        machines: Machines | None = None,
    ) -> None:
        self.token = token or "dop_v1_" + secrets.token_hex(32)
        self.work_dir = Path(work_dir or tempfile.gettempdir())
        self.networks = list(networks or [])
        self.base_url = "https://api.digitalocean.com"  # replaced by the HTTP front once it listens
        self.account_uuid = uuid.uuid4().hex
        self.faults = DigitalOceanFaults()
        self.ratelimit = RateLimit()
        self.lock = threading.RLock()
        self.images: dict[int, Image] = {}
        self.actions: dict[int, Action] = {}
        self.tags: dict[str, float] = {}  # name -> created
        self.keys = Keys(ApiError)
        self.droplets = Droplets(now, ApiError, self._image_ref, self.keys, machines)
        self.ids = itertools.count(190000001)
        self.action_ids = itertools.count(2100000001)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    # ----------------------------------------------------------------- lifecycle
    def shutdown(self) -> None:
        self.stopping.set()
        for t in list(self.threads):
            t.join(timeout=10)
        self.droplets.shutdown()

    def reset(self) -> None:
        """Forget every image, action and tag; faults and the rate-limit budget back to defaults."""
        with self.lock:
            for image in self.images.values():
                image.removed = True
                self._forget_bytes(image)
            self.images.clear()
            self.actions.clear()
            self.tags.clear()
        self.droplets.reset()
        self.keys.reset()
        self.faults.reset()
        self.ratelimit.reset()

    def resources(self) -> list[dict[str, Any]]:
        with self.lock:
            live = [i for i in self.images.values() if i.status != "deleted" and not i.removed]
            return [
                {
                    "type": "do_image",
                    "id": img.id,
                    "name": img.name,
                    "status": img.status,
                    "tags": list(img.tags),
                    "regions": list(img.regions),
                    "url": img.url,
                    "sha256": img.sha256,
                    "downloaded_bytes": img.downloaded_bytes,
                    "format": img.format,
                    "compression": img.compression,
                    "virtual_size": img.virtual_size,
                }
                for img in live
            ] + self.droplets.resources()

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self.lock:
            self.threads = [x for x in self.threads if x.is_alive()]
            self.threads.append(t)
        t.start()

    # ----------------------------------------------------------------- HTTP entry
    def set_faults(self, faults: dict[str, Any]) -> None:
        self.faults.set(faults)

    def authorized(self, headers: Any) -> bool:
        auth = headers.get("Authorization") or ""
        scheme, _sep, value = auth.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(value.strip().encode(), self.token.encode())

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes) -> Response:
        method = method.upper()
        path = re.sub(r"/{2,}", "/", path).rstrip("/") or "/"
        line = f"{method} {path}"
        request_id = str(uuid.uuid4())
        limits = tuple(
            self.faults.get(k)
            for k in ("ratelimit_limit", "ratelimit_window", "ratelimit_burst", "ratelimit_burst_window")
        )
        extra = {"x-request-id": request_id}
        try:
            if not self.authorized(headers):
                extra.update(self.ratelimit.headers(limits))  # type: ignore[arg-type]
                raise ApiError(401, "Unable to authenticate you")
            fault = self.faults.draw(line)
            allowed, rl_headers = self.ratelimit.charge(limits)  # type: ignore[arg-type]
            extra.update(rl_headers)
            if fault is not None:
                log.info("digitalocean: fault %s served for %s", fault, line)
                if fault == 429:
                    extra["retry-after"] = "1"
                raise ApiError(fault, FAULT_MESSAGES[fault])
            if not allowed:
                self.faults.count_ratelimited(line)
                raise ApiError(429, "API Rate limit exceeded.")
            payload: Any = None
            if body and body.strip():
                try:
                    payload = json.loads(body)
                except ValueError:
                    raise ApiError(400, "error parsing request body") from None
            status, answer = self._route(method, path, query, payload)
            if self.faults.draw_lost(line):
                log.info("digitalocean: answer to %s lost (applied, answered 500)", line)
                raise ApiError(500, FAULT_MESSAGES[500])
            return status, answer, extra
        except ApiError as err:
            return err.status, {"id": err.error_id, "message": err.message, "request_id": request_id}, extra
        except TagsBadRequest as err:
            return 400, err.body(), extra

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if not path.startswith("/v2/") and path != "/v2":
            raise ApiError(404, "The resource you were accessing could not be found.")
        joined = path[len("/v2/") :]
        routes: list[tuple[str, str, Callable[..., tuple[int, Any]]]] = [
            ("GET", r"account", self._account),
            ("GET", r"regions", self._regions),
            ("GET", r"images", self._list_images),
            ("POST", r"images", self._create_image),
            ("GET", r"images/([^/]+)", self._get_image),
            ("PUT", r"images/(\d+)", self._update_image),
            ("DELETE", r"images/(\d+)", self._delete_image),
            ("GET", r"images/(\d+)/actions", self._list_image_actions),
            ("POST", r"images/(\d+)/actions", self._image_action),
            ("GET", r"images/(\d+)/actions/(\d+)", self._get_image_action),
            ("GET", r"actions", self._list_actions),
            ("GET", r"actions/(\d+)", self._get_action),
            ("GET", r"tags", self._list_tags),
            ("POST", r"tags", self._create_tag),
            ("GET", r"tags/([^/]+)", self._get_tag),
            ("DELETE", r"tags/([^/]+)", self._delete_tag),
            ("POST", r"tags/([^/]+)/resources", self._tag_resources),
            ("DELETE", r"tags/([^/]+)/resources", self._untag_resources),
            ("GET", r"account/keys", self._list_keys),
            ("POST", r"account/keys", self._create_key),
            ("GET", r"account/keys/([^/]+)", self._get_key),
            ("PUT", r"account/keys/([^/]+)", self._rename_key),
            ("DELETE", r"account/keys/([^/]+)", self._delete_key),
            ("GET", r"sizes", self._list_sizes),
            ("GET", r"droplets", self._list_droplets),
            ("POST", r"droplets", self._create_droplet),
            ("DELETE", r"droplets", self._delete_tagged_droplets),
            ("GET", r"droplets/(\d+)", self._get_droplet),
            ("DELETE", r"droplets/(\d+)", self._delete_droplet),
        ]
        known_path = False
        for m, pattern, fn in routes:
            match = re.fullmatch(pattern, joined)
            if match:
                known_path = True
                if m == method:
                    return fn(query, body, *match.groups())
        if known_path:
            raise ApiError(405, f"{method} is not allowed on {path}", "method_not_allowed")
        raise ApiError(404, "The resource you were accessing could not be found.")

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _q(query: dict[str, list[str]], name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    def _page(self, items: list[Any], query: dict[str, list[str]], path: str, key: str) -> tuple[int, Any]:
        try:
            page = int(self._q(query, "page") or 1)
            per_page = int(self._q(query, "per_page") or DEFAULT_PER_PAGE)
        except ValueError:
            raise ApiError(400, "page and per_page must be integers") from None
        if page < 1 or per_page < 1:
            raise ApiError(400, "page and per_page must be positive integers")
        per_page = min(per_page, MAX_PER_PAGE)
        total = len(items)
        last = max(1, math.ceil(total / per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        keep = [(k, v) for k, vs in sorted(query.items()) if k not in ("page", "per_page") for v in vs]

        def link(p: int) -> str:
            return f"{self.base_url}{path}?" + urlencode([*keep, ("page", str(p)), ("per_page", str(per_page))])

        pages: dict[str, str] = {}
        if page > 1:
            pages["first"] = link(1)
            pages["prev"] = link(min(page - 1, last))
        if page < last:
            pages["last"] = link(last)
            pages["next"] = link(page + 1)
        links = {"pages": pages} if pages else {}
        return 200, {key: chunk, "links": links, "meta": {"total": total}}

    def _image(self, image_id: str, include_failed: bool = False) -> Image:
        with self.lock:
            image = self.images.get(int(image_id))
            if image is not None and image.status == "deleted":
                expired = image.deleted_at is None or now() > image.deleted_at + self.faults.get("failed_grace")
                if expired:
                    self.images.pop(image.id, None)
                    image = None
                elif not include_failed:
                    image = None
        if image is None or image.removed:
            raise ApiError(404, "The resource you were accessing could not be found.")
        return image

    def _new_action(self, kind: str, image: Image, region: str) -> Action:
        action = Action(next(self.action_ids), kind, image.id, region, now())
        with self.lock:
            self.actions[action.id] = action
        return action

    def _image_tags(self, raw: Any) -> list[str]:
        if raw is None:
            return []
        if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
            raise ApiError(422, "tags must be an array of strings")
        for tag in raw:
            if not TAG_RE.match(tag):
                raise ApiError(
                    422,
                    f"tag name {tag!r} is invalid: tags may contain letters, numbers, colons, dashes, "
                    "and underscores, up to 255 characters",
                )
        return list(dict.fromkeys(raw))

    # ----------------------------------------------------------------- account, regions
    def _account(self, query: Any, body: Any) -> tuple[int, Any]:
        return 200, {
            "account": {
                "droplet_limit": 25,
                "floating_ip_limit": 3,
                "volume_limit": 100,
                "email": "sandbox@nixforge.invalid",
                "name": "nixforge sandbox",
                "uuid": self.account_uuid,
                "email_verified": True,
                "status": "active",
                "status_message": "",
                "team": {"uuid": self.account_uuid[::-1], "name": "nixforge sandbox"},
            }
        }

    def _regions(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        return self._page([cat.region_obj(s) for s in cat.REGIONS], query, "/v2/regions", "regions")

    # ----------------------------------------------------------------- images
    def _list_images(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        private = (self._q(query, "private") or "").lower() == "true"
        kind = self._q(query, "type")
        tag = self._q(query, "tag_name")
        out: list[dict[str, Any]] = []
        if not private:
            for entry in cat.PUBLIC_IMAGES:
                image = cat.public_image(entry)
                if kind == "application" and image["slug"] not in cat.APPLICATION_SLUGS:
                    continue
                if kind == "distribution" and image["slug"] in cat.APPLICATION_SLUGS:
                    continue
                if tag is None:
                    out.append(image)
        if kind is None:
            with self.lock:
                mine = [i for i in self.images.values() if i.status != "deleted" and not i.removed]
            out += [i.view() for i in sorted(mine, key=lambda i: i.id) if tag is None or tag in i.tags]
        return self._page(out, query, "/v2/images", "images")

    def _create_image(self, query: Any, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "error parsing request body")
        for key in ("name", "url", "region"):
            value = body.get(key)
            if value is None or value == "":
                raise ApiError(422, f"{key} is required")
            if not isinstance(value, str):
                raise ApiError(422, f"{key} must be a string")
        url, region = body["url"], body["region"]
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ApiError(422, "url must be a valid http or https URL")
        if region not in cat.REGIONS:
            raise ApiError(422, f"You specified an invalid region for image creation: {region}")
        if not cat.REGIONS[region][1]:
            raise ApiError(422, f"Region {region} is not available for custom images")
        distribution = body.get("distribution")
        if distribution not in cat.DISTRIBUTIONS:
            distribution = "Unknown"  # DigitalOcean's documented fallback
        description = body.get("description") or ""
        if not isinstance(description, str):
            raise ApiError(422, "description must be a string")
        tags = self._image_tags(body.get("tags"))
        image = Image(
            id=next(self.ids),
            name=body["name"],
            url=url,
            region=region,
            distribution=distribution,
            description=description,
            tags=tags,
            created_at=now(),
        )
        with self.lock:
            self.images[image.id] = image
            for tag in tags:
                self.tags.setdefault(tag, now())
        action = self._new_action("import", image, region)
        self._spawn(self._import, image, action, name=f"do-import-{image.id}")
        log.info("digitalocean: image %s (%s) importing from %s", image.id, image.name, url)
        return 202, {"image": image.view()}

    def _get_image(self, query: Any, body: Any, ident: str) -> tuple[int, Any]:
        if not ident.isdigit():
            for entry in cat.PUBLIC_IMAGES:
                if entry[1] == ident:
                    return 200, {"image": cat.public_image(entry)}
            raise ApiError(404, "The resource you were accessing could not be found.")
        for entry in cat.PUBLIC_IMAGES:
            if entry[0] == int(ident):
                return 200, {"image": cat.public_image(entry)}
        return 200, {"image": self._image(ident, include_failed=True).view()}

    def _update_image(self, query: Any, body: Any, ident: str) -> tuple[int, Any]:
        image = self._image(ident)
        if not isinstance(body, dict):
            raise ApiError(400, "error parsing request body")
        with self.lock:
            if "name" in body:
                if not isinstance(body["name"], str) or not body["name"]:
                    raise ApiError(422, "name must be a non-empty string")
                image.name = body["name"]
            if "description" in body:
                image.description = str(body["description"] or "")
            if "distribution" in body:
                d = body["distribution"]
                image.distribution = d if d in cat.DISTRIBUTIONS else "Unknown"
        return 200, {"image": image.view()}

    def _delete_image(self, query: Any, body: Any, ident: str) -> tuple[int, Any]:
        image = self._image(ident)
        with self.lock:
            image.removed = True
            self.images.pop(image.id, None)
            self._forget_bytes(image)
        log.info("digitalocean: image %s deleted", image.id)
        return 204, None

    # ----------------------------------------------------------------- import
    def _import(self, image: Image, action: Action) -> None:
        error = ""
        fetched: importer.Fetched | None = None
        inspection: importer.Inspection | None = None
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # the bytes stay (droplets boot them) until the image is deleted or the import fails
        stored = self.work_dir / "images" / f"{image.id}.img"
        stored.parent.mkdir(parents=True, exist_ok=True)
        image.path = stored
        try:
            limit = self.faults.get("size_limit")
            fetched = importer.fetch(image.url, stored, limit, self.networks, self.faults.get("refuse_query_urls"))
            inspection = importer.inspect(stored, limit)
        except importer.ImportRefused as exc:
            error = str(exc)
        except Exception:  # an emulator bug still ends the import as DigitalOcean would
            log.exception("digitalocean: import of image %s failed", image.id)
            error = "We had an internal problem importing your image. Please try again."
        # the knob is read again while waiting: a test that lowers it ends the wait
        while (remaining := image.created_at + self.faults.get("import_delay") - now()) > 0:
            if self.stopping.wait(min(remaining, 0.1)):
                self._forget_bytes(image)
                return
        with self.lock:
            if image.removed:
                self._forget_bytes(image)
                return
            if fetched is not None:
                image.sha256, image.downloaded_bytes = fetched.sha256, fetched.size
            action.completed_at = now()
            if error or inspection is None:
                image.status, image.error_message, image.deleted_at = "deleted", error, now()
                action.status = "errored"
                self._forget_bytes(image)
                log.info("digitalocean: image %s import failed: %s", image.id, error)
                return
            image.format, image.compression = inspection.format, inspection.compression
            image.virtual_size = inspection.virtual_size
            image.size_gigabytes = round(inspection.virtual_size / 1024**3, 2)
            image.min_disk_size = max(1, math.ceil(inspection.virtual_size / 1024**3))
            image.regions = [image.region]
            image.status = "available"
            action.status = "completed"
        log.info(
            "digitalocean: image %s available (%s, %s bytes)", image.id, inspection.format, fetched and fetched.size
        )

    # ----------------------------------------------------------------- actions
    def _image_actions(self, image: Image) -> list[Action]:
        with self.lock:
            return sorted((a for a in self.actions.values() if a.resource_id == image.id), key=lambda a: a.id)

    def _list_image_actions(self, query: dict[str, list[str]], body: Any, ident: str) -> tuple[int, Any]:
        image = self._image(ident, include_failed=True)
        views = [a.view() for a in self._image_actions(image)]
        return self._page(views, query, f"/v2/images/{image.id}/actions", "actions")

    def _get_image_action(self, query: Any, body: Any, ident: str, action_id: str) -> tuple[int, Any]:
        image = self._image(ident, include_failed=True)
        for action in self._image_actions(image):
            if action.id == int(action_id):
                return 200, {"action": action.view()}
        raise ApiError(404, "The resource you were accessing could not be found.")

    def _image_action(self, query: Any, body: Any, ident: str) -> tuple[int, Any]:
        image = self._image(ident)
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            raise ApiError(422, "type is required")
        kind = body["type"]
        if kind == "convert":
            raise ApiError(422, "Only backups can be converted to snapshots")
        if kind != "transfer":
            raise ApiError(422, f"{kind} is not a valid image action type")
        region = body.get("region")
        if not isinstance(region, str) or not region:
            raise ApiError(422, "region is required")
        if region not in cat.REGIONS:
            raise ApiError(422, f"You specified an invalid region for the transfer: {region}")
        if not cat.REGIONS[region][1]:
            raise ApiError(422, f"Region {region} is not available")
        with self.lock:
            if image.status != "available":
                raise ApiError(422, "The image is not available yet and cannot be transferred")
            if region in image.regions:
                raise ApiError(422, f"The image is already available in region {region}")
            busy = [
                a
                for a in self.actions.values()
                if a.resource_id == image.id
                and a.type == "transfer"
                and a.status == "in-progress"
                and a.region_slug == region
            ]
            if busy:
                raise ApiError(422, f"The image is already being transferred to {region}")
        action = self._new_action("transfer", image, region)
        self._spawn(self._transfer, image, action, name=f"do-transfer-{action.id}")
        return 201, {"action": action.view()}

    def _transfer(self, image: Image, action: Action) -> None:
        # the knob is read again while waiting: a test that lowers it ends the wait
        while (remaining := action.started_at + self.faults.get("transfer_delay") - now()) > 0:
            if self.stopping.wait(min(remaining, 0.1)):
                return
        with self.lock:
            action.completed_at = now()
            if image.removed:
                action.status = "errored"
                return
            if action.region_slug not in image.regions:
                image.regions.append(action.region_slug)
            action.status = "completed"

    def _list_actions(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        with self.lock:
            views = [a.view() for a in sorted(self.actions.values(), key=lambda a: a.id, reverse=True)]
        return self._page(views, query, "/v2/actions", "actions")

    def _get_action(self, query: Any, body: Any, action_id: str) -> tuple[int, Any]:
        with self.lock:
            action = self.actions.get(int(action_id))
        if action is None:
            raise ApiError(404, "The resource you were accessing could not be found.")
        return 200, {"action": action.view()}

    # ----------------------------------------------------------------- tags
    def _tag_view(self, name: str) -> dict[str, Any]:
        with self.lock:
            tagged = [i for i in self.images.values() if name in i.tags and i.status != "deleted" and not i.removed]
        images: dict[str, Any] = {"count": len(tagged)}
        resources: dict[str, Any] = {"count": len(tagged)}
        if tagged:
            last = f"{self.base_url}/v2/images/{max(tagged, key=lambda i: i.id).id}"
            images["last_tagged_uri"] = resources["last_tagged_uri"] = last
        zero = {"count": 0}
        droplets = {"count": len(self.droplets.live(name))}
        resources["count"] += droplets["count"]
        resources.update(
            droplets=droplets, images=images, volumes=dict(zero), volume_snapshots=dict(zero), databases=dict(zero)
        )
        return {"name": name, "resources": resources}

    def _tag(self, name: str) -> str:
        with self.lock:
            for existing in self.tags:
                if existing.lower() == name.lower():
                    return existing
        raise ApiError(404, "The resource you were accessing could not be found.")

    def _list_tags(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        with self.lock:
            names = sorted(self.tags)
        return self._page([self._tag_view(n) for n in names], query, "/v2/tags", "tags")

    def _create_tag(self, query: Any, body: Any) -> tuple[int, Any]:
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not TAG_RE.match(name):
            # not the usual error body: the tags service answers with `error` and `root_causes`
            # (the document's tags_bad_request), which python-digitalocean cannot read
            text = f'Error validating resource tag: "tag-name \\"{name}\\" contains invalid characters"'
            raise TagsBadRequest(text)
        with self.lock:
            try:
                name = self._tag(name)  # tags are case stable: the first spelling is canonical
            except ApiError:
                self.tags[name] = now()
        return 201, {"tag": self._tag_view(name)}

    def _get_tag(self, query: Any, body: Any, name: str) -> tuple[int, Any]:
        return 200, {"tag": self._tag_view(self._tag(name))}

    def _delete_tag(self, query: Any, body: Any, name: str) -> tuple[int, Any]:
        name = self._tag(name)
        with self.lock:
            self.tags.pop(name, None)
            for image in self.images.values():
                if name in image.tags:
                    image.tags.remove(name)
        return 204, None

    def _resources_arg(self, body: Any) -> list[Image]:
        items = body.get("resources") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise ApiError(422, "resources is required")
        out = []
        for item in items:
            if not isinstance(item, dict) or item.get("resource_type") != "image":
                raise ApiError(422, "only resources of type image can be tagged in this sandbox")
            ident = str(item.get("resource_id", ""))
            if not ident.isdigit():
                raise ApiError(404, "The resource you were accessing could not be found.")
            out.append(self._image(ident))
        return out

    def _tag_resources(self, query: Any, body: Any, name: str) -> tuple[int, Any]:
        name = self._tag(name)
        for image in self._resources_arg(body):
            with self.lock:
                if name not in image.tags:
                    image.tags.append(name)
        return 204, None

    def _untag_resources(self, query: Any, body: Any, name: str) -> tuple[int, Any]:
        name = self._tag(name)
        for image in self._resources_arg(body):
            with self.lock:
                if name in image.tags:
                    image.tags.remove(name)
        return 204, None

    # ----------------------------------------------------------------- account keys
    def _list_keys(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        views = [k.view() for k in self.keys.all()]
        return self._page(views, query, "/v2/account/keys", "ssh_keys")

    def _create_key(self, query: Any, body: Any) -> tuple[int, Any]:
        key = self.keys.create(body)
        log.info("digitalocean: ssh key %s (%s) added", key.id, key.name)
        return 201, {"ssh_key": key.view()}

    def _get_key(self, query: Any, body: Any, ident: str) -> tuple[int, Any]:
        return 200, {"ssh_key": self.keys.get(ident).view()}

    def _rename_key(self, query: Any, body: Any, ident: str) -> tuple[int, Any]:
        return 200, {"ssh_key": self.keys.rename(ident, body).view()}

    def _delete_key(self, query: Any, body: Any, ident: str) -> tuple[int, Any]:
        self.keys.delete(ident)
        return 204, None

    # ----------------------------------------------------------------- sizes
    def _list_sizes(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        regions = cat.available_regions()
        views = [
            {
                "slug": slug,
                "memory": memory,
                "vcpus": vcpus,
                "disk": disk,
                "transfer": 1.0,
                "price_monthly": round(hourly * 672, 2),
                "price_hourly": hourly,
                "regions": regions,
                "available": True,
                "description": "Basic",
            }
            for slug, (memory, vcpus, disk, hourly) in SIZE_SPECS.items()
        ]
        return self._page(views, query, "/v2/sizes", "sizes")

    # ----------------------------------------------------------------- droplets
    def _image_ref(self, value: Any) -> ImageRef | None:
        """The image a droplet create names: a custom image's id, or a public id or slug."""
        for entry in cat.PUBLIC_IMAGES:
            if value in (entry[0], entry[1], str(entry[0])):
                view = cat.public_image(entry)
                return ImageRef(view, view["status"], view["regions"], view["min_disk_size"])
        if not str(value).isdigit():
            return None
        with self.lock:
            image = self.images.get(int(value))
            if image is None or image.removed or image.status != "available":
                return None
            return ImageRef(
                image.view(),
                image.status,
                list(image.regions),
                image.min_disk_size,
                image.path,
                image.format,
                image.compression,
            )

    @staticmethod
    def _forget_bytes(image: Image) -> None:
        # the path stays set: an import still running may create the file after a delete
        if image.path is not None:
            image.path.unlink(missing_ok=True)

    def droplets_debug(self) -> list[dict[str, Any]]:
        """The emulator's debugging view of droplets (`GET /_sandbox/droplets`)."""
        return self.droplets.debug()

    def _list_droplets(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        return self._page(self.droplets.views(self._q(query, "tag_name")), query, "/v2/droplets", "droplets")

    def _create_droplet(self, query: Any, body: Any) -> tuple[int, Any]:
        tags = self._image_tags(body.get("tags") if isinstance(body, dict) else None)
        droplet = self.droplets.create(body, tags)
        with self.lock:
            for tag in tags:
                self.tags.setdefault(tag, now())
        log.info("digitalocean: droplet %s (%s) created", droplet.id, droplet.name)
        # no create action is kept for droplets here, so none is linked
        return 202, {"droplet": droplet.view(now()), "links": {"actions": []}}

    def _get_droplet(self, query: Any, body: Any, droplet_id: str) -> tuple[int, Any]:
        return 200, {"droplet": self.droplets.get(droplet_id).view(now())}

    def _delete_droplet(self, query: Any, body: Any, droplet_id: str) -> tuple[int, Any]:
        self.droplets.delete(droplet_id)
        log.info("digitalocean: droplet %s deleted", droplet_id)
        return 204, None

    def _delete_tagged_droplets(self, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        tag = self._q(query, "tag_name")
        if not tag:
            raise ApiError(422, "tag_name is required to delete droplets by tag")
        log.info("digitalocean: %d droplet(s) tagged %s deleted", self.droplets.delete_tagged(tag), tag)
        return 204, None
