{-| The power state virtfleet keeps a machine in. -}
< Running | Stopped >
