"""Write tiny images of the real formats, for the sandbox image definitions.

Runs as a Nix builder with nothing but the host's python3 (no nixpkgs, no network,
no sfdisk/zstd/qemu-img needed): every byte of the formats is written here.

  mkimage.py sd OUT [MODULE]  -> OUT/sd-image/<name>.img.zst  (MBR: FAT32 firmware + Linux root)
  mkimage.py do OUT [MODULE]  -> OUT/nixos.qcow2.gz           (qcow2 v2 holding an MBR disk)

Both also write OUT/nix-support/hydra-build-products, as nixpkgs' image builders do.
Output is deterministic: the same inputs give the same bytes (no time stamps).
"""

import gzip
import hashlib
import os
import struct
import sys
import time

MIB = 1024 * 1024
SECTOR = 512
# nixpkgs' sd-image.nix gives its images this MBR disk identifier ("Nixx" backwards).
SD_DISK_ID = 0x2178694E


def module_lines(path):
    """One line per file of the user's NixOS module: its path and sha256."""
    if not path:
        return "module: none\n"
    files = []
    if os.path.isfile(path):
        files.append((os.path.basename(path), path))
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files += [(os.path.relpath(os.path.join(root, n), path), os.path.join(root, n)) for n in sorted(names)]
    lines = []
    for rel, full in files:
        with open(full, "rb") as fh:
            lines.append("module: %s sha256:%s\n" % (rel, hashlib.sha256(fh.read()).hexdigest()))
    return "".join(lines)


def mbr(disk_id, partitions):
    """A classic MBR: partitions are (start_lba, sectors, type, bootable)."""
    sector = bytearray(SECTOR)
    struct.pack_into("<I", sector, 440, disk_id)
    for index, (start, count, ptype, bootable) in enumerate(partitions):
        # CHS fields set to the LBA-only marker (0xFE 0xFF 0xFF), as modern tools do.
        entry = struct.pack("<B3sB3sII", 0x80 if bootable else 0, b"\xfe\xff\xff", ptype, b"\xfe\xff\xff", start, count)
        sector[446 + 16 * index : 446 + 16 * (index + 1)] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def disk_image(disk_id, partitions, contents, size):
    """Raw disk bytes: the MBR, then each partition starting with its content text."""
    image = bytearray(size)
    image[0:SECTOR] = mbr(disk_id, partitions)
    for (start, count, _ptype, _boot), text in zip(partitions, contents):
        data = text.encode()
        if len(data) > count * SECTOR:
            raise SystemExit("partition content larger than the partition")
        image[start * SECTOR : start * SECTOR + len(data)] = data
    return bytes(image)


def zstd_frame(data, window_log=12):
    """A zstd frame of raw and RLE blocks (RFC 8878): valid for every zstd decoder."""
    block_max = min(1 << window_log, 128 * 1024)
    # Frame header: content size in 8 bytes (flag 3), not single-segment, no checksum,
    # no dictionary; then the window descriptor (exponent = window_log - 10, mantissa 0).
    out = [struct.pack("<IB", 0xFD2FB528, 3 << 6), bytes([(window_log - 10) << 3]), struct.pack("<Q", len(data))]
    offsets = list(range(0, len(data), block_max)) or [0]
    for number, offset in enumerate(offsets):
        block = data[offset : offset + block_max]
        last = 1 if number == len(offsets) - 1 else 0
        if block and block.count(block[0]) == len(block):
            header = last | (1 << 1) | (len(block) << 3)  # RLE block: one byte, repeated
            out.append(struct.pack("<I", header)[:3] + block[:1])
        else:
            header = last | (0 << 1) | (len(block) << 3)  # raw block
            out.append(struct.pack("<I", header)[:3] + block)
    return b"".join(out)


def qcow2(raw, cluster_bits=16):
    """A qcow2 (version 2) image of raw: only non-zero clusters are allocated."""
    cluster = 1 << cluster_bits
    size = len(raw)
    l2_entries = cluster // 8
    n_clusters = (size + cluster - 1) // cluster
    l1_size = (n_clusters + l2_entries - 1) // l2_entries
    data_clusters = [i for i in range(n_clusters) if any(raw[i * cluster : (i + 1) * cluster])]
    # Layout: 0 header, 1 refcount table, 2 refcount block, 3.. L1, then L2 tables, then data.
    l1_clusters = (l1_size * 8 + cluster - 1) // cluster
    l1_offset = 3 * cluster
    l2_first = 3 + l1_clusters
    data_first = l2_first + l1_size
    total_clusters = data_first + len(data_clusters)
    if total_clusters > cluster // 2:
        raise SystemExit("image too large for one refcount block; use a smaller disk")
    copied = 1 << 63
    l1 = bytearray(l1_clusters * cluster)
    l2 = bytearray(l1_size * cluster)
    for index in range(l1_size):
        struct.pack_into(">Q", l1, index * 8, ((l2_first + index) * cluster) | copied)
    for position, guest in enumerate(data_clusters):
        struct.pack_into(">Q", l2, guest * 8, ((data_first + position) * cluster) | copied)
    refcount_table = bytearray(cluster)
    struct.pack_into(">Q", refcount_table, 0, 2 * cluster)
    refcount_block = bytearray(cluster)
    for index in range(total_clusters):
        struct.pack_into(">H", refcount_block, index * 2, 1)
    header = bytearray(cluster)
    struct.pack_into(
        ">4sIQIIQIIQQIIQ",
        header,
        0,
        b"QFI\xfb",  # magic
        2,  # version
        0,  # backing file offset
        0,  # backing file name size
        cluster_bits,
        size,  # virtual size
        0,  # no encryption
        l1_size,
        l1_offset,
        cluster,  # refcount table offset
        1,  # refcount table clusters
        0,  # snapshots
        0,  # snapshots offset
    )
    parts = [bytes(header), bytes(refcount_table), bytes(refcount_block), bytes(l1), bytes(l2)]
    parts += [raw[guest * cluster : (guest + 1) * cluster].ljust(cluster, b"\0") for guest in data_clusters]
    return b"".join(parts)


def products(out, kind, path):
    os.makedirs(os.path.join(out, "nix-support"), exist_ok=True)
    with open(os.path.join(out, "nix-support", "hydra-build-products"), "w") as fh:
        fh.write("file %s %s\n" % (kind, path))


def build_seconds(module):
    """A module line ``# nixforge-sandbox-build-seconds: N`` makes the build last N seconds,
    as a real image build does, so that tests can hit a builder mid-build."""
    text = ""
    if module and os.path.isfile(module):
        text = open(module).read()
    elif module and os.path.isfile(os.path.join(module, "default.nix")):
        text = open(os.path.join(module, "default.nix")).read()
    for line in text.splitlines():
        if line.strip().startswith("# nixforge-sandbox-build-seconds:"):
            return float(line.split(":", 1)[1])
    return 0.0


def main(argv):
    kind, out = argv[1], argv[2]
    module = argv[3] if len(argv) > 3 else ""
    time.sleep(build_seconds(module))
    label = "nixforge sandbox image (%s)\n%s" % (kind, module_lines(module))
    if kind == "sd":
        # Like nixpkgs' sd-image: a FAT32 (LBA) firmware partition, then the Linux root,
        # bootable, under the nixpkgs disk identifier. 8 MiB in all.
        parts = [(2048, 2048, 0x0C, False), (4096, 12288, 0x83, True)]
        raw = disk_image(SD_DISK_ID, parts, ["FIRMWARE\n" + label, "NIXOS_SD\n" + label], 8 * MIB)
        os.makedirs(os.path.join(out, "sd-image"))
        path = os.path.join(out, "sd-image", "nixos-sd-image-sandbox-aarch64-linux.img.zst")
        with open(path, "wb") as fh:
            fh.write(zstd_frame(raw))
        products(out, "sd-image", path)
    elif kind == "do":
        # One bootable Linux partition filling a 16 MiB disk, stored as qcow2, then gzip.
        raw = disk_image(0x6E786667, [(2048, 30720, 0x83, True)], ["nixos\n" + label], 16 * MIB)
        os.makedirs(out)
        path = os.path.join(out, "nixos.qcow2.gz")
        with open(path, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
            gz.write(qcow2(raw))
        products(out, "qcow2", path)
    else:
        raise SystemExit("unknown image kind %r (sd or do)" % kind)


if __name__ == "__main__":
    main(sys.argv)
