{-| The guest CPU model a host gives its machines.

    `HostPassthrough` the host CPU as it is (fastest; blocks live migration to other CPUs).
    `HostModel`       libvirt's closest named model to the host CPU.
    `Model "name"`    a named QEMU model, e.g. `Model "Haswell-noTSX"`.
    `Default`         no <cpu> element: the hypervisor's default model.
-}
< HostPassthrough | HostModel | Model : Text | Default >
