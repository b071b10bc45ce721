"""Linux interfaces the shim drives directly: syscalls Python lacks, cgroups, mount options."""
