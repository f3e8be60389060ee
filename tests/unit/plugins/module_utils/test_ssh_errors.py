from __future__ import annotations

import pytest
from ansible_collections.nixforge.images.plugins.module_utils._base._ssh_errors import classify_ssh_error


@pytest.mark.parametrize(
    ("message", "immediate", "needle"),
    [
        ('unix_listener: path "/very/long/cp/abc.XYZ" too long for Unix domain socket', True, "108 bytes"),
        ("ControlPath too long ('/tmp/x/cp/85c1a379ee' >= 108 bytes)", True, "108 bytes"),
        ('Load key "/x/id_ed25519": No such file or directory', True, "private key"),
        ("Host key verification failed.", False, "pinned"),
        ("@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @", False, "pinned"),
        ("admin@10.213.0.10: Permission denied (publickey).", False, "refused the build's SSH key"),
    ],
)
def test_permanent_errors_are_recognised(message, immediate, needle):
    found = classify_ssh_error(message)
    assert found is not None
    assert found[0] is immediate
    assert needle in found[1]


@pytest.mark.parametrize(
    "message",
    [
        "ssh: connect to host 10.213.0.10 port 22: Connection refused",
        "ssh: connect to host 10.213.0.10 port 22: Connection timed out",
        "kex_exchange_identification: read: Connection reset by peer",
        "",
    ],
)
def test_booting_host_errors_are_retried(message):
    assert classify_ssh_error(message) is None
