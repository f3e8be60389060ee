# The collection's DigitalOcean custom image: nixpkgs' digital-ocean-image module
# (make-disk-image, format qcow2, gzip), pinned to a NixOS release through flake.lock.
# make-disk-image runs a VM: the builder needs the `kvm` system feature (/dev/kvm).
#
# Your own NixOS module: the nixos_image role copies `nixos_image_module` next to this
# file as `nixforge-module/` (a file becomes `nixforge-module/default.nix`).
#
# Build by hand:  nix build .#nixosConfigurations.digital-ocean.config.system.build.digitalOceanImage
# Output:         result/nixos.qcow2.gz  (newer releases: nixos-image-digital-ocean-*.qcow2.gz)
{
  description = "nixforge.images: NixOS DigitalOcean custom image (qcow2, gzip)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      userModule = nixpkgs.lib.optional (builtins.pathExists ./nixforge-module) ./nixforge-module;
    in
    {
      nixosConfigurations.digital-ocean = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          "${nixpkgs}/nixos/modules/virtualisation/digital-ocean-image.nix"
          {
            virtualisation.digitalOceanImage.compressionMethod = "gzip";
          }
        ] ++ userModule;
      };

      packages.x86_64-linux = {
        digital-ocean-image = self.nixosConfigurations.digital-ocean.config.system.build.digitalOceanImage;
        default = self.packages.x86_64-linux.digital-ocean-image;
      };
    };
}
