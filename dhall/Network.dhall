{-| The network a machine's first NIC joins.

    `Libvirt "default"` a libvirt-managed network, by name.
    `Bridge "br0"`      an existing host bridge.
-}
< Libvirt : Text | Bridge : Text >
