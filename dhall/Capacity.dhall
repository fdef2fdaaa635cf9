{-| What a host can give its machines. virtfleet refuses a fleet that asks more
    CPUs of one machine, or more memory of all machines together, than this.
-}
{ cpus : Natural, memoryMiB : Natural }
