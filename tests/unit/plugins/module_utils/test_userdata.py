"""The one user data code of every provider; the first cases are where EC2 and Metal had drifted apart."""

from __future__ import annotations

import datetime
import email

import pytest
import yaml
from ansible_collections.nixforge.images.plugins.module_utils._base import _userdata
from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._identity import BuildIdentity
from ansible_collections.nixforge.images.plugins.module_utils._base._sshkeys import HostKey
from ansible_collections.nixforge.images.plugins.module_utils._ec2._input import render_user_data
from ansible_collections.nixforge.images.plugins.module_utils._metal._userdata import render_cloud_config

HOST_KEY = HostKey(
    "ed25519",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----\n",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINsXfX44giElHYMcHMkMa/okQsCoDTrLTrVWXgIc5Oy4 host",
)
USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user"
BUILD = BuildIdentity("b1", "default", datetime.datetime(2026, 11, 22, 13, 0, tzinfo=datetime.timezone.utc))
EXTRA = "#cloud-config\nruncmd:\n  - echo hi\nssh_authorized_keys: [k1, %s]\npackages: [zstd]\n" % USER_KEY


def both(extra):
    """The cloud-config both providers render for the same input."""
    ec2 = yaml.safe_load(render_user_data(BUILD, HOST_KEY, [USER_KEY], extra))
    metal = yaml.safe_load(render_cloud_config("b1", HOST_KEY, [USER_KEY], extra))
    return ec2, metal


# -- drifted: EC2 concatenated lists and protected ssh_keys, Metal did neither -------------------


def test_both_providers_merge_lists_the_same_way():
    ec2, metal = both(EXTRA)
    for config in (ec2, metal):
        assert config["ssh_authorized_keys"] == [USER_KEY, "k1"]  # ours first, repeats dropped
        assert config["runcmd"] == ["echo hi"]
        assert config["packages"] == ["zstd"]
        assert config["ssh_keys"] == {"ed25519_private": HOST_KEY.private, "ed25519_public": HOST_KEY.public}
        assert config["ssh_deletekeys"] is True and config["ssh_genkeytypes"] == []
    assert ec2["bootcmd"][1][0] == "systemd-run"  # EC2 powers off at the expiry; Metal ends by termination_time
    assert "bootcmd" not in metal


@pytest.mark.parametrize("key", ["ssh_keys", "ssh_deletekeys", "ssh_genkeytypes"])
def test_both_providers_refuse_overriding_the_host_key(key):
    extra = "#cloud-config\n%s: {}\n" % key
    with pytest.raises(UserInputError) as info:
        render_user_data(BUILD, HOST_KEY, [], extra)
    assert info.value.parameter == "user_data"
    with pytest.raises(UserInputError) as info:
        render_cloud_config("b1", HOST_KEY, [], extra)
    assert info.value.parameter == "user_data"


def test_without_a_host_key_the_user_may_set_ssh_keys():
    config = yaml.safe_load(render_cloud_config("b1", None, [USER_KEY], "#cloud-config\nssh_keys: {a: b}\n"))
    assert config["ssh_keys"] == {"a": "b"}


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("#cloud-config\n- a list\n", "mapping"),
        ("#cloud-config\nruncmd: oops\n", "must be a list"),
        ("#cloud-config\n{", "valid YAML"),
    ],
)
def test_bad_cloud_config_names_the_parameter_for_both(extra, fragment):
    for render in (
        lambda: render_user_data(BUILD, HOST_KEY, [], extra),
        lambda: render_cloud_config("b1", None, [], extra),
    ):
        with pytest.raises(UserInputError) as info:
            render()
        assert info.value.parameter == "user_data"
        assert fragment in str(info.value)


def test_scripts_become_a_mime_part_where_the_provider_allows_them():
    message = email.message_from_string(render_user_data(BUILD, HOST_KEY, [], "#!/bin/sh\necho hi\n"))
    parts = [p.get_content_type() for p in message.walk() if not p.is_multipart()]
    assert parts == ["text/cloud-config", "text/x-shellscript"]
    with pytest.raises(UserInputError, match="runcmd"):
        render_cloud_config("b1", None, [], "#!/bin/sh\necho hi\n")


# -- the pieces ---------------------------------------------------------------------------------


def test_private_keys_are_literal_blocks_and_comment_is_kept():
    text = _userdata.render(_userdata.host_key_config(HOST_KEY), comment="built by x")
    assert text.startswith("#cloud-config\n# built by x\n")
    assert "ed25519_private: |" in text
    assert yaml.safe_load(text)["ssh_keys"]["ed25519_private"] == HOST_KEY.private


def test_merge_keeps_other_keys_and_replaces_scalars():
    merged = _userdata.merge_cloud_config({"a": 1, "runcmd": ["x"]}, {"a": 2, "runcmd": ["x", "y"], "b": [1]})
    assert merged == {"a": 2, "runcmd": ["x", "y"], "b": [1]}


def test_authorized_keys_are_stripped_and_unique():
    assert _userdata.authorized_keys([" k1 ", "", "k2", "k1"]) == ["k1", "k2"]
    assert _userdata.host_key_config(None) == {}
