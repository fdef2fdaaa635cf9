{-| An extra data disk, attached after the root disk (vdb, vdc, ...).

    name       disk name, unique within the machine (`root` is reserved).
    sizeGiB    size in GiB (1..65536). Disks only ever grow.
    snapshots  its own snapshot policy; `None` (default) follows the machine's.
-}
let Snapshots = ./Snapshots.dhall

in  { Type =
        { name : Text, sizeGiB : Natural, snapshots : Optional Snapshots.Type }
    , default.snapshots = None Snapshots.Type
    }
