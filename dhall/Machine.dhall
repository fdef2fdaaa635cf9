{-| A virtual machine.

    name       unique machine name, `[a-z0-9][a-z0-9-]{0,62}`.
    host       the host it runs on. `None` (default): the planner places it on one of
               `hosts` (all of the fleet's when empty) carrying every label of
               `hostLabels`, within their capacity, and keeps it there.
    hosts      the hosts it may be placed on when `host` is `None` (default: any).
    hostLabels labels its host must carry (default none).
    group      machines of one group are spread over different hosts where they fit.
    image      name of an image in `images`; the root disk is a copy-on-write clone of it.
    cpus       virtual CPUs (1..256; default 1).
    memoryMiB  memory in MiB (64..4194304; default 1024).
    diskGiB    root disk size in GiB (1..65536; default 10). Disks only ever grow.
    dataDisks  extra disks (default none).
    autostart  start with the host (default True).
    power      `Running` (default) or `Stopped`.
    network    the network its NIC joins; `None` (default): the host's `network`.
    cloudInit  first-boot configuration; `None` (default) attaches no seed.
    snapshots  snapshot policy (default: an init snapshot only).
    protect    when True virtfleet never destroys this machine (default False).
-}
let Power = ./Power.dhall

let Disk = ./Disk.dhall

let CloudInit = ./CloudInit.dhall

let Snapshots = ./Snapshots.dhall

let Network = ./Network.dhall

in  { Type =
        { name : Text
        , host : Optional Text
        , hosts : List Text
        , hostLabels : List Text
        , group : Optional Text
        , image : Text
        , cpus : Natural
        , memoryMiB : Natural
        , diskGiB : Natural
        , dataDisks : List Disk.Type
        , autostart : Bool
        , power : Power
        , network : Optional Network
        , cloudInit : Optional CloudInit.Type
        , snapshots : Snapshots.Type
        , protect : Bool
        }
    , default =
      { host = None Text
      , hosts = [] : List Text
      , hostLabels = [] : List Text
      , group = None Text
      , cpus = 1
      , memoryMiB = 1024
      , diskGiB = 10
      , dataDisks = [] : List Disk.Type
      , autostart = True
      , power = Power.Running
      , network = None Network
      , cloudInit = None CloudInit.Type
      , snapshots = Snapshots.default
      , protect = False
      }
    }
