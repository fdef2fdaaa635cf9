-- A large fleet written the fast way. The Dhall parser virtfleet uses gets
-- slower with the size of the file it parses, much faster than linearly (see
-- "Large fleets" in the README), so this fleet keeps every file small:
--
--   * machines are produced by helper functions (./machine.dhall) instead of
--     one big literal record each;
--   * they are spread over one file per group under ./machines/, each of a
--     few hundred lines at most;
--   * a pool of identical workers is generated, not written out.
--
-- 1000 machines written like this load in under a second; the same 1000 as
-- literal records in one file take about ten (README: "Large fleets").
let V = ../../dhall/package.dhall

let host =
      \(name : Text) ->
        V.Host::{
        , name
        , uri = "qemu+ssh://root@${name}.dc.lan/system"
        , storage = V.Storage.Zfs { parent = "tank/vms" }
        }

in  V.Fleet::{
    , name = "large"
    , hosts = [ host "rack-a", host "rack-b", host "rack-c" ]
    , images =
      [ V.Image::{
        , name = "debian-12"
        , url =
            "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
        }
      ]
    , machines =
          ./machines/web.dhall
        # ./machines/workers.dhall
        # ./machines/databases.dhall
    }
