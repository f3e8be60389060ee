# -*- coding: utf-8 -*-
# Copyright (c) nixforge.images contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# The work is done by the action plugin of the same name; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: sd_image_check
short_description: Check an SD-card image on the controller, its partition table and both file systems
version_added: "0.2.0"
description:
  - Reads the image at O(path) (C(.img.zst), decompressed into a sparse temporary file, or a raw C(.img)) the way
    nixpkgs' C(sd-image.nix) lays it out, and fails unless it is sound. No root is needed and nothing is mounted.
  - "The MBR: boot signature, partitions inside the image and not overlapping, a FAT firmware partition
    (types 0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e, 0xef) and exactly one Linux (0x83) root partition."
  - "The firmware partition: a FAT boot sector, and C(fsck.vfat -n) on a copy of the partition finds no error."
  - "The root partition: an ext2/3/4 superblock whose file system fits the partition, C(e2fsck -fn) on it in place
    (e2fsprogs' C(image?offset=N)) finds no error, and each of O(files) is a regular file on it (C(debugfs))."
  - A failure names the partition (number, type, file system, label, size, offset) and the tool's output, and
    removes the image unless O(keep_corrupt) is set, so that nobody writes a card from it.
  - Temporary files live in a hidden directory next to the image (or in O(tmp_dir)) and are removed whatever
    happens. Needs C(zstd), C(fsck.vfat) (dosfstools) and C(e2fsck), C(debugfs) (e2fsprogs) on the controller.
author:
  - nixforge.images contributors (@nixforge)
options:
  path:
    description: The image on the controller.
    type: path
    required: true
  files:
    description: Files that must exist as regular files on the root file system.
    type: list
    elements: str
    default: [/boot/extlinux/extlinux.conf]
  timeout:
    description: Seconds each tool (zstd, fsck.vfat, e2fsck, debugfs) may run before the check fails.
    type: int
    default: 1800
  tmp_dir:
    description: Directory for the temporary files (about the size of the uncompressed image, sparse); default
      the image's own directory.
    type: path
  keep_corrupt:
    description: Keep a corrupt image at O(path) instead of removing it.
    type: bool
    default: false
extends_documentation_fragment:
  - nixforge.images.attributes
attributes:
  check_mode:
    support: full
    details: Checks the image if it exists (the check changes nothing); skips when it does not.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
    details: Runs on the controller only.
"""

EXAMPLES = r"""
- name: Check the fetched SD image
  nixforge.images.sd_image_check:
    path: artifacts/nixos-sd-image-aarch64-linux.img.zst
  register: sd_check

- name: Show its partitions
  ansible.builtin.debug:
    msg: "{{ sd_check.summary }}"
"""

RETURN = r"""
path:
  description: The image checked (absolute).
  returned: always
  type: str
partitions:
  description: The MBR's partitions, as checked.
  returned: success
  type: list
  elements: dict
  contains:
    number: {description: Partition number (1-4)., type: int}
    type: {description: "MBR type, e.g. C(0x0b).", type: str}
    type_name: {description: "Name of the type, e.g. C(W95 FAT32), C(Linux).", type: str}
    filesystem: {description: "C(FAT12), C(FAT16), C(FAT32), C(ext2), C(ext3) or C(ext4).", type: str}
    label: {description: The file system's volume label., type: str}
    start: {description: Offset in the image in bytes., type: int}
    size: {description: Size in bytes., type: int}
    bootable: {description: The MBR's active flag., type: bool}
    checks:
      description: "What was checked and its result, e.g. C(e2fsck -fn: exit 0)."
      type: list
      elements: str
    summary: {description: One line for humans., type: str}
summary:
  description: "One line per partition, e.g. C(2: ext4 NIXOS_SD, 1.9 GiB at 38.0 MiB (type 0x83 Linux, bootable))."
  returned: success
  type: list
  elements: str
  sample: ["1: FAT16 FIRMWARE, 30.0 MiB at 8.0 MiB (type 0x0b W95 FAT32)"]
removed:
  description: Whether a corrupt image was removed.
  returned: always
  type: bool
seconds:
  description: How long the check took.
  returned: when the check ran
  type: float
"""
