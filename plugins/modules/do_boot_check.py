# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: do_boot_check
short_description: Prove that a DigitalOcean custom image boots, with a short-lived droplet
version_added: "0.3.0"
description:
  - Generates, on the controller, an ed25519 login key and an ed25519 SSH host key for this check; registers
    the login key as an account key (M(nixforge.images.do_ssh_key)); creates a droplet from O(image) in
    O(region) (M(nixforge.images.do_droplet)) with the host key in its C(#cloud-config) user data, and pins that
    host key in a known_hosts file before the first connection (host key checking stays on).
  - Waits until C(root) can log in over SSH, runs O(command) and returns its output, the seconds from the
    droplet's creation to the first login, and what the check cost.
  - Always deletes the droplet and the key again, when the check passes, fails or times out, and when the task
    is interrupted while the action runs. If the controller dies first, both carry the build id and the expiry
    (the droplet as tags, the key in its name), and C(playbooks/reap.yml) removes them.
  - A failed boot fails the task with a message naming the timeout and how far the droplet got, out of
    C(address) (the droplet has a public IPv4 address), C(tcp) (port 22 accepted a connection), C(banner)
    (an SSH server greeted) and C(login) (the login worked). Removing the image is the caller's decision (the
    C(do_image_publish) role removes it unless C(do_image_publish_keep_unbootable) is true).
  - The droplet size is the cheapest one whose disk holds O(min_disk_size), unless O(size) names one.
    DigitalOcean bills droplets per second with a minimum of 60 seconds or USD 0.01, whichever is higher; a
    boot check of a few minutes on the smallest size costs that minimum, USD 0.01.
author:
  - nixforge.images contributors (@nixforge)
options:
  image:
    description: Id of the custom image to boot.
    type: str
    required: true
  region:
    description: Region slug to boot it in; one of the image's regions (the first one is the natural choice).
    type: str
    required: true
  build_id:
    description: The build the key and droplet belong to (tag C(nixforge-build-id), and part of the key's name).
    type: str
    required: true
  pipeline:
    description: Value of the droplet's C(nixforge-pipeline) tag.
    type: str
    default: default
  ttl:
    description:
      - Lifetime written into the droplet's C(nixforge-expires-at) tag and the key's name, like V(1h). The check
        removes both itself; the expiry is what C(playbooks/reap.yml) goes by when it could not.
      - Default V(1h) when O(expires_at) is not set either.
    type: str
  expires_at:
    description: The same expiry as a UTC ISO-8601 timestamp; mutually exclusive with O(ttl).
    type: str
  name:
    description: The droplet's name; default C(nixforge-<build_id>-boot).
    type: str
  size:
    description: Droplet size slug; default the cheapest size in O(region) whose disk holds O(min_disk_size) GB.
    type: str
  min_disk_size:
    description: The image's C(min_disk_size) in GB (returned by M(nixforge.images.do_custom_image)).
    type: int
    default: 0
  command:
    description:
      - Shell command run as C(root) on the droplet once the login works; it must exit 0.
      - The default proves that the droplet runs the image that was built. On NixOS it prints C(nixos-version)
        and the store path of the running system (C(/run/current-system)), which differs for every
        configuration; on an image without C(nixos-version) it prints C(/etc/nixforge-image), the marker the
        collection's sandbox image definition writes (its module hashes).
    type: str
  expect:
    description: Text the command's output must contain (for example the system's store path); not checked
      when unset.
    type: str
  boot_timeout:
    description: Seconds from the droplet becoming active (its VM started) until the SSH login must work; the task
      fails when they run out, saying how far the droplet got. The wait for C(active) is O(create_timeout)'s.
    type: int
    default: 600
  create_timeout:
    description: Seconds DigitalOcean may take to create the droplet until it is C(active).
    type: int
    default: 300
  command_timeout:
    description: Seconds O(command) may run.
    type: int
    default: 120
  cleanup_timeout:
    description: Seconds to wait until the droplet is gone after its deletion.
    type: int
    default: 300
  oauth_token:
    description:
      - DigitalOcean API token (read and write scope for droplets, SSH keys, images and sizes). Never logged.
      - Falls back to E(DIGITALOCEAN_TOKEN), then E(DO_API_TOKEN) (read by the modules this action calls).
    type: str
    aliases: [api_token]
  api_url:
    description: Base URL of the DigitalOcean API v2 (default V(https://api.digitalocean.com/v2/), or
      E(DIGITALOCEAN_API_URL)).
    type: str
  ca_bundle:
    description: PEM file of the CA that signs the API's certificate, for an endpoint with its own CA (default
      E(DIGITALOCEAN_CA_BUNDLE), else the system's store or E(REQUESTS_CA_BUNDLE)).
    type: path
requirements:
  - python-digitalocean >= 1.17.0
  - OpenSSH client (C(ssh), C(ssh-keygen)) on the controller
notes:
  - The SSH probe connects from the controller to the droplet's public address on port 22; a firewall in
    between makes the check fail at C(address).
extends_documentation_fragment:
  - nixforge.images.attributes
  - nixforge.images.attributes.actiongroup_digitalocean
attributes:
  check_mode:
    support: partial
    details: Creates nothing and reports the steps it would take (C(actions)).
  diff_mode:
    support: none
  platform:
    support: full
    platforms: cloud
"""

EXAMPLES = r"""
- name: Boot the freshly imported image once and show what it runs
  nixforge.images.do_boot_check:
    image: "{{ imported.image.id }}"
    region: "{{ imported.image.regions | first }}"
    min_disk_size: "{{ imported.image.min_disk_size }}"
    build_id: do-image-42
    pipeline: do-image
    boot_timeout: 300
  register: boot

- name: Show the boot time and the check's output
  ansible.builtin.debug:
    msg: "booted in {{ boot.boot_seconds }} s: {{ boot.output }} ({{ boot.cost }} USD)"
"""

RETURN = r"""
boot_seconds:
  description: Seconds from the droplet becoming active to the first SSH login (null when it never worked).
  returned: when the droplet was created
  type: float
  sample: 41.3
create_seconds:
  description: Seconds from the create request until the droplet was active (null when it never was).
  returned: when the droplet was created
  type: float
  sample: 12.0
output:
  description: Standard output of O(command), stripped.
  returned: always
  type: str
  sample: "25.11.20261201.abcdef0 (Xantusia)"
reached:
  description: The last stage reached, one of C(none), C(created), C(address), C(tcp), C(banner), C(login).
  returned: always
  type: str
  sample: login
droplet:
  description: The droplet (it is deleted again before the task ends).
  returned: always
  type: dict
  sample: {"id": "390000001", "name": "nixforge-do-image-42-boot", "size": "s-1vcpu-1gb", "region": "nyc3",
           "public_ipv4": "203.0.113.10", "price_hourly": 0.00893}
ssh_key:
  description: The account key used (id, name, fingerprint); deleted again before the task ends.
  returned: always
  type: dict
droplet_seconds:
  description: Seconds the droplet existed (creation request to confirmed deletion).
  returned: when the droplet was created
  type: float
  sample: 58.2
billed_seconds:
  description: Seconds DigitalOcean bills for it (per second, at least 60).
  returned: when the droplet was created
  type: int
  sample: 60
price_per_hour:
  description: The droplet size's price in USD per hour (null when unknown).
  returned: when the droplet was created
  type: float
  sample: 0.00893
cost:
  description: What the check cost in USD, the price per second times the billed seconds, at least USD 0.01.
  returned: when the droplet was created
  type: float
  sample: 0.01
removed:
  description: What was deleted at the end (C(droplets) and C(ssh_keys), as the modules report them).
  returned: always
  type: dict
expires_at:
  description: The expiry written on the droplet and the key.
  returned: always
  type: str
actions:
  description: In check mode, the steps a real run would take.
  returned: check mode
  type: list
  elements: str
"""
