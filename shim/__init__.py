"""containerd's side of the shim. Only the shim's identity lives here: every `start` imports this package, so it
holds constants and imports nothing.

Sub-packages by concern: `cli` (the command containerd runs), `daemon` (the long-lived process), `service` (the
Task API and its tasks), `wasm` (a Wasm task's instance process and sandbox), `runc` (native tasks), `process` (the
daemon's children: exits, stdio, terminals), `kernel` (syscalls, cgroups, mount options), `ttrpc`, `forkserver`,
`install` (the node installer).
"""

#: The runtime type containerd's config names (`runtime_type`) and what `-v` and `-info` report.
RUNTIME_NAME = "io.containerd.spin.v2"
VERSION = "0.1.0"
