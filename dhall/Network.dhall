{-| The network a machine's first NIC joins.

    `Libvirt "default"` a libvirt-managed network, by name.
    `Bridge "br0"`      an existing host bridge.
    `User`              QEMU user-mode networking: outbound only, needs no host
                        setup (handy for tests and throwaway machines).
-}
< Libvirt : Text | Bridge : Text | User >
