# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The options here are implemented by plugins/module_utils/_digitalocean/_client.py
# (digitalocean_argument_spec): change both together.

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  oauth_token:
    description:
      - DigitalOcean API token (a personal access token with read and write scope for images, actions, regions
        and tags). Never logged.
      - Falls back to E(DIGITALOCEAN_TOKEN), then E(DO_API_TOKEN).
    type: str
    aliases: [api_token]
  api_url:
    description:
      - Base URL of the DigitalOcean API v2, ending in C(/v2/), for example V(https://api.digitalocean.com/v2/)
        or a compatible endpoint such as the sandbox's.
      - Falls back to E(DIGITALOCEAN_API_URL).
    type: str
    default: https://api.digitalocean.com/v2/
  ca_bundle:
    description:
      - PEM file of certificate authorities to trust for O(api_url), for an endpoint with its own CA (such as the
        sandbox's). When given, it is used whatever E(REQUESTS_CA_BUNDLE) says.
      - Falls back to E(DIGITALOCEAN_CA_BUNDLE). Without either, the system's trust store (or
        E(REQUESTS_CA_BUNDLE)) is used.
      - A certificate that does not verify fails at once (it is not retried), naming this option.
    type: path
requirements:
  - python-digitalocean >= 1.17.0
notes:
  - Calls are retried with exponential backoff and full jitter on HTTP 429, 408 and 5xx answers and on dropped
    connections (python-digitalocean has no retries of its own). A C(retry-after) header is honoured, and so
    is C(ratelimit-reset) when the hourly budget is used up; when the wait it asks for is longer than the retry
    budget the module fails at once saying when the limit resets. Errors caused by the input (other 4xx) fail at
    once, naming the parameter to fix.
"""
