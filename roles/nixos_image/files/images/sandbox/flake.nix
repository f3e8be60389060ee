# Sandbox image definitions: tiny images of the real formats, built offline.
#
# No nixpkgs and no network: each image is a plain `builtins.derivation` run by the
# builder host's own /bin/sh and python3 (`mkimage.py` writes every byte), so Nix must
# run with `sandbox = false` (as nix_bootstrap sets it up for the sandbox).
#
# The attribute paths are the ones of the real definitions (../sd-aarch64 and
# ../digital-ocean), and the user's NixOS module is taken the same way (a
# `nixforge-module` file or directory placed next to this flake.nix by the
# nixos_image role), so that the role's code path is exactly the one of a real build.
# The module is parsed (a syntax error fails the build, as it would for real) and the
# sha256 of each of its files is written into the image; it is not evaluated as a
# NixOS module.
{
  description = "nixforge.images sandbox images: a tiny MBR .img.zst and a tiny qcow2.gz";

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
        PATH = "/usr/bin:/bin";
        module = moduleChecked;
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
