{-| The virtfleet Dhall package. Import it from your fleet file:

        let V = ./dhall/package.dhall

        in  V.Fleet::{
            , name = "home"
            , hosts = [ V.Host::{ name = "hv1", uri = "qemu:///system"
                                , storage = V.Storage.Dir { path = "/var/lib/virtfleet" } } ]
            , images = [ V.Image::{ name = "debian-12", url = "https://..." } ]
            , machines = [ V.Machine::{ name = "web", image = "debian-12" } ]
            }

    Records with defaults are schemas: use completion, `V.Machine::{ ... }`,
    and give only the fields you change. Sizes carry their unit in the field
    name (`memoryMiB`, `diskGiB`, `sizeGiB`), so "20G" can never be ambiguous.
-}
{ Fleet = ./Fleet.dhall
, Settings = ./Settings.dhall
, Strategy = ./Strategy.dhall
, Host = ./Host.dhall
, Capacity = ./Capacity.dhall
, Storage = ./Storage.dhall
, DomainType = ./DomainType.dhall
, CpuMode = ./CpuMode.dhall
, Network = ./Network.dhall
, Image = ./Image.dhall
, ImageFormat = ./ImageFormat.dhall
, Machine = ./Machine.dhall
, Power = ./Power.dhall
, Disk = ./Disk.dhall
, CloudInit = ./CloudInit.dhall
, Snapshots = ./Snapshots.dhall
}
