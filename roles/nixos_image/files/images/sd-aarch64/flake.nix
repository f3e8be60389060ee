# The collection's default AArch64 SD-card image (Raspberry Pi 3/4 and other AArch64
# boards with U-Boot/extlinux), pinned to a NixOS release through flake.lock.
#
# Your own NixOS module: the nixos_image role copies `nixos_image_module` next to this
# file as `nixforge-module/` (a file becomes `nixforge-module/default.nix`; a directory
# is copied whole and needs a default.nix). Without one you get nixpkgs' plain SD image.
#
# Build by hand:  nix build .#nixosConfigurations.sd-aarch64.config.system.build.sdImage
# Output:         result/sd-image/nixos-image-sd-card-*-aarch64-linux.img.zst
#                 (older releases: nixos-sd-image-*.img.zst)
{
  description = "nixforge.images: NixOS AArch64 SD-card image (zstd-compressed)";

  # A release branch, locked to one revision in flake.lock. Bump with
  # `nix flake update` (or change the branch here and re-lock) and commit the lock.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      userModule = nixpkgs.lib.optional (builtins.pathExists ./nixforge-module) ./nixforge-module;

      sdSystem = base: nixpkgs.lib.nixosSystem {
        system = "aarch64-linux";
        modules = [
          "${nixpkgs}/nixos/modules/installer/sd-card/${base}"
          {
            sdImage.compressImage = true; # zstd: sd-image/*.img.zst
          }
        ] ++ userModule;
      };
    in
    {
      nixosConfigurations = {
        # The plain SD image (what the seed's config/sd-image.nix built on).
        sd-aarch64 = sdSystem "sd-image-aarch64.nix";
        # The installer flavour (nixpkgs' installer tools and a `nixos` user).
        sd-aarch64-installer = sdSystem "sd-image-aarch64-installer.nix";
      };

      packages.aarch64-linux = {
        sd-image = self.nixosConfigurations.sd-aarch64.config.system.build.sdImage;
        sd-image-installer = self.nixosConfigurations.sd-aarch64-installer.config.system.build.sdImage;
        default = self.packages.aarch64-linux.sd-image;
      };
    };
}
