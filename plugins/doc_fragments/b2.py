# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The options here are implemented by plugins/module_utils/b2.py (b2_argument_spec).

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  application_key_id:
    description:
      - ID of the Backblaze B2 application key (the C(keyID) shown when the key was made). Never logged.
      - Falls back to E(B2_APPLICATION_KEY_ID).
    type: str
  application_key:
    description:
      - The B2 application key itself. Never logged, and masked in every message.
      - Falls back to E(B2_APPLICATION_KEY).
      - The key needs the C(listBuckets), C(listFiles), C(readFiles), C(writeFiles), C(deleteFiles) and
        C(shareFiles) capabilities on the bucket.
    type: str
  api_url:
    description:
      - Realm URL of the B2 native API, where the account is authorized; B2 answers with the API and download
        URLs of the account's cluster.
      - Falls back to E(B2_API_URL). Point it at a B2-compatible service or a test emulator.
    type: str
    default: https://api.backblazeb2.com
    aliases: [realm]
requirements:
  - b2sdk >= 2.5.0
notes:
  - b2sdk retries throttled (HTTP 429, honouring C(Retry-After)) and failed (5xx, dropped connection) calls
    itself; the module retries each call once more with exponential backoff and full jitter, so a longer burst
    of errors still ends well. Errors caused by the input fail at once, naming the parameter to fix.
"""
