from __future__ import annotations

import pytest
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import ProviderError, UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import RetryPolicy
from ansible_collections.nixforge.images.plugins.module_utils._ec2 import _client as ec2
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError


def client_error(code, status=400, message="boom", op="DescribeImages"):
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, op
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (client_error("RequestLimitExceeded", 503), "retry"),
        (client_error("Throttling", 400), "retry"),
        (client_error("InternalError", 500), "retry"),
        (client_error("Weird", 502), "retry"),
        (client_error("Whatever", 429), "retry"),
        (EndpointConnectionError(endpoint_url="http://x"), "retry"),
        (client_error("AuthFailure", 401), "credentials"),
        (client_error("UnauthorizedOperation", 403), "credentials"),
        (client_error("InsufficientInstanceCapacity", 500), "capacity"),
        (client_error("InvalidParameterValue", 400), "user"),
        (client_error("InvalidAMIID.NotFound", 400), "user"),
        (client_error("DependencyViolation", 400), "user"),
        (client_error("Mystery", None), "provider"),
        (ValueError("x"), "provider"),
    ],
)
def test_classify(exc, kind):
    assert ec2.classify_aws_error(exc) == kind
    assert ec2.is_retryable_aws_error(exc) is (kind == "retry")


def test_translate_credentials_names_parameter():
    err = ec2.translate_aws_error(client_error("AuthFailure", 401, "AWS was not able to validate"), "Describing images")
    assert isinstance(err, UserInputError)
    assert err.parameter == "access_key"
    assert str(err).startswith("Describing images failed: AWS refused the credentials (AuthFailure")
    err = ec2.translate_aws_error(NoCredentialsError(), "X")
    assert isinstance(err, UserInputError) and err.parameter == "access_key"


def test_translate_user_and_capacity_and_provider():
    err = ec2.translate_aws_error(client_error("InvalidParameterValue", 400, "bad cidr"), "Creating SG", "ssh_cidr")
    assert isinstance(err, UserInputError)
    assert err.parameter == "ssh_cidr" and "bad cidr" in str(err) and err.code == "InvalidParameterValue"
    err = ec2.translate_aws_error(client_error("InsufficientInstanceCapacity", 500), "Launching")
    assert isinstance(err, ProviderError) and err.code == "InsufficientInstanceCapacity"
    assert "on_demand_fallback" in str(err)
    err = ec2.translate_aws_error(EndpointConnectionError(endpoint_url="http://x"), "Launching")
    assert isinstance(err, ProviderError) and "endpoint_url" in str(err)


def test_check_region():
    assert ec2.check_region("eu-central-1") == "eu-central-1"
    assert ec2.check_region("us-gov-west-1") == "us-gov-west-1"
    with pytest.raises(UserInputError) as info:
        ec2.check_region("eu-centrl-1")
    assert info.value.parameter == "region"
    assert "eu-central-1" in str(info.value)  # suggestion
    with pytest.raises(UserInputError) as info:
        ec2.check_region(None)
    assert info.value.parameter == "region"


class FakeRaw:
    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.calls = []

    def describe_things(self, **kwargs):
        self.calls.append(kwargs)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_aws_client_retries_throttling_then_succeeds():
    raw = FakeRaw([client_error("RequestLimitExceeded", 503), {"Things": [1]}])
    client = ec2.AwsClient(raw, policy=RetryPolicy(max_attempts=3), sleep=lambda s: None)
    assert client.call("describe_things", Filter="x") == {"Things": [1]}
    assert len(raw.calls) == 2 and client.retries == 1


def test_aws_client_does_not_retry_user_errors_and_translates():
    raw = FakeRaw([client_error("InvalidParameterValue", 400, "nope")])
    client = ec2.AwsClient(raw, policy=RetryPolicy(max_attempts=5), sleep=lambda s: None)
    with pytest.raises(UserInputError) as info:
        client.call("describe_things", what="Describing things", parameter="image_id")
    assert len(raw.calls) == 1
    assert info.value.parameter == "image_id"
    assert str(info.value).startswith("Describing things failed: InvalidParameterValue: nope.")


def test_aws_client_masks_secrets_in_messages():
    raw = FakeRaw([client_error("Mystery", 400, "key SECRETSECRET leaked")])
    client = ec2.AwsClient(raw, secrets=["SECRETSECRET"], sleep=lambda s: None)
    with pytest.raises(UserInputError) as info:
        client.call("describe_things")
    assert "SECRETSECRET" not in str(info.value)


def test_aws_client_paginate():
    raw = FakeRaw([{"Things": [1, 2], "NextToken": "t"}, {"Things": [3]}])
    client = ec2.AwsClient(raw, sleep=lambda s: None)
    assert client.paginate("describe_things", "Things", Owner="o") == [1, 2, 3]
    assert raw.calls[1] == {"Owner": "o", "NextToken": "t"}


def test_aws_client_leaves_programming_errors_alone():
    raw = FakeRaw([TypeError("bug")])
    with pytest.raises(TypeError):
        ec2.AwsClient(raw, sleep=lambda s: None).call("describe_things")


@pytest.fixture
def no_aws_env(monkeypatch, tmp_path):
    for name in list(__import__("os").environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_ec2_client_missing_credentials(no_aws_env):
    with pytest.raises(UserInputError) as info:
        ec2.ec2_client({"region": "eu-central-1"})
    assert info.value.parameter == "access_key"
    assert "AWS_ACCESS_KEY_ID" in str(info.value)


def test_ec2_client_half_credentials(no_aws_env):
    with pytest.raises(UserInputError) as info:
        ec2.ec2_client({"region": "eu-central-1", "access_key": "AKIA"})
    assert info.value.parameter == "secret_key"


def test_ec2_client_bad_region_before_credentials(no_aws_env):
    with pytest.raises(UserInputError) as info:
        ec2.ec2_client({"region": "mars-1"})
    assert info.value.parameter == "region"


def test_ec2_client_builds_client_without_botocore_retries(no_aws_env):
    client = ec2.ec2_client(
        {
            "region": "eu-central-1",
            "access_key": "AKIA",
            "secret_key": "s3cr3t-value",
            "endpoint_url": "http://127.0.0.1:1",
        }
    )
    assert client.raw.meta.region_name == "eu-central-1"
    assert client.raw.meta.endpoint_url == "http://127.0.0.1:1"
    assert client.raw.meta.config.retries["total_max_attempts"] == 1
    assert "s3cr3t-value" in client.secrets
    with pytest.raises(UserInputError) as info:
        ec2.ec2_client(
            {"region": "eu-central-1", "access_key": "A", "secret_key": "B", "endpoint_url": "localhost:5000"}
        )
    assert info.value.parameter == "endpoint_url"


def test_argument_spec_marks_secrets_no_log():
    spec = ec2.ec2_argument_spec()
    assert spec["secret_key"]["no_log"] is True
    assert spec["session_token"]["no_log"] is True
    assert "aws_secret_key" in spec["secret_key"]["aliases"]
    assert "AWS_SECRET_ACCESS_KEY" in spec["secret_key"]["fallback"][1]


def test_tags_and_filters():
    assert ec2.tag_list({"b": 1, "a": None}) == [{"Key": "a", "Value": ""}, {"Key": "b", "Value": "1"}]
    assert ec2.tag_dict([{"Key": "a", "Value": "x"}]) == {"a": "x"}
    assert ec2.tag_specifications(["instance"], {"k": "v"}) == [
        {"ResourceType": "instance", "Tags": [{"Key": "k", "Value": "v"}]}
    ]
    assert ec2.filters({"tag:k": "v", "state": ["a", "b"]}) == [
        {"Name": "tag:k", "Values": ["v"]},
        {"Name": "state", "Values": ["a", "b"]},
    ]
