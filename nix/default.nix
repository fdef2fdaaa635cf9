# `nix-build nix` builds virtfleet with the nixpkgs on NIX_PATH; the module
# is ./module.nix (imports = [ ./nix/module.nix ]; in a NixOS configuration).
{
  pkgs ? import <nixpkgs> { },
}:
pkgs.callPackage ./package.nix { }
