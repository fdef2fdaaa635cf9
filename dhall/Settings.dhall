{-| Fleet-wide settings.

    allowDestroy        unattended runs (the timer, `--auto-approve`) may destroy
                        machines removed from the fleet and prune snapshots (default False).
    allowRestart        unattended runs may restart guests for changes that need it (default False).
    trashRetentionDays  how long destroyed disks stay restorable in the trash (default 7).
-}
{ Type =
    { allowDestroy : Bool, allowRestart : Bool, trashRetentionDays : Natural }
, default = { allowDestroy = False, allowRestart = False, trashRetentionDays = 7 }
}
