-- The example fleet for this machine: one local libvirt host with qcow2 files
-- in a directory. Guests use software emulation (domainType Qemu, no <cpu>
-- element) because nested KVM on CI-style machines cannot boot Linux guests.
-- The image is built reproducibly by `scripts/example-image` (a boot sector
-- that prints to the serial console and halts) and served from 127.0.0.1 by
-- `scripts/demo`, so nothing here needs the internet and its pin in
-- images.lock holds on every machine.
let V = ./dhall/package.dhall

in  V.Fleet::{
    , name = "example"
    , settings = V.Settings::{ trashRetentionDays = 2 }
    , hosts =
      [ V.Host::{
        , name = "local"
        , uri = "qemu:///system"
        , storage = V.Storage.Dir { path = "/var/lib/virtfleet/example" }
        , domainType = V.DomainType.Qemu
        , cpuMode = V.CpuMode.Default
        , network = V.Network.User
        , capacity = Some { cpus = 2, memoryMiB = 4096 }
        }
      ]
    , images =
      [ V.Image::{
        , name = "tiny"
        , url = "http://127.0.0.1:8639/tiny.img"
        , format = V.ImageFormat.Raw
        }
      ]
    , machines =
      [ V.Machine::{
        , name = "web"
        , image = "tiny"
        , memoryMiB = 256
        , diskGiB = 1
        , cloudInit = Some V.CloudInit::{ hostname = Some "web" }
        }
      , V.Machine::{
        , name = "db"
        , image = "tiny"
        , memoryMiB = 256
        , diskGiB = 2
        , dataDisks = [ V.Disk::{ name = "data", sizeGiB = 1 } ]
        , snapshots = V.Snapshots::{ daily = 7, weekly = 4 }
        , protect = True
        }
      ]
    }
