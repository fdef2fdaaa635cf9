{-| Fleet-wide settings.

    allowDestroy        unattended runs (the timer, `--auto-approve`) may destroy
                        machines removed from the fleet and prune snapshots (default False).
    allowRestart        unattended runs may restart guests for changes that need it (default False).
    trashRetentionDays  how long destroyed disks stay restorable in the trash (default 7).
    placement           `Spread` (default) or `Pack`: where a machine without a fixed
                        host goes among the hosts it may use (see Strategy.dhall).
    cpuOvercommit       vCPUs placed on a host may add up to this many times its
                        `capacity.cpus` (default 4).
-}
let Strategy = ./Strategy.dhall

in  { Type =
        { allowDestroy : Bool
        , allowRestart : Bool
        , trashRetentionDays : Natural
        , placement : Strategy
        , cpuOvercommit : Natural
        }
    , default =
      { allowDestroy = False
      , allowRestart = False
      , trashRetentionDays = 7
      , placement = Strategy.Spread
      , cpuOvercommit = 4
      }
    }
