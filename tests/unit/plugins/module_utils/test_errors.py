from __future__ import annotations

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import (
    NixforgeError,
    ProviderError,
    UserInputError,
    WaitTimeout,
    format_error,
    redact,
)


def test_format_error_shape():
    assert format_error("Launching the fleet", "no capacity", "add instance types") == (
        "Launching the fleet failed: no capacity. add instance types."
    )
    assert format_error("X", "bad.", "fix it.") == "X failed: bad. fix it."
    assert format_error("X", "bad") == "X failed: bad."


def test_user_input_error_names_parameter():
    exc = UserInputError("'10.0.0.0/33' is not a CIDR", hint="Use a.b.c.d/n", parameter="ssh_cidr")
    assert exc.parameter == "ssh_cidr"
    assert str(exc) == "Parameter 'ssh_cidr' failed: '10.0.0.0/33' is not a CIDR. Use a.b.c.d/n."
    assert isinstance(exc, NixforgeError)


def test_provider_error_carries_code_and_status():
    exc = ProviderError("Throttled", code="RequestLimitExceeded", status=503, retryable=True, what="Describing")
    assert (exc.code, exc.status, exc.retryable) == ("RequestLimitExceeded", 503, True)
    assert str(exc).startswith("Describing failed: Throttled.")


def test_wait_timeout_names_what_state_and_option():
    exc = WaitTimeout("instance i-1 to answer SSH", 300, last_state="port 22 refused", option="wait_timeout")
    text = str(exc)
    assert text.startswith("Waiting for instance i-1 to answer SSH failed: timed out after 300s")
    assert "last observed state: port 22 refused" in text
    assert "'wait_timeout' option (currently 300 seconds)" in text


def test_wait_timeout_without_state():
    assert "nothing observed yet" in str(WaitTimeout("x", 1.5))


def test_redact_known_values_and_patterns():
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"
    text = "key %s then %s and aws_secret_access_key=abcd1234 Authorization: Bearer tok.en" % (secret, pem)
    out = redact(text, [secret, None, "ab"])
    assert secret not in out
    assert "b3BlbnNzaC1rZXktdjEAAAAA" not in out
    assert "abcd1234" not in out
    assert "tok.en" not in out
    assert "********" in out


def test_redact_truncated_private_key():
    out = redact("-----BEGIN RSA PRIVATE KEY-----\nMIIEow cut here")
    assert "MIIEow" not in out


def test_redact_leaves_short_values_and_normal_text():
    assert redact("instance i-123 is running", ["i"]) == "instance i-123 is running"
