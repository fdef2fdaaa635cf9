{-| Where a host keeps base images and machine disks.

    `Zfs { parent = "tank/vms" }`          zvols under this dataset (copy-on-write clones).
    `Dir { path = "/var/lib/virtfleet" }`  qcow2 files in this directory (overlays on base images).
-}
< Zfs : { parent : Text } | Dir : { path : Text } >
