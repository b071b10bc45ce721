"""Spin's host services for an app, as containerd-shim-spin provides them.

``outbound`` (allowed_outbound_hosts), ``variables`` (application and component variables from the task env),
``key_value`` (sqlite-backed key-value stores), ``runtime_config`` (``/runtime-config.toml``) and ``services``
(the per-app facade built at load, validated so that errors fail task Create). Pure of wasmtime; the wasm
bindings live in ``runtime.spin.bindings``.
"""
