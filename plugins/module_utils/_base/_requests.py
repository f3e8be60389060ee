# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to this collection: requests, imported once for every HTTP client here.

python-digitalocean, packet-python and b2sdk all send through requests; their clients
take the session base class and the exception groups they retry or report from here.
"""

from __future__ import annotations

from typing import Any

try:
    import requests

    # a dropped or refused connection and a timeout: worth a retry
    CONNECTION_ERRORS: tuple = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    # a certificate that does not verify: never worth a retry (SSLError is a ConnectionError)
    TLS_ERRORS: tuple = (requests.exceptions.SSLError,)
    SESSION_BASE: Any = requests.Session
except ImportError:  # pragma: no cover - every provider library here depends on requests
    CONNECTION_ERRORS = TLS_ERRORS = ()
    SESSION_BASE = object

__all__ = ["CONNECTION_ERRORS", "SESSION_BASE", "TLS_ERRORS"]
