{-| A hypervisor host.

    name        unique host name, `[a-z0-9][a-z0-9-]{0,62}`.
    uri         libvirt URI: `qemu:///system`, `qemu+ssh://root@hv1/system`, ...
    storage     where disks live (see Storage.dhall).
    domainType  `Kvm` (default) or `Qemu` (software emulation).
    cpuMode     guest CPU model (default `HostPassthrough`).
    network     the default network for machines on this host (default `Libvirt "default"`).
    capacity    optional limits checked before anything is planned.
    sshTarget   optional `user@host[:port]` for storage commands; by default it
                derives from `uri`.
    concurrency optional cap (1 to 64) on the steps in flight at once on this
                host when it is changed; `--concurrency` caps every host.
    labels      words machines can ask for with `hostLabels` (default none).
-}
let DomainType = ./DomainType.dhall

let CpuMode = ./CpuMode.dhall

let Storage = ./Storage.dhall

let Network = ./Network.dhall

let Capacity = ./Capacity.dhall

in  { Type =
        { name : Text
        , uri : Text
        , storage : Storage
        , domainType : DomainType
        , cpuMode : CpuMode
        , network : Network
        , capacity : Optional Capacity
        , sshTarget : Optional Text
        , concurrency : Optional Natural
        , labels : List Text
        }
    , default =
      { domainType = DomainType.Kvm
      , cpuMode = CpuMode.HostPassthrough
      , network = Network.Libvirt "default"
      , capacity = None Capacity
      , sshTarget = None Text
      , concurrency = None Natural
      , labels = [] : List Text
      }
    }
