"""The long-lived shim daemon: its arguments, its event loop and its log."""
