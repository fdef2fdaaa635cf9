{-| Which libvirt domain type a host runs guests with.

    `Kvm`  hardware virtualisation (the normal choice on bare metal).
    `Qemu` pure software emulation (TCG): slow, but boots anywhere, including
           nested hosts whose KVM cannot boot Linux guests.
-}
< Kvm | Qemu >
