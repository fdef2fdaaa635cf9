-- Helpers that stamp out machines: one short call per machine keeps the
-- files the parser sees small (see fleet.dhall).
let V = ../../dhall/package.dhall

let small =
      \(name : Text) ->
      \(host : Text) ->
        V.Machine::{
        , name
        , host = Some host
        , image = "debian-12"
        , cpus = 1
        , memoryMiB = 1024
        }

let large =
      \(name : Text) ->
      \(host : Text) ->
        V.Machine::{
        , name
        , host = Some host
        , image = "debian-12"
        , cpus = 4
        , memoryMiB = 8192
        , diskGiB = 50
        , protect = True
        }

in  { small, large }
