# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: the EC2 client (boto3 behind one door); no stable interface.
"""boto3 behind one door: client factory, retries, error translation, tags, regions.

Retries: botocore's own retry layer is switched off (``total_max_attempts=1``) and
every call goes through ``retry.call_with_retry`` with :func:`is_retryable_aws_error`.
One layer, not two: stacking botocore's standard mode (3 attempts) under ours would
multiply attempts and delays (3 x 8), hide retries from our logs, and make the
tunable budget (attempts, total delay) meaningless. Our classifier covers what
botocore's does for EC2: throttling codes, HTTP 429/5xx and dropped connections.

    client = ec2_client(module.params)            # raises UserInputError on bad input
    images = client.paginate("describe_images", "Images", Owners=["136693071363"])
    client.call("terminate_instances", what="Terminating the builder", InstanceIds=[...])
"""

from __future__ import annotations

import difflib
import functools
import traceback
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from ansible.module_utils.basic import env_fallback
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import (
    NixforgeError,
    ProviderError,
    UserInputError,
    redact,
)
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import CLOUD_API_POLICY as DEFAULT_POLICY
from ansible_collections.nixforge.images.plugins.module_utils._base._retry import (
    RetryingClient,
    RetryPolicy,
    is_retryable_http_status,
)

try:
    import boto3
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR: Optional[str] = None
    _CONNECTION_ERRORS: tuple = (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError)
except ImportError:  # pragma: no cover - exercised only without boto3
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = traceback.format_exc()
    _CONNECTION_ERRORS = ()

__all__ = [
    "BOTO3_IMPORT_ERROR",
    "CAPACITY_ERROR_CODES",
    "CREDENTIAL_ERROR_CODES",
    "HAS_BOTO3",
    "REQUIRED_LIBRARIES",
    "THROTTLING_ERROR_CODES",
    "AwsClient",
    "aws_error_code",
    "aws_error_message",
    "aws_error_status",
    "check_region",
    "classify_aws_error",
    "ec2_argument_spec",
    "ec2_client",
    "filters",
    "is_retryable_aws_error",
    "known_regions",
    "tag_dict",
    "tag_list",
    "tag_specifications",
    "translate_aws_error",
]

REQUIRED_LIBRARIES = [("boto3", HAS_BOTO3, BOTO3_IMPORT_ERROR)]

THROTTLING_ERROR_CODES = frozenset(
    [
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "EC2ThrottledException",
        "SlowDown",
        "PriorRequestNotComplete",
        "BandwidthLimitExceeded",
    ]
)
TRANSIENT_ERROR_CODES = frozenset(
    [
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    ]
)
CREDENTIAL_ERROR_CODES = frozenset(
    [
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ExpiredToken",
        "RequestExpired",
        "OptInRequired",
    ]
)
USER_ERROR_PREFIXES = ("Invalid", "Missing", "Malformed", "Unknown")
# Capacity faults of one candidate (instance type x AZ x market): try the next one.
CAPACITY_ERROR_CODES = frozenset(
    [
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "InsufficientFreeAddressesInSubnet",
        "Unsupported",
        "UnfulfillableCapacity",
    ]
)


def ec2_argument_spec() -> Dict[str, Any]:
    """Options of ``doc_fragments/ec2.py`` (keep both in step)."""
    return dict(
        region=dict(type="str", aliases=["aws_region"], fallback=(env_fallback, ["AWS_REGION", "AWS_DEFAULT_REGION"])),
        endpoint_url=dict(
            type="str",
            aliases=["aws_endpoint_url", "ec2_url"],
            fallback=(env_fallback, ["AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL"]),
        ),
        access_key=dict(
            type="str",
            aliases=["aws_access_key_id", "aws_access_key"],
            no_log=False,
            fallback=(env_fallback, ["AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY"]),
        ),
        secret_key=dict(
            type="str",
            aliases=["aws_secret_access_key", "aws_secret_key"],
            no_log=True,
            fallback=(env_fallback, ["AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY"]),
        ),
        session_token=dict(
            type="str",
            aliases=["aws_session_token", "security_token"],
            no_log=True,
            fallback=(env_fallback, ["AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"]),
        ),
        profile=dict(type="str", aliases=["aws_profile"], fallback=(env_fallback, ["AWS_PROFILE"])),
    )


# -- error classification ------------------------------------------------------------


def _response_field(exc: BaseException, section: str, key: str) -> Any:
    """``exc.response[section][key]`` of a botocore error, or None."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        return (response.get(section) or {}).get(key)
    return None


def aws_error_code(exc: BaseException) -> Optional[str]:
    code = _response_field(exc, "Error", "Code")
    return str(code) if code else None


def aws_error_message(exc: BaseException) -> str:
    message = _response_field(exc, "Error", "Message")
    return str(message) if message else str(exc)


def aws_error_status(exc: BaseException) -> Optional[int]:
    status = _response_field(exc, "ResponseMetadata", "HTTPStatusCode")
    return int(status) if status else None


def classify_aws_error(exc: BaseException) -> str:
    """``"retry"`` (throttling, 5xx, dropped connection), ``"credentials"``,
    ``"capacity"``, ``"user"`` (4xx caused by our input) or ``"provider"``."""
    if _CONNECTION_ERRORS and isinstance(exc, _CONNECTION_ERRORS):
        return "retry"
    code = aws_error_code(exc)
    status = aws_error_status(exc)
    if code in THROTTLING_ERROR_CODES or code in TRANSIENT_ERROR_CODES:
        return "retry"
    if code in CREDENTIAL_ERROR_CODES:
        return "credentials"
    if code in CAPACITY_ERROR_CODES:
        return "capacity"
    if is_retryable_http_status(status):
        return "retry"
    if code and (code.startswith(USER_ERROR_PREFIXES) or (status is not None and 400 <= status < 500)):
        return "user"
    return "provider"


def is_retryable_aws_error(exc: BaseException) -> bool:
    """Retry classifier for ``retry.call_with_retry``: never true for 4xx user errors."""
    return classify_aws_error(exc) == "retry"


def translate_aws_error(exc: BaseException, what: str, parameter: Optional[str] = None) -> NixforgeError:
    """Turn a botocore exception into our hierarchy with a hint saying what to fix.

    The result has ``code`` (the AWS error code, if any) and ``details["provider_message"]``
    (AWS's own words), so callers can react to one code without parsing text.
    """
    error = _translate(exc, what, parameter)
    error.details.setdefault("provider_message", aws_error_message(exc))
    return error


def _translate(exc: BaseException, what: str, parameter: Optional[str]) -> NixforgeError:
    if HAS_BOTO3 and isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return _missing_credentials(str(exc))
    code = aws_error_code(exc)
    status = aws_error_status(exc)
    message = aws_error_message(exc)
    kind = classify_aws_error(exc)
    if kind == "credentials":
        return UserInputError(
            "AWS refused the credentials (%s: %s)" % (code, message),
            hint="Check 'access_key', 'secret_key' and 'session_token' (or AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "AWS_SESSION_TOKEN, AWS_PROFILE) and that the IAM identity may call EC2 in this region",
            parameter="access_key",
            what=what,
            code=code,
        )
    if kind == "user":
        return UserInputError(
            "%s: %s" % (code, message),
            hint="Check the parameter%s named in the message" % (" '%s'" % parameter if parameter else "s"),
            parameter=parameter,
            what=what,
            code=code,
        )
    if kind == "retry":
        hint = "AWS kept throttling or failing after retries; try again later"
        if _CONNECTION_ERRORS and isinstance(exc, _CONNECTION_ERRORS):
            hint = "Check 'endpoint_url' (or AWS_ENDPOINT_URL) and the network; the EC2 endpoint did not answer"
        return ProviderError(
            "%s" % (message if not code else "%s: %s" % (code, message)),
            hint=hint,
            what=what,
            code=code,
            status=status,
            retryable=True,
        )
    if kind == "capacity":
        return ProviderError(
            "%s: %s" % (code, message),
            hint="Add instance types or subnets in other availability zones, or allow 'on_demand_fallback'",
            what=what,
            code=code,
            status=status,
        )
    return ProviderError(
        "%s: %s" % (code or type(exc).__name__, message), what=what, code=code, status=status, hint=None
    )


def _missing_credentials(reason: str) -> UserInputError:
    return UserInputError(
        "no AWS credentials found (%s)" % reason.rstrip("."),
        hint="Set 'access_key' and 'secret_key' (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or 'profile' "
        "(AWS_PROFILE)",
        parameter="access_key",
    )


# -- regions -----------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def known_regions(service: str = "ec2") -> frozenset:
    """Every region of every partition botocore's endpoint data knows for ``service``."""
    session = botocore.session.get_session()
    regions = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions(service, partition_name=partition))
    return frozenset(regions)


def check_region(region: Optional[str], service: str = "ec2") -> str:
    """Fail before any call when ``region`` is missing or unknown to botocore."""
    if not region:
        raise UserInputError(
            "no region given",
            hint="Set 'region' (or AWS_REGION / AWS_DEFAULT_REGION), for example 'eu-central-1'",
            parameter="region",
        )
    regions = known_regions(service)
    if region not in regions:
        close = difflib.get_close_matches(region, sorted(regions), n=3)
        hint = "Use an AWS region where %s is available%s" % (
            service.upper(),
            (", for example %s" % ", ".join("'%s'" % r for r in close)) if close else "",
        )
        raise UserInputError("%r is not a known AWS region" % region, hint=hint, parameter="region")
    return region


# -- client ------------------------------------------------------------------------


class AwsClient(RetryingClient):
    """A boto3 client whose calls retry with our policy and raise ``NixforgeError``.

    ``call(op, what=..., parameter=..., **kwargs)`` calls boto3's ``op`` with retries and
    translated errors naming the action and the parameter; ``paginate`` returns a flat list. ``raw`` is the
    boto3 client, for the rare call that needs the untranslated ``ClientError``.
    """

    def __init__(
        self,
        raw: Any,
        policy: Optional[RetryPolicy] = None,
        secrets: Iterable[Optional[str]] = (),
        sleep: Optional[Callable[[float], None]] = None,
    ) -> None:
        self.raw = raw
        super().__init__(policy or DEFAULT_POLICY, secrets, sleep)

    def call_raw(self, operation: str, **kwargs: Any) -> Any:
        """Call with retries but without translating the final error."""
        return self._with_retry(getattr(self.raw, operation), is_retryable_aws_error, **kwargs)

    def call(
        self,
        operation: str,
        what: Optional[str] = None,
        parameter: Optional[str] = None,
        ignore_codes: Iterable[str] = (),
        **kwargs: Any,
    ) -> Any:
        """Call ``operation``; errors become ``NixforgeError`` (with ``.code``).

        An error whose code is in ``ignore_codes`` (for example ``InvalidGroup.NotFound``
        when deleting) returns ``None`` instead.
        """
        try:
            return self.call_raw(operation, **kwargs)
        except NixforgeError:
            raise
        except Exception as exc:
            if not _is_aws_exception(exc):
                raise
            if aws_error_code(exc) in tuple(ignore_codes):
                return None
            raise self._masked(translate_aws_error(exc, what or "EC2 %s" % operation, parameter)) from None

    def paginate(self, operation: str, key: str, what: Optional[str] = None, **kwargs: Any) -> List[Any]:
        items: List[Any] = []
        token_name = "NextToken"  # noqa: S105 - a pagination field, not a secret
        while True:
            page = self.call(operation, what=what, **kwargs)
            items.extend(page.get(key, []))
            token = page.get(token_name)
            if not token:
                return items
            kwargs[token_name] = token


def _is_aws_exception(exc: BaseException) -> bool:
    if HAS_BOTO3 and isinstance(exc, (ClientError, BotoCoreError)):
        return True
    return aws_error_code(exc) is not None


def ec2_client(
    params: Mapping[str, Any],
    service: str = "ec2",
    policy: Optional[RetryPolicy] = None,
    session_factory: Optional[Callable[..., Any]] = None,
) -> AwsClient:
    """Build a retrying client from the ``ec2_argument_spec`` options.

    Checks, before any API call: the region is known, a secret key comes with an access
    key (and vice versa), and credentials resolve (parameters, environment, profile,
    instance role). Each failure is a ``UserInputError`` naming the parameter.
    """
    region = check_region(params.get("region"), service)
    access_key = params.get("access_key")
    secret_key = params.get("secret_key")
    if bool(access_key) != bool(secret_key):
        missing = "secret_key" if access_key else "access_key"
        raise UserInputError(
            "'access_key' and 'secret_key' go together, but only one is set",
            hint="Set '%s' too (or its environment variable %s)"
            % (missing, "AWS_SECRET_ACCESS_KEY" if missing == "secret_key" else "AWS_ACCESS_KEY_ID"),
            parameter=missing,
        )
    factory = session_factory or boto3.session.Session
    try:
        session = factory(
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            aws_session_token=params.get("session_token") or None,
            region_name=region,
            profile_name=params.get("profile") or None,
        )
    except Exception as exc:
        if HAS_BOTO3 and isinstance(exc, BotoCoreError):
            raise UserInputError(
                redact(str(exc), [secret_key]),
                hint="Check 'profile' (AWS_PROFILE) and your AWS config files",
                parameter="profile",
            ) from None
        raise
    if session.get_credentials() is None:
        raise _missing_credentials("none in the parameters, the environment, the profile or an instance role")
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        user_agent_extra="nixforge.images",
    )
    endpoint_url = params.get("endpoint_url") or None
    if endpoint_url and not endpoint_url.startswith(("http://", "https://")):
        raise UserInputError(
            "%r is not an http(s) URL" % endpoint_url,
            hint="Give the full URL, for example 'https://ec2.eu-central-1.amazonaws.com'",
            parameter="endpoint_url",
        )
    raw = session.client(service, region_name=region, endpoint_url=endpoint_url, config=config)
    return AwsClient(raw, policy=policy, secrets=[secret_key, params.get("session_token")])


# -- tags and filters --------------------------------------------------------------


def tag_list(tags: Mapping[str, Any]) -> List[Dict[str, str]]:
    return [{"Key": str(k), "Value": "" if v is None else str(v)} for k, v in sorted(tags.items())]


def tag_dict(tags: Optional[Iterable[Mapping[str, Any]]]) -> Dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in (tags or [])}


def tag_specifications(resource_types: Iterable[str], tags: Mapping[str, Any]) -> List[Dict[str, Any]]:
    return [{"ResourceType": rt, "Tags": tag_list(tags)} for rt in resource_types]


def filters(spec: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """``{"tag:nixforge-build-id": "b1", "instance-state-name": ["pending", "running"]}``
    to the EC2 ``Filters`` list."""
    result = []
    for name, value in spec.items():
        values = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
        result.append({"Name": name, "Values": [str(v) for v in values]})
    return result
