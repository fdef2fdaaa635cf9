-- Stamping out many similar machines with a Dhall function: a CI runner pool
-- of `count` identical workers spread over two hosts, plus one coordinator.
-- Change `count` and `virtfleet plan` shows exactly the machines added or removed.
let V = ../dhall/package.dhall

let count = 12

let runner =
      \(i : Natural) ->
        V.Machine::{
        , name = "runner-${Natural/show i}"
        , host = Some (if Natural/even i then "ci-a" else "ci-b")
        , image = "debian-12"
        , cpus = 2
        , memoryMiB = 4096
        , diskGiB = 30
        , snapshots = V.Snapshots::{ init = True }
        }

-- runner-0 .. runner-(count - 1), with builtins only (no Prelude import needed).
let runners =
      Natural/fold
        count
        (List V.Machine.Type)
        ( \(acc : List V.Machine.Type) ->
            acc # [ runner (List/length V.Machine.Type acc) ]
        )
        ([] : List V.Machine.Type)

let host =
      \(name : Text) ->
        V.Host::{
        , name
        , uri = "qemu+ssh://root@${name}.ci.lan/system"
        , storage = V.Storage.Zfs { parent = "rpool/runners" }
        , capacity = Some { cpus = 32, memoryMiB = 131072 }
        }

in  V.Fleet::{
    , name = "ci"
    , settings = V.Settings::{ allowDestroy = True, allowRestart = True }
    , hosts = [ host "ci-a", host "ci-b" ]
    , images =
      [ V.Image::{
        , name = "debian-12"
        , url =
            "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
        }
      ]
    , machines =
          [ V.Machine::{
            , name = "coordinator"
            , host = Some "ci-a"
            , image = "debian-12"
            , protect = True
            }
          ]
        # runners
    }
