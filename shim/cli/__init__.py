"""The command containerd runs (`start`, `delete`, `-v`, `-info`) and the node commands beside them."""
