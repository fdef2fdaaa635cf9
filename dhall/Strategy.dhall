{-| Where the planner puts a machine that may run on several hosts.

    Spread  the host with the most room left (memory, then vCPUs); default.
    Pack    the fullest host the machine still fits on.
-}
< Spread | Pack >
