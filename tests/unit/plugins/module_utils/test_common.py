from __future__ import annotations

import datetime
import json

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError, UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import (
    TAG_BUILD_ID,
    TAG_EXPIRES_AT,
    TAG_PIPELINE,
    BuildIdentity,
    build_tags,
    compute_expiry,
    format_timestamp,
    is_expired,
    parse_duration,
    parse_timestamp,
    validate_name,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._module import Action, NixforgeModule

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("1d", 86400), ("45s", 45), ("600", 600), (" 2H ", 7200)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "h", "2x", "-1h", "0", "0m", "1.5h", "2 hours"])
def test_parse_duration_rejects(text):
    with pytest.raises(UserInputError) as info:
        parse_duration(text)
    assert info.value.parameter == "ttl"
    assert "Parameter 'ttl'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T18:00:00Z", "2026-11-22T18:00:00Z"),
        ("2026-11-22T18:00:00+00:00", "2026-11-22T18:00:00Z"),
        ("2026-11-22T19:00:00+01:00", "2026-11-22T18:00:00Z"),
        ("2026-11-22T18:00:00.250Z", "2026-11-22T18:00:00Z"),
    ],
)
def test_parse_and_format_timestamp(text, expected):
    assert format_timestamp(parse_timestamp(text)) == expected


@pytest.mark.parametrize("text", ["2026-11-22T18:00:00", "tomorrow", "", "2026-13-01T00:00:00Z"])
def test_parse_timestamp_rejects_naive_and_garbage(text):
    with pytest.raises(UserInputError) as info:
        parse_timestamp(text)
    assert info.value.parameter == "expires_at"


def test_format_timestamp_needs_aware_datetime():
    with pytest.raises(ValueError):
        format_timestamp(datetime.datetime(2026, 1, 1))


def test_compute_expiry_default_ttl_is_three_hours():
    assert compute_expiry(now=NOW) == datetime.datetime(2026, 11, 22, 13, 0, 0, tzinfo=UTC)


def test_compute_expiry_from_ttl_and_expires_at():
    assert compute_expiry(ttl="90m", now=NOW) == datetime.datetime(2026, 11, 22, 11, 30, tzinfo=UTC)
    assert compute_expiry(expires_at="2026-11-23T00:00:00Z", now=NOW) == datetime.datetime(2026, 11, 23, tzinfo=UTC)


def test_compute_expiry_rejects_both_and_too_far():
    with pytest.raises(UserInputError, match="both"):
        compute_expiry(expires_at="2026-11-23T00:00:00Z", ttl="1h", now=NOW)
    with pytest.raises(UserInputError) as info:
        compute_expiry(ttl="8d", now=NOW)
    assert info.value.parameter == "ttl"
    with pytest.raises(UserInputError) as info:
        compute_expiry(expires_at="2027-01-01T00:00:00Z", now=NOW)
    assert info.value.parameter == "expires_at"


def test_is_expired():
    assert is_expired("2026-11-22T09:59:59Z", now=NOW)
    assert not is_expired("2026-11-22T10:00:01Z", now=NOW)
    assert is_expired("garbage", now=NOW)
    assert is_expired(None, now=NOW)
    assert not is_expired("garbage", now=NOW, invalid_is_expired=False)


@pytest.mark.parametrize("name", ["a", "build-1", "sd-aarch64-20261122", "0" * 40])
def test_validate_name_accepts(name):
    assert validate_name(name, "build_id") == name


@pytest.mark.parametrize("name", ["", None, "-a", "a-", "A", "a_b", "a.b", "a b", "0" * 41, "ü"])
def test_validate_name_rejects_and_names_parameter(name):
    with pytest.raises(UserInputError) as info:
        validate_name(name, "build_id")
    assert info.value.parameter == "build_id"
    assert "build_id" in str(info.value)


def test_build_tags():
    expiry = datetime.datetime(2026, 11, 22, 13, 0, tzinfo=UTC)
    tags = build_tags("b1", "default", expiry, {"owner": "ops", "n": 3})
    assert tags == {
        "owner": "ops",
        "n": "3",
        "nixforge-build-id": "b1",
        "nixforge-pipeline": "default",
        "nixforge-expires-at": "2026-11-22T13:00:00Z",
    }
    with pytest.raises(UserInputError) as info:
        build_tags("b1", "default", expiry, {"nixforge-build-id": "other"})
    assert info.value.parameter == "tags"


def test_build_identity_from_params():
    identity = BuildIdentity.from_params({"build_id": "b1", "pipeline": None, "ttl": "1h", "tags": {"a": "b"}}, now=NOW)
    assert identity.as_dict() == {"build_id": "b1", "pipeline": "default", "expires_at": "2026-11-22T11:00:00Z"}
    assert identity.tags({"Name": "x"})["Name"] == "x"
    assert identity.tags()["a"] == "b"
    assert identity.resource_name("sg") == "nixforge-b1-sg"
    with pytest.raises(UserInputError) as info:
        identity.require_future_expiry(now=NOW + datetime.timedelta(hours=2))
    assert info.value.parameter == "expires_at"
    with pytest.raises(UserInputError) as info:
        BuildIdentity.from_params({"build_id": ""})
    assert info.value.parameter == "build_id"


# -- the module base class ------------------------------------------------------------


class _Exit(Exception):
    def __init__(self, kind, result):
        super().__init__(kind)
        self.kind = kind
        self.result = result


@pytest.fixture
def exits(monkeypatch):
    from ansible.module_utils import basic

    def exit_json(self, **kwargs):
        raise _Exit("exit", kwargs)

    def fail_json(self, msg, **kwargs):
        kwargs["msg"] = msg
        kwargs["failed"] = True
        # what Ansible would print: the no_log values removed
        raise _Exit("fail", json.loads(json.dumps(basic.remove_values(kwargs, self.no_log_values))))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)


class Demo(NixforgeModule):
    argument_spec = dict(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        password=dict(type="str", no_log=True),
        boom=dict(type="str"),
        wait_timeout=dict(type="int", default=30),
    )

    def run(self):
        if self.params["boom"] == "user":
            raise UserInputError("'x' is wrong", hint="use 'y'", parameter="boom")
        if self.params["boom"] == "provider":
            raise ProviderError("token %s rejected" % self.params["password"], what="Calling the API", code="E1")
        if self.params["boom"] == "bug":
            self.result["created_id"] = "thing-1"
            raise KeyError("no %s here" % self.params["password"])
        if self.would_change("create thing"):
            self.result["created"] = True
        self.result["tags"] = self.build.tags()


def run_demo(args):
    with patch_module_args(args):
        with pytest.raises(_Exit) as info:
            Demo().execute()
    return info.value


def test_an_unexpected_exception_fails_cleanly_with_secrets_masked_and_the_result_kept(exits):
    out = run_demo({"build_id": "b1", "boom": "bug", "password": "hunter2-secret"})
    assert out.kind == "fail"
    assert out.result["msg"].startswith("KeyError: ")
    assert "-vvv" in out.result["msg"]
    assert out.result["created_id"] == "thing-1"  # what was created is still reported
    assert "Traceback" in out.result["exception"] and "KeyError" in out.result["exception"]
    assert "hunter2-secret" not in json.dumps(out.result)


def test_module_merges_shared_options_and_module_wins():
    spec = Demo.full_argument_spec()
    for name in ("build_id", "pipeline", "expires_at", "ttl", "tags", "wait", "wait_timeout", "state"):
        assert name in spec
    assert spec["wait_timeout"]["default"] == 30
    assert ["expires_at", "ttl"] in Demo.full_module_kwargs()["mutually_exclusive"]


def test_module_success_and_check_mode(exits):
    out = run_demo({"build_id": "b1", "ttl": "1h"})
    assert out.kind == "exit"
    assert out.result["changed"] is True
    assert out.result["created"] is True
    assert out.result["actions"] == ["create thing"]
    assert out.result["tags"]["nixforge-build-id"] == "b1"
    assert out.result["tags"]["nixforge-expires-at"].endswith("Z")

    out = run_demo({"build_id": "b1", "_ansible_check_mode": True})
    assert out.result["changed"] is True
    assert "created" not in out.result


def test_module_bad_build_id_fails_naming_parameter(exits):
    out = run_demo({"build_id": "Bad_ID"})
    assert out.kind == "fail"
    assert out.result["msg"].startswith("Parameter 'build_id' failed:")
    assert out.result["parameter"] == "build_id"


def test_module_both_expiry_options_rejected(exits):
    out = run_demo({"build_id": "b1", "ttl": "1h", "expires_at": "2030-01-01T00:00:00Z"})
    assert out.kind == "fail"
    assert "expires_at" in out.result["msg"] and "ttl" in out.result["msg"]


def test_module_user_error_formatting(exits):
    out = run_demo({"build_id": "b1", "boom": "user"})
    assert out.result["msg"] == "Parameter 'boom' failed: 'x' is wrong. use 'y'."
    assert out.result["parameter"] == "boom"


def test_module_provider_error_masks_secrets(exits):
    out = run_demo({"build_id": "b1", "boom": "provider", "password": "hunter2-secret"})
    assert out.kind == "fail"
    assert "hunter2-secret" not in json.dumps(out.result)
    assert out.result["msg"].startswith("Calling the API failed: token ")
    assert out.result["error_code"] == "E1"


def test_module_missing_library(exits, monkeypatch):
    monkeypatch.setattr(Demo, "required_libraries", [("boto3", False, "Traceback: no boto3")])
    out = run_demo({"build_id": "b1"})
    assert out.kind == "fail"
    assert "boto3" in out.result["msg"]


def test_fail_without_what(exits):
    with patch_module_args({"build_id": "b1"}):
        module = Demo()
        with pytest.raises(_Exit) as info:
            module.fail("Something broke.", hint="Do this", extra=1)
    assert info.value.result["msg"] == "Something broke. Do this"
    assert info.value.result["extra"] == 1


def test_constants():
    assert (TAG_BUILD_ID, TAG_PIPELINE, TAG_EXPIRES_AT) == (
        "nixforge-build-id",
        "nixforge-pipeline",
        "nixforge-expires-at",
    )


# -- the one flow: prepare, plan, apply, rollback, describe ---------------------------


class Flow(NixforgeModule):
    argument_spec = dict(fail_at=dict(type="str"), exists=dict(type="bool", default=False))
    log: list = []

    def prepare(self):
        self.log.append("prepare")

    def step(self, name):
        def do():
            if self.params["fail_at"] == name:
                raise ProviderError("%s refused" % name, what="Creating %s" % name)
            self.log.append("do " + name)

        return do

    def plan(self):
        if self.params["exists"]:
            return []
        return [
            Action("create key", self.step("key"), undo=lambda: self.log.append("undo key")),
            Action("tag key", self.step("tag")),
            Action("create host", self.step("host"), undo=lambda: self.log.append("undo host")),
        ]

    def describe(self):
        return {"described": True}


def run_flow(args):
    Flow.log = []
    with patch_module_args(args):
        with pytest.raises(_Exit) as info:
            Flow().execute()
    return info.value


def test_flow_check_mode_and_real_run_report_the_same_actions(exits):
    check = run_flow({"build_id": "b1", "_ansible_check_mode": True})
    assert Flow.log == ["prepare"]
    real = run_flow({"build_id": "b1"})
    assert Flow.log == ["prepare", "do key", "do tag", "do host"]
    assert check.result["actions"] == real.result["actions"] == ["create key", "tag key", "create host"]
    assert check.result["changed"] is real.result["changed"] is True
    assert real.result["described"] is True


def test_flow_nothing_to_do_is_not_changed(exits):
    out = run_flow({"build_id": "b1", "exists": True})
    assert out.kind == "exit"
    assert out.result["changed"] is False
    assert "actions" not in out.result


def test_flow_failure_rolls_back_what_this_run_created(exits):
    out = run_flow({"build_id": "b1", "fail_at": "host"})
    assert out.kind == "fail"
    assert Flow.log == ["prepare", "do key", "do tag", "undo host", "undo key"]
    assert out.result["rolled_back"] == ["create host", "create key"]
    assert out.result["msg"].startswith("Creating host failed: host refused")
