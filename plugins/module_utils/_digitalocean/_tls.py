# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: the DigitalOcean client's certificate checks (``ca_bundle``).

session = verifying_session(check_ca_bundle(params.get("ca_bundle")))  # None: requests' defaults
reason = tls_reason(exc)                                                # of a requests SSLError
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._errors import UserInputError
from ansible_collections.nixforge.images.plugins.module_utils._base._requests import SESSION_BASE

__all__ = ["CA_BUNDLE_ENV", "VerifyingSession", "check_ca_bundle", "tls_reason"]

CA_BUNDLE_ENV = ("DIGITALOCEAN_CA_BUNDLE",)


class VerifyingSession(SESSION_BASE):  # type: ignore[misc,valid-type]
    """A requests session that verifies with ``ca_bundle`` whatever the environment says
    (requests lets REQUESTS_CA_BUNDLE override a session's ``verify``)."""

    def __init__(self, ca_bundle: str) -> None:
        super().__init__()
        self.ca_bundle = ca_bundle

    def merge_environment_settings(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        settings = super().merge_environment_settings(*args, **kwargs)
        settings["verify"] = self.ca_bundle
        return settings


def tls_reason(exc: BaseException) -> str:
    """The verification failure in requests' nested SSLError text, else the whole text."""
    text = str(exc)
    match = re.search(r"certificate verify failed: [^'\")(]*", text)
    return match.group(0).strip() if match else text


def check_ca_bundle(value: Optional[str]) -> Optional[str]:
    """``value`` when it is a readable file (or empty: None), else a UserInputError."""
    if not value:
        return None
    if not os.path.isfile(value):
        raise UserInputError(
            "%r is not a file" % value,
            hint="Give the path of a PEM file of CA certificates in 'ca_bundle' (or %s)" % " / ".join(CA_BUNDLE_ENV),
            parameter="ca_bundle",
        )
    return value
