"""Provider package: WASI 0.2.x and wasi:http 0.2.x in Python, registered in runtime.host.registry.REGISTRY."""
