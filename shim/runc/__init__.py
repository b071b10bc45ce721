"""A native task (the CRI pause container, sidecars) run by the node's runc."""
