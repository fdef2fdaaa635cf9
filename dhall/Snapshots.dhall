{-| Snapshot policy, in the spirit of sanoid.

    init     take an `init` snapshot right after the disk is created, so
             `virtfleet reinit` can bring the machine back to fresh (default True).
    hourly   how many hourly snapshots to keep   (0..720, 0 = none)
    daily    how many daily snapshots to keep    (0..366)
    weekly   how many weekly snapshots to keep   (0..260)
    monthly  how many monthly snapshots to keep  (0..240)

    Snapshots virtfleet did not take (manual ones, other tools') are never pruned.
-}
{ Type =
    { init : Bool
    , hourly : Natural
    , daily : Natural
    , weekly : Natural
    , monthly : Natural
    }
, default = { init = True, hourly = 0, daily = 0, weekly = 0, monthly = 0 }
}
