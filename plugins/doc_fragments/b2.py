# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The options here are implemented by plugins/module_utils/_b2/_client.py (b2_argument_spec).

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
      - 'The least key the collection needs: the capabilities C(listBuckets), C(listFiles), C(writeFiles) and
        C(deleteFiles), restricted to the bucket and, if you like, to the name prefix V(nixforge/) (where the objects
        of every build live). Add C(shareFiles) for O(nixforge.images.b2_object#module:url_mode=authorized). No
        other capability is used (not C(readFiles): the importer fetches a public URL).'
      - A key that lacks a capability fails with a message naming it; B2 answers C(401 unauthorized).
      - 'One key per purpose: the pipelines'' key restricted to the image bucket; the reaper (C(playbooks/reap.yml))
        needs the same capabilities on every bucket it cleans (a key of B2 API v3, which b2sdk speaks, names one
        bucket at most: for several buckets, a key without a bucket restriction).'
    type: str
  api_url:
    description:
      - Realm URL of the B2 native API, where the account is authorized; B2 answers with the API and download
        URLs of the account's cluster.
      - Falls back to E(B2_API_URL). Point it at a B2-compatible service or a test emulator.
    type: str
    default: https://api.backblazeb2.com
    aliases: [realm]
  ca_bundle:
    description:
      - PEM file of certificate authorities to trust for O(api_url) (and the URLs B2 hands out), for a private
        B2-compatible endpoint with its own CA.
      - Falls back to E(B2_CA_BUNDLE). When given, it is used whatever E(REQUESTS_CA_BUNDLE) says; without either,
        the system's trust store (or E(REQUESTS_CA_BUNDLE)) is used, which is what Backblaze's own endpoints need.
      - A certificate that does not verify fails at once (no retries), naming this option.
    type: path
requirements:
  - b2sdk >= 2.5.0
notes:
  - b2sdk retries throttled (HTTP 429, honouring C(Retry-After)) and failed (5xx, dropped connection) calls
    itself; the module retries each call once more with exponential backoff and full jitter, so a longer burst
    of errors still ends well. Errors caused by the input fail at once, naming the parameter to fix.
"""
