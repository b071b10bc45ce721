"""containerd's Task service and the tasks it keeps: state machines, exec processes, events, bundle state."""
