# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The options here are implemented by plugins/module_utils/_metal/_client.py (metal_argument_spec).

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  api_url:
    description:
      - Base URL of the Equinix Metal API or of a Metal-compatible endpoint, with or without the C(https://)
        prefix, for example V(api.equinix.com/metal/v1) or V(https://metal.example.com:8443/metal/v1).
      - Only https is supported (the client library, packet-python, speaks nothing else).
      - Falls back to E(METAL_API_URL). The default is the historical Equinix Metal endpoint; Equinix Metal was
        sunset on 2026-06-30, so it only answers for Metal-compatible services that kept it.
    type: str
    default: api.equinix.com/metal/v1
  auth_token:
    description:
      - API token (user or project token). Never logged.
      - Falls back to E(METAL_AUTH_TOKEN), then E(PACKET_AUTH_TOKEN).
    type: str
    aliases: [api_token]
  project_id:
    description:
      - UUID of the project the device and its SSH key belong to.
      - Falls back to E(METAL_PROJECT_ID).
    type: str
  ca_bundle:
    description:
      - PEM file of certificate authorities to trust for O(api_url), for a private endpoint with its own CA.
      - Without it the system's trust store (or E(REQUESTS_CA_BUNDLE)) is used.
    type: path
requirements:
  - packet-python >= 1.44.0
notes:
  - Equinix Metal (formerly Packet) stopped on 2026-06-30. The modules keep working against Metal-compatible
    endpoints through O(api_url); new users should pick another builder provider (C(ec2) or C(ssh) of the
    C(nixforge.images.builder_host) role).
  - Calls are retried with exponential backoff and full jitter on HTTP 429, 408 and 5xx answers and on dropped
    connections; errors caused by the input (other 4xx) fail at once, naming the parameter to fix.
"""
