{-| The on-disk format of a downloaded base image. -}
< Qcow2 | Raw >
