-- A three-host homelab on ZFS: two hypervisors reached over SSH plus the
-- local one, zvols cloned from pinned base images, snapshot policies, and a
-- protected database machine that virtfleet will never destroy, and two k3s
-- nodes the planner places on the hypervisors, one per host (their group),
-- and keeps where they are.
let V = ../dhall/package.dhall

let zfsHost =
      \(name : Text) ->
      \(cpus : Natural) ->
      \(memoryGiB : Natural) ->
        V.Host::{
        , name
        , uri = "qemu+ssh://root@${name}.lan/system"
        , storage = V.Storage.Zfs { parent = "tank/vms" }
        , network = V.Network.Bridge "br0"
        , capacity = Some { cpus, memoryMiB = memoryGiB * 1024 }
        , labels = [ "hypervisor" ]
        }

let keys = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnlyForDocs admin@lab" ]

let nightly = V.Snapshots::{ daily = 7, weekly = 4, monthly = 6 }

let k3s =
      \(name : Text) ->
        V.Machine::{
        , name
        , hostLabels = [ "hypervisor" ]
        , group = Some "k3s"
        , image = "ubuntu-24-04"
        , cpus = 4
        , memoryMiB = 8192
        , diskGiB = 50
        , cloudInit = Some V.CloudInit::{
          , sshAuthorizedKeys = keys
          , userData = Some
              ''
              #cloud-config
              package_update: true
              packages: [curl]
              runcmd:
                - curl -sfL https://get.k3s.io | sh -
              ''
          }
        }

in  V.Fleet::{
    , name = "homelab"
    , settings = V.Settings::{ allowRestart = True, trashRetentionDays = 14 }
    , hosts =
      [ zfsHost "hv1" 16 64
      , zfsHost "hv2" 8 32
      , V.Host::{
        , name = "nas"
        , uri = "qemu:///system"
        , storage = V.Storage.Zfs { parent = "pool0/virt" }
        , cpuMode = V.CpuMode.HostModel
        }
      ]
    , images =
      [ V.Image::{
        , name = "debian-12"
        , url =
            "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
        }
      , V.Image::{
        , name = "ubuntu-24-04"
        , url =
            "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img"
        }
      ]
    , machines =
      [ V.Machine::{
        , name = "postgres"
        , host = Some "hv1"
        , image = "debian-12"
        , cpus = 4
        , memoryMiB = 16384
        , diskGiB = 40
        , dataDisks =
          [ V.Disk::{
            , name = "pgdata"
            , sizeGiB = 200
            , snapshots = Some V.Snapshots::{ init = False, hourly = 24, daily = 14, weekly = 8, monthly = 12 }
            }
          ]
        , snapshots = nightly
        , protect = True
        , cloudInit = Some V.CloudInit::{ sshAuthorizedKeys = keys }
        }
      , V.Machine::{
        , name = "gitea"
        , host = Some "hv1"
        , image = "debian-12"
        , cpus = 2
        , memoryMiB = 4096
        , diskGiB = 30
        , snapshots = nightly
        , cloudInit = Some V.CloudInit::{ sshAuthorizedKeys = keys }
        }
      , k3s "k3s-1"
      , k3s "k3s-2"
      , V.Machine::{
        , name = "backup"
        , host = Some "nas"
        , image = "debian-12"
        , memoryMiB = 2048
        , dataDisks = [ V.Disk::{ name = "staging", sizeGiB = 500 } ]
        , autostart = False
        , power = V.Power.Stopped
        }
      ]
    }
