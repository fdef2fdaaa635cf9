# virtfleet, built from this repository.
#
#   nix-build nix                       (through ./default.nix)
#   pkgs.callPackage ./nix/package.nix { }
#
# Needs a nixpkgs whose rustc is at least Cargo.toml's rust-version (1.95).
# The tests are not run in the build: they need a running libvirtd (and
# some a ZFS host), which a Nix build sandbox does not have.
{
  lib,
  rustPlatform,
  pkg-config,
  libvirt,
  makeWrapper,
  qemu-utils,
  openssh,
}:

let
  cargoToml = builtins.fromTOML (builtins.readFile ../Cargo.toml);
in
rustPlatform.buildRustPackage {
  pname = "virtfleet";
  inherit (cargoToml.package) version;

  # Only what the build reads: a change to tests, docs or nix/ does not
  # rebuild the package.
  src = lib.cleanSourceWith {
    src = ../.;
    filter =
      path: type:
      let
        rel = lib.removePrefix (toString ../. + "/") (toString path);
      in
      rel == "Cargo.toml"
      || rel == "Cargo.lock"
      || rel == "build.rs"
      || rel == "src"
      || lib.hasPrefix "src/" rel
      || rel == "dhall"
      || lib.hasPrefix "dhall/" rel
      || rel == "benches"
      || lib.hasPrefix "benches/" rel;
  };
  cargoLock.lockFile = ../Cargo.lock;

  # The `virt` crate links libvirt, found through pkg-config; rusqlite
  # builds its bundled SQLite with the C compiler stdenv provides.
  nativeBuildInputs = [
    pkg-config
    makeWrapper
  ];
  buildInputs = [ libvirt ];

  doCheck = false;

  # virtfleet runs qemu-img on local Dir hosts and ssh for remote ones
  # (libvirt's qemu+ssh transport runs ssh from PATH too).
  postInstall = ''
    wrapProgram $out/bin/virtfleet \
      --prefix PATH : ${
        lib.makeBinPath [
          qemu-utils
          openssh
        ]
      }
  '';

  meta = {
    description = "Declarative VM reconciler for libvirt: fleet.dhall + images.lock -> plan/apply";
    mainProgram = "virtfleet";
    platforms = lib.platforms.linux;
  };
}
