-- A machine you can log into: Debian's cloud image with a cloud-init seed.
-- virtfleet builds the NoCloud seed (meta-data, user-data, network-config),
-- attaches it read-only, and `virtfleet ssh web` logs in as `debian` with the
-- key below. Plans show the user-data only as its hash and line count.
--
--   virtfleet -f examples/cloud-init.dhall images lock
--   virtfleet -f examples/cloud-init.dhall apply
--   virtfleet -f examples/cloud-init.dhall status      # the guest's address
--   virtfleet -f examples/cloud-init.dhall ssh web -- cloud-init status --wait
--
-- The test suite runs the same shape for real: `cargo test --test cloud_guest`.
let V = ../dhall/package.dhall

let keys =
      [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnlyForDocs me@desk" ]

in  V.Fleet::{
    , name = "cloud"
    , hosts =
      [ V.Host::{
        , name = "box"
        , uri = "qemu:///system"
        , storage = V.Storage.Dir { path = "/var/lib/virtfleet/cloud" }
        , network = V.Network.Libvirt "default"
        }
      ]
    , images =
      [ V.Image::{
        , name = "debian-12"
        , url =
            "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
        }
      ]
    , machines =
      [ V.Machine::{
        , name = "web"
        , image = "debian-12"
        , memoryMiB = 1024
        , cloudInit = Some V.CloudInit::{
          , sshAuthorizedKeys = keys
          , hostname = Some "web"
          , userData = Some
              ''
              #cloud-config
              package_update: true
              packages: [ nginx ]
              write_files:
                - path: /var/www/html/index.html
                  content: "hello from virtfleet\n"
              ''
          }
        }
      , V.Machine::{
        , name = "db"
        , image = "debian-12"
        , diskGiB = 20
        , cloudInit = Some V.CloudInit::{
          , sshAuthorizedKeys = keys
          , networkConfig = Some
              ''
              version: 2
              ethernets:
                eth0:
                  match: { name: "e*" }
                  addresses: [ 192.168.122.20/24 ]
                  routes: [ { to: default, via: 192.168.122.1 } ]
                  nameservers: { addresses: [ 192.168.122.1 ] }
              ''
          , instanceId = Some "db-1"
          }
        }
      ]
    }
