# Sandbox image definitions: small, real, bootable images of the real formats, built offline.
#
# No nixpkgs and no network: each image is a plain `builtins.derivation` run by the
# builder host's own /bin/sh, python3 and image tools (mke2fs, mkfs.vfat, mcopy, zstd,
# grub-mkimage), so Nix must run with `sandbox = false` (as nix_bootstrap sets it up for
# the sandbox). `mkimage.py` assembles the images; `guest/` holds the scripts that run in
# the DigitalOcean image (initramfs, init, DHCP hook, GRUB menu).
#
# The Debian packages inside the DigitalOcean image (Debian's cloud kernel, busybox-static,
# dropbear and its libraries) are read at build time from NIXFORGE_SANDBOX_DEBS, a
# directory of .debs the sandbox's builder base image carries (fetched through the
# machine's Debian mirror when that base image is built; see
# tests/sandbox/nfsandbox/hosts/rootfs.py). It is a plain string, not a Nix path: the
# flake is evaluated where Nix runs (the controller in remote build mode), the directory
# exists only on the builder.
#
# The attribute paths are the ones of the real definitions (../sd-aarch64 and
# ../digital-ocean), and the user's NixOS module is taken the same way (a
# `nixforge-module` file or directory placed next to this flake.nix by the
# nixos_image role), so that the role's code path is exactly the one of a real build.
# The module is parsed (a syntax error fails the build, as it would for real) and the
# sha256 of each of its files is written into the image (/etc/nixforge-image); it is not
# evaluated as a NixOS module. Two comment lines in it act as switches:
#   # nixforge-sandbox-build-seconds: N     the build lasts N seconds more
#   # nixforge-sandbox-break-init: true     an image whose init fails (never answers SSH)
{
  description = "nixforge.images sandbox images: a bootable qcow2.gz and an sd-image .img.zst";

  inputs = { };

  outputs = { self }:
    let
      modulePath = ./nixforge-module;
      hasModule = builtins.pathExists modulePath;
      # Parse the module like a real build would; any function or attribute set passes.
      moduleChecked =
        if !hasModule then ""
        else
          let m = import modulePath;
          in if builtins.isFunction m || builtins.isAttrs m
             then "${modulePath}"
             else throw "nixforge-module: a NixOS module must be a function or an attribute set";

      image = { kind, system, name }: builtins.derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" "exec python3 ${./mkimage.py} ${kind} \"$out\" \"$module\"" ];
        # With sandbox = false Nix sets PATH=/path-not-set: use the host's tools.
        PATH = "/usr/bin:/bin:/usr/sbin:/sbin";
        module = moduleChecked;
        NIXFORGE_SANDBOX_GUEST = ./guest;
        NIXFORGE_SANDBOX_DEBS = "/usr/share/nixforge-sandbox/debs";
      };

      sdImage = image {
        kind = "sd";
        system = "aarch64-linux";
        name = "nixos-sd-image-sandbox-aarch64-linux";
      };
      digitalOceanImage = image {
        kind = "do";
        system = "x86_64-linux";
        name = "digital-ocean-image";
      };
    in
    {
      # Same shape as lib.nixosSystem's result, reduced to what the role builds.
      nixosConfigurations = {
        sd-aarch64.config.system.build = { inherit sdImage; };
        digital-ocean.config.system.build = { inherit digitalOceanImage; };
      };
      packages.aarch64-linux.sd-image = sdImage;
      packages.x86_64-linux.digital-ocean-image = digitalOceanImage;
    };
}
