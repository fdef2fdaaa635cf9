{-| cloud-init NoCloud data given to the machine on first boot.

    userData           raw user-data (`#cloud-config ...`); `None` writes a minimal one.
    sshAuthorizedKeys  public keys for the default user.
    hostname           defaults to the machine name.
-}
{ Type =
    { userData : Optional Text
    , sshAuthorizedKeys : List Text
    , hostname : Optional Text
    }
, default =
  { userData = None Text, sshAuthorizedKeys = [] : List Text, hostname = None Text }
}
