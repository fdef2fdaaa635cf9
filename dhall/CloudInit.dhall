{-| cloud-init NoCloud data given to the machine: virtfleet builds a small vfat
    volume labelled `CIDATA` from it and attaches it read-only.

    userData           your user-data: `#cloud-config` or a `#!` script is combined (MIME
                       multipart) with virtfleet's part, which creates `user` with exactly
                       `sshAuthorizedKeys` (written whole, so a removed key stops working
                       at the next boot with a new instance-id); your settings win, lists
                       such as write_files are appended to. Other user-data is used as it
                       is. `None`: virtfleet's part alone. Plans show it only as a hash
                       and line count (`--show-user-data` or `showUserData` to see it).
    sshAuthorizedKeys  public keys for the default user (also in meta-data
                       `public-keys`, which cloud-init adds to the distro's default user).
    hostname           defaults to the machine name.
    user               the default user `virtfleet ssh` logs in as and the generated
                       user-data creates (default "debian").
    networkConfig      a `network-config` file (network config v1/v2 YAML), e.g. for
                       static addresses; `None` leaves the guest on DHCP.
    metaData           extra meta-data keys (`local-hostname`, `instance-id` and
                       `public-keys` are virtfleet's).
    instanceId         a fixed instance-id. `None` derives it from the seed's content, so
                       every change of the seed is a new instance: cloud-init re-runs its
                       per-instance modules (users, keys, write_files, host keys) at the
                       next boot. A fixed one keeps them from running again.
    showUserData       show this machine's user-data text in plans (default False).
-}
{ Type =
    { userData : Optional Text
    , sshAuthorizedKeys : List Text
    , hostname : Optional Text
    , user : Text
    , networkConfig : Optional Text
    , metaData : List { mapKey : Text, mapValue : Text }
    , instanceId : Optional Text
    , showUserData : Bool
    }
, default =
  { userData = None Text
  , sshAuthorizedKeys = [] : List Text
  , hostname = None Text
  , user = "debian"
  , networkConfig = None Text
  , metaData = [] : List { mapKey : Text, mapValue : Text }
  , instanceId = None Text
  , showUserData = False
  }
}
