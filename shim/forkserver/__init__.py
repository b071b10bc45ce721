"""The node's warm fork server: one long-lived process per shim build that has imported the daemon and the
runtime once, and forks each pod's daemon on `start`'s request (README, "Behaviour as containerd and its users see it").

`start` (shim/cli/start.py) binds the daemon's socket as before and asks the server over a root-only unix socket
(client.py); the server forks a daemon that takes on exactly the context `start` had (adopt.py: environment,
cwd, umask, rlimits, cgroup, OOM score, argv) and serves the socket it was handed. When the server is missing,
of another build (build_key.py), refuses or fails before it took the socket, `start` forks the daemon itself as
it always did, and starts a server for the next start.
"""
