"""Contract test: the Metal emulator against Equinix Metal's own OpenAPI document.

Traffic is produced by the clients we ship (packet-python as `metal_device` uses it, and
the module itself through ansible-playbook), recorded by the emulator, and every request
and answer of the operations we use is validated with openapi-core against
`../shared/specs/equinix-metal-v1.json` (read in place, never copied into the repository).

Known differences between the document and the service, applied in memory only:
- `Meta.next` / `Meta.previous` are `null` on the first/last page. The document types them
  as objects, but packet-python's `list_all_devices` stops on `meta["next"] is None`, i.e.
  the service sent `null`.
Answers with a status the operation does not declare (429, 5xx) are checked against the
document's `Error` schema.

Every exchange is validated, not only those of a list of operations: a request to a path
or with a method the document lacks fails the test.
`test_every_request_of_the_collections_modules_matches_the_spec` validates every request
the collection's own modules sent to this sandbox instance since it started (the
emulator's append-only log; the collection's User-Agent prefix says which).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _specs import find_spec, recorded, require_spec

REPO = Path(__file__).resolve().parents[2]
SPEC = find_spec("equinix-metal-v1.json")
sys.path.insert(0, str(REPO / "tests" / "sandbox"))

from nfsandbox.metal.testing import MetalSandbox, write_keys  # noqa: E402

pytestmark = [pytest.mark.sandbox]

OPERATIONS = {
    "findProjects",
    "findProjectById",
    "findProjectDevices",
    "createDevice",
    "findDeviceById",
    "deleteDevice",
    "performAction",
    "findProjectSSHKeys",
    "createProjectSSHKey",
    "findSSHKeys",
    "createSSHKey",
    "findSSHKeyById",
    "deleteSSHKey",
    "findMetros",
    "findPlans",
    "findOperatingSystems",
    "findFacilities",
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    require_spec(SPEC)
    return json.loads(SPEC.read_text())


@pytest.fixture(scope="module")
def sandbox(metal_sandbox: MetalSandbox) -> MetalSandbox:
    return metal_sandbox


def _openapi(spec: dict[str, Any], sandbox: MetalSandbox) -> Any:
    from openapi_core import Config, OpenAPI

    doc = copy.deepcopy(spec)
    doc["servers"] = [{"url": sandbox.api_url}, {"url": f"https://{sandbox.endpoint}"}]
    meta = doc["components"]["schemas"]["Meta"]["properties"]
    href = doc["components"]["schemas"]["Href"]
    for link in ("next", "previous"):
        meta[link] = dict(copy.deepcopy(href), nullable=True)
    # The document has three upstream nits outside the operations we use (see the specs README).
    return OpenAPI.from_dict(doc, config=Config(spec_validator_cls=None))


def _as_requests(sandbox: MetalSandbox, entry: dict[str, Any]) -> tuple[Any, Any]:
    import requests

    url = f"https://{sandbox.endpoint}{entry['path']}"
    headers = dict(entry["request_headers"])
    headers["X-Auth-Token"] = "recorded"  # the recorder drops the token; the scheme needs the header
    body = entry["request_body"].encode() if entry["request_body"] else None
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


def _produce_traffic(sandbox: MetalSandbox, tmp_path: Path) -> None:
    """Every operation we use, successes and the error answers our modules rely on."""
    from packet.baseapi import ResponseError

    manager = sandbox.manager()
    project = sandbox.project_id
    manager.call_api("projects")
    manager.call_api("projects/%s" % project)
    manager.call_api("plans")
    manager.call_api("operating-systems")
    manager.call_api("locations/metros")
    manager.call_api("facilities")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    public = (tmp_path / "k.pub").read_text().strip()
    key = manager.call_api(
        "projects/%s/ssh-keys" % project, "POST", {"label": "contract", "key": public, "tags": ["contract=1"]}
    )
    manager.call_api("projects/%s/ssh-keys" % project)
    manager.call_api("ssh-keys")
    manager.call_api("ssh-keys/%s" % key["id"])
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "u")], check=True)
    user_key = manager.create_ssh_key("contract-user", (tmp_path / "u.pub").read_text().strip())
    body = {
        "hostname": "contract",
        "plan": "c3.small.x86",
        "metro": "da",
        "operating_system": "debian_12",
        "billing_cycle": "hourly",
        "tags": ["nixforge-build-id=contract"],
        "userdata": "#cloud-config\n{}\n",
        "project_ssh_keys": [key["id"]],
        "termination_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)),
        "locked": False,
        "spot_instance": True,
        "spot_price_max": 0.5,
        "customdata": {"nixforge": {"build_id": "contract"}},
    }
    device = manager.call_api("projects/%s/devices" % project, "POST", body)
    facility_body = dict(body, facility="sv15", hostname="contract-f")
    facility_body.pop("metro")
    facility_body.pop("spot_instance")
    facility_body.pop("spot_price_max")
    device2 = manager.call_api("projects/%s/devices" % project, "POST", facility_body)
    for dev in (device, device2):
        deadline = time.time() + 120
        while manager.call_api("devices/%s" % dev["id"])["state"] != "active":
            assert time.time() < deadline, "device did not become active"
            time.sleep(0.5)
    manager.call_api("projects/%s/devices" % project, params={"page": 1, "per_page": 1})
    manager.call_api("projects/%s/devices" % project, params={"page": 2, "per_page": 1})
    manager.call_api("projects/%s/devices" % project, params={"tag": "nixforge-build-id%3Dcontract"})
    manager.call_api("devices/%s/actions" % device["id"], "POST", {"type": "reboot"})
    # error answers: 401, 404, 422 (validation), 429, 5xx
    for call in (
        lambda: sandbox.manager(token="wrong").call_api("plans"),
        lambda: manager.call_api("devices/00000000-0000-0000-0000-000000000000"),
        lambda: manager.call_api(
            "projects/%s/devices" % project, "POST", dict(body, plan="c3.large.arm64", metro="ny")
        ),
        lambda: manager.call_api("projects/%s/ssh-keys" % project, "POST", {"label": "bad", "key": "not a key"}),
    ):
        with pytest.raises(ResponseError):
            call()
    sandbox.set_faults({"throttle": 1})
    with pytest.raises(ResponseError):
        manager.call_api("plans")
    sandbox.set_faults({"server_error": 1, "server_error_status": 503})
    with pytest.raises(ResponseError):
        manager.call_api("operating-systems")
    sandbox.set_faults({})
    for dev in (device, device2):
        manager.call_api("devices/%s" % dev["id"], "DELETE")
    manager.call_api("ssh-keys/%s" % key["id"], "DELETE")
    user_key.delete()
    deadline = time.time() + 60
    while sandbox.metal_resources():
        assert time.time() < deadline, sandbox.metal_resources()
        time.sleep(0.5)
    assert sandbox.leftovers() == []


def _validate(api: Any, spec: dict[str, Any], sandbox: MetalSandbox, exchanges: list[dict[str, Any]]) -> set[str]:
    from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
    from openapi_core.templating.paths.exceptions import PathNotFound, PathsNotFound
    from openapi_schema_validator import OAS30Validator

    seen: set[str] = set()
    problems: list[str] = []
    components = {"components": spec["components"]}
    error_schema = dict(spec["components"]["schemas"]["Error"], **components)
    for entry in exchanges:
        request, response = _as_requests(sandbox, entry)
        oreq = RequestsOpenAPIRequest(request)
        operation = _operation_id(spec, entry)
        try:
            result = api.unmarshal_request(oreq)
        except (PathNotFound, PathsNotFound):
            operation = None
        if operation is None:  # not dropped: a request the document does not know is off the contract
            problems.append(f"{entry['method']} {entry['path']}: no such path and operation in {SPEC.name}")
            continue
        seen.add(operation)
        where = f"{operation} {entry['method']} {entry['path']} -> {entry['status']}"
        if entry["status"] < 400 and result.errors:
            problems.append(f"request {where}: {[str(e).splitlines()[0][:300] for e in result.errors]}")
        declared = _declared_statuses(spec, entry, operation)
        if str(entry["status"]) in declared:
            try:
                api.validate_response(oreq, RequestsOpenAPIResponse(response))
            except Exception as exc:  # noqa: BLE001 - collected and reported together
                cause = getattr(exc, "__cause__", None)
                detail = [str(e).splitlines()[0] for e in getattr(cause, "schema_errors", [])][:5]
                problems.append(f"response {where}: {type(exc).__name__} {detail}")
        else:
            body = entry["response_body"]
            errors = list(OAS30Validator(error_schema).iter_errors(body))
            if body is None or errors or not body.get("errors"):
                problems.append(f"undeclared-status response {where} is not a Metal Error body: {body}")
    assert not problems, "\n".join(problems)
    return seen


def _operation_id(spec: dict[str, Any], entry: dict[str, Any]) -> str | None:
    import re

    path = entry["path"].split("?", 1)[0]
    if path.startswith("/metal/v1"):
        path = path[len("/metal/v1") :]
    for template, item in spec["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "/?$"
        if re.match(pattern, path):
            op = item.get(entry["method"].lower())
            if isinstance(op, dict):
                return op.get("operationId")
    return None


def _declared_statuses(spec: dict[str, Any], entry: dict[str, Any], operation: str) -> set[str]:
    for item in spec["paths"].values():
        for op in item.values():
            if isinstance(op, dict) and op.get("operationId") == operation:
                return set(op.get("responses", {}))
    return set()


def test_packet_python_traffic_matches_the_spec(spec, sandbox, tmp_path):
    api = _openapi(spec, sandbox)
    sandbox.clear_exchanges()
    _produce_traffic(sandbox, tmp_path)
    exchanges = sandbox.exchanges()
    seen = _validate(api, spec, sandbox, exchanges)
    assert not (OPERATIONS - seen), f"operations not exercised: {sorted(OPERATIONS - seen)}"

    # The check has teeth: a request and an answer off the contract are caught.
    create = next(
        e for e in exchanges if e["method"] == "POST" and e["path"].endswith("/devices") and e["status"] == 201
    )
    bad_request = dict(create, request_body=json.dumps(dict(json.loads(create["request_body"]), tags={"a": "b"})))
    bad_answer = dict(create, response_body=dict(create["response_body"], state="sleeping"))
    for broken in (bad_request, bad_answer):
        with pytest.raises(AssertionError, match="createDevice"):
            _validate(api, spec, sandbox, [broken])


def test_metal_device_module_traffic_matches_the_spec(spec, sandbox, tmp_path):
    """The requests metal_device itself sends (through ansible-playbook) and their answers."""
    api = _openapi(spec, sandbox)
    keys = write_keys(tmp_path)
    sandbox.clear_exchanges()
    args = {"build_id": "contract-mod", "plan": "c3.small.x86", "metro": "da", "spot_instance": True, **keys}
    sandbox.play(tmp_path, [dict(args), {"build_id": "contract-mod", "state": "absent"}])
    seen = _validate(api, spec, sandbox, sandbox.exchanges())
    for operation in ("createDevice", "findDeviceById", "findProjectDevices", "deleteDevice", "createProjectSSHKey"):
        assert operation in seen
    assert sandbox.leftovers() == []


COLLECTION_AGENT = "nixforge.images packet-python/"  # the collection's prefix of packet-python's User-Agent


def test_every_request_of_the_collections_modules_matches_the_spec(spec, sandbox, tmp_path):
    """metal_device through ansible-playbook, then every request the collection's modules
    sent to this instance (from this test and every earlier one), validated."""
    api = _openapi(spec, sandbox)
    keys = write_keys(tmp_path)
    args = {"build_id": "contract-all", "plan": "c3.small.x86", "metro": "da", **keys}
    results = sandbox.play(tmp_path, [dict(args), {"build_id": "contract-all", "state": "absent"}])[0]
    assert [r.get("failed", False) for r in results] == [False, False], [r.get("msg") for r in results]
    exchanges = recorded(sandbox.state, "metal", COLLECTION_AGENT)
    seen = _validate(api, spec, sandbox, exchanges)
    for operation in ("createDevice", "findDeviceById", "findProjectDevices", "deleteDevice", "createProjectSSHKey"):
        assert operation in seen, sorted(seen)
    assert sandbox.leftovers() == []
    unknown = dict(exchanges[0], path="/metal/v1/devices/x/nonsense", method="GET")
    with pytest.raises(AssertionError, match="no such path and operation"):
        _validate(api, spec, sandbox, [unknown])
