{-| A whole fleet: what `fleet.dhall` evaluates to.

    name      fleet name, `[a-z0-9][a-z0-9-]{0,62}`; part of every ownership marker
              and of each machine's UUID and MAC, so keep it stable.
    settings  fleet-wide settings (see Settings.dhall).
    hosts     hypervisor hosts.
    images    base images.
    machines  virtual machines.
-}
let Settings = ./Settings.dhall

let Host = ./Host.dhall

let Image = ./Image.dhall

let Machine = ./Machine.dhall

in  { Type =
        { name : Text
        , settings : Settings.Type
        , hosts : List Host.Type
        , images : List Image.Type
        , machines : List Machine.Type
        }
    , default =
      { settings = Settings.default
      , hosts = [] : List Host.Type
      , images = [] : List Image.Type
      , machines = [] : List Machine.Type
      }
    }
