# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection: SSH failures that waiting heals and those it cannot; no stable interface.
"""Tell SSH failures that waiting can heal (a booting host) from those it cannot.

A builder that is still booting refuses or drops connections; those are retried until
the wait runs out. Some failures never heal by waiting, and retrying them for the whole
timeout only hides the cause: a control socket path over the kernel's limit, a host key
that does not match the pinned one, an authentication refusal, a missing key file.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

__all__ = ["classify_ssh_error"]

# (pattern, immediate?, hint). "immediate" failures fail at the first sight; the others
# fail when they persist for the grace period (sshd can answer before cloud-init has
# installed the host key and the authorized key).
_PERMANENT: Tuple[Tuple[str, bool, str], ...] = (
    (
        r"too long for Unix domain socket|ControlPath.*too long",
        True,
        "The SSH control socket path is longer than the 108 bytes a Unix socket allows. Set "
        "builder_host_control_path_dir (or ANSIBLE_SSH_CONTROL_PATH_DIR) to a short directory such as /tmp/nf-cp",
    ),
    (
        r"Load key .*: (No such file|Permission denied)|no such identity|not accessible: No such file",
        True,
        "The private key file is missing or unreadable on the controller: check the builder's state directory "
        "(builder_host_state_dir) and its permissions",
    ),
    (
        r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed|No [A-Z0-9-]+ host key is known",
        False,
        "The builder's SSH host key is not the one pinned for this build. The address may belong to another machine, "
        "or the builder ignored the host key given in its user data; host key checking stays on, so tear the build "
        "down (playbooks/reap.yml -e nixforge_build_id=ID) and start again",
    ),
    (
        r"Permission denied \((publickey|password|keyboard-interactive)",
        False,
        "The builder refused the build's SSH key. Check that the user data reached the builder (its console log) and "
        "that the login user (builder_host_*_user) is right for the image",
    ),
)


def classify_ssh_error(message: str) -> Optional[Tuple[bool, str]]:
    """``(immediate, hint)`` when ``message`` is an SSH failure that waiting cannot heal, else None."""
    for pattern, immediate, hint in _PERMANENT:
        if re.search(pattern, message or ""):
            return immediate, hint
    return None
