-- A pool of identical workers, generated: change `count` and `virtfleet plan`
-- shows exactly the machines added or removed.
let m = ../machine.dhall

let V = ../../../dhall/package.dhall

let count = 60

let worker =
      \(i : Natural) ->
        m.small
          "worker-${Natural/show i}"
          ( if    Natural/even i
            then  "rack-b"
            else  "rack-c"
          )

in  Natural/fold
      count
      (List V.Machine.Type)
      ( \(acc : List V.Machine.Type) ->
          acc # [ worker (List/length V.Machine.Type acc) ]
      )
      ([] : List V.Machine.Type)
