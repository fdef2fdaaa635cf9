-- A few machines that differ in more than name and host are still written
-- out in full, on top of a helper.
let m = ../machine.dhall

let V = ../../../dhall/package.dhall

in  [ m.large "db-1" "rack-a"
    , m.large "db-2" "rack-b"
    ,     m.large "db-3" "rack-c"
        // { dataDisks = [ V.Disk::{ name = "wal", sizeGiB = 100 } ] }
    ]
