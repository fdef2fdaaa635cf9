{-| A base image. Its sha256 and size live in `images.lock`, never here:
    `virtfleet images lock` downloads it once and pins what it got.

    name    unique image name, `[a-z0-9][a-z0-9-]{0,62}`.
    url     `http://` or `https://` source.
    format  `Qcow2` (default) or `Raw`.
-}
let ImageFormat = ./ImageFormat.dhall

in  { Type = { name : Text, url : Text, format : ImageFormat }
    , default.format = ImageFormat.Qcow2
    }
