"""`containerd-shim-spin-v2 install`: putting the shim on a node and registering it with containerd."""
