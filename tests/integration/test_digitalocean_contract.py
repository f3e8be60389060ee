"""Contract test: the DigitalOcean emulator against DigitalOcean's own OpenAPI document.

A scripted session (python-digitalocean as the collection uses it, plus raw requests for
the error answers) runs against the emulator in the sandbox daemon; the emulator records
every request and answer, and each one of the operations we use is validated with
openapi-core against `../shared/specs/digitalocean-v2.yaml` (read in place, never copied
into the repository).

Known differences between the document and the service, applied in memory only:
- the 201/200 answers of `imageActions_post` and `imageActions_get` are typed as a bare
  `action`, while the document's own examples (and the service, and python-digitalocean,
  which reads `["action"]`) wrap it: `{"action": {...}}`. The schema is wrapped here so
  the check has teeth.
- python-digitalocean sends optional fields it was not given as `null` (`distribution`,
  `description` of an image); the service treats them as absent, so they are dropped
  before the request is validated (the emulator itself is checked with and without).
- paths are validated without their trailing slash: python-digitalocean requests
  `images/`, `images/<id>/`, `images/<id>/actions/`, which the service accepts as the
  same resources the document lists without the slash.
- `ssh_key_identifier` (the path parameter of /v2/account/keys/{...}) is `anyOf` an integer
  id and a fingerprint, which openapi-core cannot take from a path; it is checked as one
  string pattern covering both instead.
Every answer must carry DigitalOcean's ratelimit-* headers; error answers must be the
document's `error` body (`id`, `message`, and here always `request_id`), except where an
operation declares its own (a tag name refused by `tags_create`: `error`/`root_causes`).

Every exchange is validated, not only those of a list of operations: a request to a path
or with a method the document lacks fails the test. Besides the scripted session,
`test_every_request_of_the_collections_modules_matches_the_spec` validates every request
the collection's own modules sent to this sandbox instance since it started (the
emulator's append-only log; the collection's User-Agent says which), so the requests of
every integration test that ran before it on the instance are checked too.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _specs import find_spec, recorded, require_spec

REPO = Path(__file__).resolve().parents[2]
SPEC_NAME = "digitalocean-v2.yaml"


SPEC = find_spec(SPEC_NAME)
sys.path.insert(0, str(REPO / "tests" / "sandbox"))

from nfsandbox.digitalocean.testing import DOSandbox, FileServer, mbr_image, qcow2_image  # noqa: E402

pytestmark = [pytest.mark.sandbox]

OPERATIONS = {
    "account_get",
    "regions_list",
    "images_list",
    "images_create_custom",
    "images_get",
    "images_update",
    "images_delete",
    "imageActions_list",
    "imageActions_post",
    "imageActions_get",
    "actions_get",
    "actions_list",
    "tags_list",
    "tags_create",
    "tags_get",
    "tags_delete",
    "droplets_list",
    "droplets_create",
    "droplets_get",
    "droplets_destroy",
    "droplets_destroy_byTag",
    "sshKeys_list",
    "sshKeys_create",
    "sshKeys_get",
    "sshKeys_update",
    "sshKeys_delete",
    "sizes_list",
}
RATELIMIT_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    require_spec(SPEC)
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC.open() as handle:
        return yaml.load(handle, Loader=loader)  # noqa: S506 - a safe loader


@pytest.fixture(scope="module")
def sandbox(do_sandbox: DOSandbox) -> DOSandbox:
    return do_sandbox


def _openapi(spec: dict[str, Any], sandbox: DOSandbox) -> Any:
    from openapi_core import Config, OpenAPI

    doc = copy.deepcopy(spec)
    doc["servers"] = [{"url": sandbox.endpoint}]
    responses = doc["components"]["responses"]
    for name in ("post_image_action_response", "get_image_action_response"):
        media = responses[name]["content"]["application/json"]
        media["schema"] = {
            "type": "object",
            "properties": {"action": {"$ref": "#/components/schemas/action"}},
            "required": ["action"],
        }
    # openapi-core cannot read a path parameter typed `anyOf` (id or fingerprint): the same
    # choice as one pattern
    doc["components"]["parameters"]["ssh_key_identifier"]["schema"] = {
        "type": "string",
        "pattern": "^([0-9]+|[0-9a-f]{2}(:[0-9a-f]{2}){15})$",
    }
    # upstream nits outside the operations we use (see the specs README): no document validation
    return OpenAPI.from_dict(doc, config=Config(spec_validator_cls=None))


def _as_requests(sandbox: DOSandbox, entry: dict[str, Any]) -> tuple[Any, Any]:
    import requests

    path, _sep, query = entry["path"].partition("?")
    url = sandbox.endpoint + (path.rstrip("/") or "/") + (f"?{query}" if query else "")
    headers = dict(entry["request_headers"])
    headers["Authorization"] = "Bearer recorded"  # the recorder drops the token; the scheme needs it
    body = entry["request_body"].encode() if entry["request_body"] else None
    if body and entry["method"] in ("POST", "PUT"):
        payload = json.loads(body)
        if isinstance(payload, dict):  # python-digitalocean sends unset optional fields as null
            body = json.dumps({k: v for k, v in payload.items() if v is not None}).encode()
            headers.pop("Content-Length", None)
    if entry["method"] in ("GET", "DELETE") and body in (b"{}", b"null"):
        body = None  # python-digitalocean sends "{}" with its DELETEs; the service ignores it
        headers.pop("Content-Length", None)
    prepared = requests.Request(entry["method"], url, headers=headers, data=body).prepare()
    response = requests.Response()
    response.status_code = entry["status"]
    response.url = url
    response.request = prepared
    if entry["response_body"] is not None:
        response._content = json.dumps(entry["response_body"]).encode()
        response.headers["Content-Type"] = "application/json"
    else:
        response._content = b""
    response.headers.update(entry["response_headers"])
    return prepared, response


def _operation_id(spec: dict[str, Any], entry: dict[str, Any]) -> str | None:
    path = entry["path"].split("?", 1)[0].rstrip("/")
    best = None
    for template, item in spec["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path):
            op = item.get(entry["method"].lower())
            if isinstance(op, dict) and (best is None or "{" not in template):
                best = op.get("operationId")  # a literal path wins over a templated one
    return best


def _uses_error_schema(spec: dict[str, Any], operation: str, status: int) -> bool:
    """Whether the answer must be DO's usual error body (some services declare their own)."""
    for item in spec["paths"].values():
        for op in item.values():
            if isinstance(op, dict) and op.get("operationId") == operation:
                declared = op["responses"].get(str(status)) or op["responses"].get("default") or {}
                name = declared.get("$ref", "").rsplit("/", 1)[-1]
                response = spec["components"]["responses"].get(name, declared)
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                return schema.get("$ref") == "#/components/schemas/error"
    return True


def _validate(api: Any, spec: dict[str, Any], sandbox: DOSandbox, exchanges: list[dict[str, Any]]) -> set[str]:
    from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
    from openapi_schema_validator import OAS30Validator

    seen: set[str] = set()
    problems: list[str] = []
    error_schema = dict(spec["components"]["schemas"]["error"], components=spec["components"])
    error_schema["required"] = ["id", "message", "request_id"]
    for entry in exchanges:
        operation = _operation_id(spec, entry)
        if operation is None:  # not dropped: a request the document does not know is off the contract
            problems.append(f"{entry['method']} {entry['path']}: no such path and operation in {SPEC_NAME}")
            continue
        seen.add(operation)
        where = f"{operation} {entry['method']} {entry['path']} -> {entry['status']}"
        missing = [h for h in RATELIMIT_HEADERS if h not in entry["response_headers"]]
        if missing:
            problems.append(f"{where}: no {missing} header")
        request, response = _as_requests(sandbox, entry)
        oreq = RequestsOpenAPIRequest(request)
        if entry["status"] < 400:
            result = api.unmarshal_request(oreq)
            if result.errors:
                problems.append(f"request {where}: {[str(e).splitlines()[0][:300] for e in result.errors]}")
        try:
            api.validate_response(oreq, RequestsOpenAPIResponse(response))
        except Exception as exc:  # noqa: BLE001 - collected and reported together
            cause = getattr(exc, "__cause__", None)
            detail = [str(e).splitlines()[0][:200] for e in getattr(cause, "schema_errors", [])][:5]
            problems.append(f"response {where}: {type(exc).__name__} {detail or str(exc)[:300]}")
        if entry["status"] >= 400 and _uses_error_schema(spec, operation, entry["status"]):
            errors = list(OAS30Validator(error_schema).iter_errors(entry["response_body"]))
            if errors:
                problems.append(f"error body {where}: {[e.message for e in errors]}")
    assert not problems, "\n".join(problems)
    return seen


def _produce_traffic(sandbox: DOSandbox, files: FileServer) -> None:
    """Every operation we use, successes and the error answers our modules rely on."""
    import requests
    from digitalocean import Tag
    from digitalocean.baseapi import DataReadError

    def raw(method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {kw.pop('token', sandbox.token)}"}
        return requests.request(method, sandbox.endpoint + path, headers=headers, timeout=30, **kw)

    manager = sandbox.manager()
    manager.get_account()
    manager.get_all_regions()
    raw("GET", "/v2/regions", params={"per_page": 3, "page": 2})
    files.root.joinpath("disk.qcow2.gz").write_bytes(gzip.compress(qcow2_image(1024**3)))
    files.root.joinpath("bad.gz").write_bytes(gzip.compress(b"no disk here\n" * 10))
    image = sandbox.image(
        name="contract",
        url=files.url("disk.qcow2.gz"),
        region="nyc3",
        distribution="Unknown",
        description="contract session",
        tags=["nixforge-build-id:contract"],
    )
    image.create()
    bad = sandbox.image(name="contract-bad", url=files.url("bad.gz"), region="nyc3")
    bad.create()
    deadline = time.time() + 60
    while image.load().status != "available" or bad.load().status != "deleted":
        assert time.time() < deadline, (image.status, bad.status)
        time.sleep(0.3)
    manager.get_my_images()
    manager.get_distro_images()
    manager.get_data("images/", params={"private": "true", "per_page": 1, "page": 1})
    manager.get_data("images", params={"tag_name": "nixforge-build-id:contract"})
    image.rename("contract-renamed")
    raw("PUT", f"/v2/images/{image.id}", json={"description": "updated", "distribution": "Debian"})
    action = image.transfer("ams3")["action"]
    raw("GET", f"/v2/images/{image.id}/actions/{action['id']}")
    raw("GET", f"/v2/images/{image.id}/actions")
    raw("GET", f"/v2/images/{bad.id}/actions")
    assert manager.get_action(action["id"]).wait(update_every_seconds=0.3)
    raw("GET", "/v2/actions", params={"per_page": 5})
    tag = Tag(token=sandbox.token, end_point=sandbox.api_url, name="contract-extra")
    tag.create()
    manager.get_all_tags()
    Tag.get_object(sandbox.token, "contract-extra")
    tag.delete()
    manager.get_all_droplets(tag_name="nixforge-build-id:contract")
    # droplets as another tool leaves them (the reaper removes them by id; delete by tag too)
    for name in ("contract-droplet-1", "contract-droplet-2"):
        body = {"name": name, "region": "nyc3", "size": "s-1vcpu-1gb", "image": "debian-12-x64"}
        assert raw("POST", "/v2/droplets", json={**body, "tags": ["nixforge-build-id:contract"]}).status_code == 202
    first, second = manager.get_all_droplets(tag_name="nixforge-build-id:contract")
    raw("GET", f"/v2/droplets/{first.id}")
    assert raw("DELETE", f"/v2/droplets/{first.id}").status_code == 204
    assert raw("DELETE", "/v2/droplets", params={"tag_name": "nixforge-build-id:contract"}).status_code == 204
    assert raw("GET", f"/v2/droplets/{second.id}").status_code == 404
    _droplet_of_a_custom_image(sandbox, manager, raw, image.id)
    # error answers: 401, 404, 422, 400, 429, 500, 503
    assert raw("GET", "/v2/account", token="dop_v1_wrong").status_code == 401
    assert raw("GET", "/v2/images/1").status_code == 404
    assert raw("GET", "/v2/actions/1").status_code == 404
    assert (
        raw("POST", "/v2/images", json={"name": "x", "url": "http://127.0.0.1/x", "region": "mars1"}).status_code == 422
    )
    assert raw("POST", "/v2/images", json={"name": "x", "region": "nyc3"}).status_code == 422
    assert raw("POST", f"/v2/images/{image.id}/actions", json={"type": "transfer", "region": "ams3"}).status_code == 422
    assert raw("POST", "/v2/tags", json={"name": "not=valid"}).status_code == 400
    sandbox.set_faults({"throttle": 1, "import_delay": 0.3})
    with pytest.raises(DataReadError):
        manager.get_my_images()
    for status, knob in ((500, "server_error"), (503, "unavailable")):
        sandbox.set_faults({knob: 1})
        assert raw("GET", f"/v2/images/{image.id}").status_code == status
    sandbox.set_faults({})
    image.destroy()
    assert raw("DELETE", f"/v2/images/{image.id}").status_code == 404


def _droplet_of_a_custom_image(sandbox: DOSandbox, manager: Any, raw: Any, image_id: int) -> None:
    """Account keys and a droplet that boots the imported image (it has no boot loader: the
    droplet is active all the same), as the boot check uses them."""
    from digitalocean import SSHKey

    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1aYlYzHgUOcZzsDVdfBFiUiUhmyj1D7LtV5bwHfkU contract"
    key = SSHKey(token=sandbox.token, end_point=sandbox.api_url, name="contract", public_key=public)
    key.create()
    key.load()  # create() keeps only the id
    assert raw("POST", "/v2/account/keys", json={"name": "again", "public_key": public}).status_code == 422
    manager.get_all_sshkeys()
    raw("GET", f"/v2/account/keys/{key.fingerprint}")
    raw("PUT", f"/v2/account/keys/{key.id}", json={"name": "contract-renamed"})
    raw("GET", "/v2/sizes")
    body = {"name": "contract-boot", "region": "nyc3", "size": "s-1vcpu-512mb-10gb", "image": image_id}
    body.update(ssh_keys=[key.fingerprint], user_data="#cloud-config\n", tags=["nixforge-build-id:contract"])
    assert raw("POST", "/v2/droplets", json={**body, "size": "s-99"}).status_code == 422
    created = raw("POST", "/v2/droplets", json=body)
    assert created.status_code == 202, created.text
    droplet = created.json()["droplet"]
    deadline = time.time() + 120
    while raw("GET", f"/v2/droplets/{droplet['id']}").json()["droplet"]["status"] == "new":
        assert time.time() < deadline
        time.sleep(0.2)
    assert raw("DELETE", f"/v2/droplets/{droplet['id']}").status_code == 204
    key.destroy()
    assert raw("GET", f"/v2/account/keys/{key.id}").status_code == 404


def test_python_digitalocean_traffic_matches_the_spec(spec, sandbox, tmp_path):
    api = _openapi(spec, sandbox)
    root = tmp_path / "www"
    root.mkdir()
    sandbox.set_faults({"import_delay": 0.3, "transfer_delay": 0.3})
    sandbox.clear_exchanges()
    try:
        with FileServer(root) as files:
            files.root = root
            _produce_traffic(sandbox, files)
    finally:
        sandbox.set_faults({})
    exchanges = sandbox.exchanges()
    seen = _validate(api, spec, sandbox, exchanges)
    assert not (OPERATIONS - seen), f"operations not exercised: {sorted(OPERATIONS - seen)}"
    assert sandbox.leftovers() == []

    # The check has teeth: a request and answers off the contract are caught.
    create = next(e for e in exchanges if e["method"] == "POST" and e["path"].rstrip("/") == "/v2/images")
    get = next(
        e
        for e in exchanges
        if e["method"] == "GET" and e["status"] == 200 and re.fullmatch(r"/v2/images/\d+/?", e["path"].split("?")[0])
    )
    transfer = next(e for e in exchanges if e["method"] == "POST" and "/actions" in e["path"] and e["status"] == 201)
    bad_request = dict(create, request_body=json.dumps(dict(json.loads(create["request_body"]), tags="one-tag")))
    bad_status = dict(get, response_body={"image": dict(get["response_body"]["image"], status="importing")})
    unwrapped = dict(transfer, response_body=dict(transfer["response_body"]["action"], status="done"))
    no_headers = dict(get, response_headers={})
    for broken, operation in (
        (bad_request, "images_create_custom"),
        (bad_status, "images_get"),
        (unwrapped, "imageActions_post"),
        (no_headers, "images_get"),
    ):
        with pytest.raises(AssertionError, match=operation):
            _validate(api, spec, sandbox, [broken])


def test_refusal_leaves_an_errored_action_in_the_documented_shape(spec, sandbox, tmp_path):
    """A failed import, as DO reports it: image `deleted` + `error_message`, action `errored`."""
    api = _openapi(spec, sandbox)
    root = tmp_path / "www"
    root.mkdir()
    root.joinpath("raw.bin").write_bytes(b"\x00" * 4096)  # no boot signature: not a raw disk
    root.joinpath("ok.img").write_bytes(mbr_image())
    sandbox.set_faults({"import_delay": 0.2})
    sandbox.clear_exchanges()
    try:
        with FileServer(root) as files:
            image = sandbox.image(name="refused", url=files.url("raw.bin"), region="sfo3")
            image.create()
            deadline = time.time() + 30
            while image.load().status != "deleted":
                assert time.time() < deadline
                time.sleep(0.2)
            assert "We don't support the format" in image.error_message
            actions = sandbox.manager().get_data(f"images/{image.id}/actions")["actions"]
            assert [(a["type"], a["status"]) for a in actions] == [("import", "errored")]
    finally:
        sandbox.set_faults({})
    seen = _validate(api, spec, sandbox, sandbox.exchanges())
    assert {"images_create_custom", "images_get", "imageActions_list"} <= seen
    assert sandbox.leftovers() == []


COLLECTION_AGENT = "(nixforge.images)"  # in the User-Agent of the collection's DigitalOcean client


def test_every_request_of_the_collections_modules_matches_the_spec(spec, sandbox, tmp_path):
    """do_custom_image and do_build_info through ansible-playbook (import, transfer, look-ups,
    removal), then every request the collection's modules sent to this instance, from this
    test and every earlier one, validated against the document."""
    from test_do_custom_image import play

    api = _openapi(spec, sandbox)
    root = tmp_path / "www"
    root.mkdir()
    (root / "nixos.qcow2.gz").write_bytes(gzip.compress(qcow2_image(64 * 1024**2)))
    sandbox.set_faults({"import_delay": 0.3, "transfer_delay": 0.3})
    try:
        with FileServer(root) as files:
            args = {"name": "contract-mod", "build_id": "contract-mod", "ttl": "1h", "region": "nyc3",
                    "url": files.url("nixos.qcow2.gz"), "regions": ["ams3"], "poll_interval": 0.3}  # fmt: skip
            results = play(sandbox, tmp_path, [args, {"build_id": "contract-mod", "state": "absent"}])[0]
    finally:
        sandbox.set_faults({})
    assert [r.get("failed", False) for r in results] == [False, False], [r.get("msg") for r in results]
    exchanges = recorded(sandbox.state, "digitalocean", COLLECTION_AGENT)
    seen = _validate(api, spec, sandbox, exchanges)
    for operation in ("regions_list", "images_list", "images_create_custom", "images_get", "imageActions_post",
                      "actions_get", "images_delete"):  # fmt: skip
        assert operation in seen, sorted(seen)
    assert sandbox.leftovers() == []
    # not dropped: a path the document lacks fails
    unknown = dict(exchanges[0], path="/v2/images/1/nonsense", method="GET")
    with pytest.raises(AssertionError, match="no such path and operation"):
        _validate(api, spec, sandbox, [unknown])
