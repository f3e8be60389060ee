# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Private to this collection.
"""How b2sdk reaches B2: which certificate authorities to trust, and a certificate that
does not verify as an error of its own.

b2sdk sends every request through a ``requests.Session`` it gets from a factory. The
session here trusts ``ca_bundle`` when one is given (otherwise requests' own choice: the
system store, or REQUESTS_CA_BUNDLE) and turns a failed certificate check into
``CertificateNotTrusted``: b2sdk would retry a connection error five times with backoff,
and a certificate does not get better by waiting.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ansible_collections.nixforge.images.plugins.module_utils._base._requests import SESSION_BASE, TLS_ERRORS

__all__ = ["CertificateNotTrusted", "TrustingSession", "is_certificate_error", "session_factory"]

# What OpenSSL and Python say when a certificate does not verify (an unknown CA, a wrong
# host name, an expired certificate): a handshake cut by the network says none of these.
CERTIFICATE_MARKERS = (
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
    "CertificateNotTrusted",
    "hostname mismatch",
    "doesn't match",
)


class CertificateNotTrusted(Exception):
    """The endpoint's TLS certificate did not verify against the trusted CAs."""


def is_certificate_error(exc: BaseException) -> bool:
    text = "%s %r" % (exc, exc)
    return any(marker in text for marker in CERTIFICATE_MARKERS)


class TrustingSession(SESSION_BASE):  # type: ignore[misc, valid-type]
    """A requests session that trusts ``ca_bundle`` and names a certificate failure."""

    def __init__(self, ca_bundle: Optional[str]) -> None:
        super().__init__()
        self.ca_bundle = ca_bundle

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self.ca_bundle:
            # an explicit bundle wins over REQUESTS_CA_BUNDLE (requests lets the variable win)
            settings["verify"] = self.ca_bundle
        return settings

    def request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().request(*args, **kwargs)
        except TLS_ERRORS as exc:  # type: ignore[misc]
            if is_certificate_error(exc):
                raise CertificateNotTrusted(str(exc)) from None
            raise


def session_factory(ca_bundle: Optional[str]) -> Callable[[], Any]:
    """A factory of sessions for ``B2HttpApiConfig(http_session_factory=...)``."""
    return lambda: TrustingSession(ca_bundle)
