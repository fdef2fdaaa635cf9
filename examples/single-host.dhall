-- One hypervisor, qcow2 files in a directory: the smallest useful fleet.
-- Machines need no `host` field when the fleet has exactly one host.
let V = ../dhall/package.dhall

in  V.Fleet::{
    , name = "desk"
    , hosts =
      [ V.Host::{
        , name = "box"
        , uri = "qemu:///system"
        , storage = V.Storage.Dir { path = "/var/lib/virtfleet/desk" }
        }
      ]
    , images =
      [ V.Image::{
        , name = "debian-12"
        , url =
            "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
        }
      ]
    , machines =
      [ V.Machine::{
        , name = "dev"
        , image = "debian-12"
        , cpus = 4
        , memoryMiB = 8192
        , diskGiB = 40
        , cloudInit = Some V.CloudInit::{
          , sshAuthorizedKeys =
            [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnlyForDocs me@desk" ]
          }
        }
      , V.Machine::{
        , name = "scratch"
        , image = "debian-12"
        , power = V.Power.Stopped
        , autostart = False
        , snapshots = V.Snapshots::{ init = False }
        }
      ]
    }
