"""The one SSH key code of every provider; the first cases are where EC2 and Metal had drifted apart."""

from __future__ import annotations

import pytest
from ansible_collections.nixforge.images.plugins.module_utils._base import _sshkeys
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import BuildIdentity
from ansible_collections.nixforge.images.plugins.module_utils._metal._device import check_device_input

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINsXfX44giElHYMcHMkMa/okQsCoDTrLTrVWXgIc5Oy4 host"
ECDSA384 = (
    "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBJh5VQnZ3shwATZAGLAy4DqZL/f1aINaQc/c5VwC"
    "7jJI86PpU3V9PYstq+hd6oYHR0o2O0PRRrCMGw2X/zH8navDIP/DxqeKinTu3e90s5CLjva0+mghpizSYmeSJ8aZ1g== x"
)
SK_ECDSA = "sk-ecdsa-sha2-nistp256@openssh.com AAAAInNrLWVjZHNhLXNoYTItbmlzdHAyNTZAb3BlbnNzaC5jb20= fido"
OPENSSH_PRIVATE = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----"
)
PKCS8_PRIVATE = (
    "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGx0b3RzIG9mIGJ5dGVzIGhlcmUgZm9yIGEga2V5"
    "\n-----END PRIVATE KEY-----"
)
ENCRYPTED = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0=\n-----END ENCRYPTED PRIVATE KEY-----"


def metal_params(**overrides):
    params = {
        "public_key": ED25519,
        "host_key_private": OPENSSH_PRIVATE,
        "host_key_public": ED25519,
        "max_price": None,
        "spot_instance": False,
        "hostname": None,
    }
    params.update(overrides)
    return params


# -- drifted: Metal accepted fewer key types and skipped the base64 check ----------------------


@pytest.mark.parametrize("key", [ED25519, ECDSA384, SK_ECDSA])
def test_every_provider_accepts_the_same_public_key_types(key):
    assert _sshkeys.validate_public_key(key, "public_key") == key
    checked = check_device_input(metal_params(public_key=key), BuildIdentity("b1"))
    assert checked["public_key"] == key


@pytest.mark.parametrize(
    "bad", ["", "hello", "ssh-ed25519", "ssh-ed25519 !!!notbase64!!!", "ssh-dss AAAAB3NzaC1kc3M= x"]
)
def test_bad_public_keys_fail_for_every_provider(bad):
    with pytest.raises(UserInputError) as info:
        _sshkeys.validate_public_key(bad, "public_key")
    assert info.value.parameter == "public_key"
    with pytest.raises(UserInputError) as info:
        check_device_input(metal_params(public_key=bad), BuildIdentity("b1"))
    assert info.value.parameter == "public_key"


def test_a_private_key_given_as_public_key_is_refused_without_echo():
    with pytest.raises(UserInputError) as info:
        _sshkeys.validate_public_key(OPENSSH_PRIVATE, "public_key")
    assert "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU" not in str(info.value)
    assert "private key" in str(info.value)


# -- drifted: EC2 accepted 'BEGIN PRIVATE KEY', Metal refused it -------------------------------


@pytest.mark.parametrize("private", [OPENSSH_PRIVATE, PKCS8_PRIVATE, OPENSSH_PRIVATE.replace("OPENSSH", "RSA")])
def test_every_provider_accepts_the_same_private_key_formats(private):
    host_key = _sshkeys.validate_host_key(private, ED25519)
    assert host_key is not None and host_key.private == private + "\n"
    checked = check_device_input(metal_params(host_key_private=private), BuildIdentity("b1"))
    assert checked["host_key"] == host_key


@pytest.mark.parametrize(
    "private",
    [
        "not a key",
        ENCRYPTED,
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl",
        "-----BEGIN RSA PRIVATE KEY-----\nx\n-----END EC PRIVATE KEY-----",
    ],
)
def test_unusable_private_keys_are_refused_without_echo(private):
    with pytest.raises(UserInputError) as info:
        _sshkeys.validate_host_key(private, ED25519)
    assert info.value.parameter == "host_key_private"
    assert "b3Bl" not in str(info.value) and "MIIBvT" not in str(info.value)
    if private == ENCRYPTED:
        assert "encrypted" in str(info.value)


# -- drifted: two host key type tables ----------------------------------------------------------


@pytest.mark.parametrize(
    ("public", "kind"),
    [(ED25519, "ed25519"), (ECDSA384, "ecdsa"), ("ssh-rsa AAAAB3NzaC1yc2E= x", "rsa")],
)
def test_host_key_types(public, kind):
    assert _sshkeys.validate_host_key(OPENSSH_PRIVATE, public).kind == kind


def test_fido_keys_cannot_be_host_keys():
    with pytest.raises(UserInputError) as info:
        _sshkeys.validate_host_key(OPENSSH_PRIVATE, SK_ECDSA)
    assert info.value.parameter == "host_key_public"


def test_host_key_halves_go_together():
    assert _sshkeys.validate_host_key(None, None, required=False) is None
    for private, public, missing in ((None, ED25519, "host_key_private"), (OPENSSH_PRIVATE, None, "host_key_public")):
        for required in (True, False):
            with pytest.raises(UserInputError) as info:
                _sshkeys.validate_host_key(private, public, required=required)
            assert info.value.parameter == missing
    with pytest.raises(UserInputError):
        _sshkeys.validate_host_key(None, None)


def test_same_key_ignores_comments():
    assert _sshkeys.same_key(ED25519, ED25519.replace(" host", " other comment"))
    assert not _sshkeys.same_key(ED25519, ECDSA384)
    assert not _sshkeys.same_key(None, ED25519)
