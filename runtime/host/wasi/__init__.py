"""Provider package: WASI 0.2.x and wasi:http 0.2.x in Python, registered in runtime.host.registry.REGISTRY.

Importing the package registers every interface (the registry imports it on first use).
"""

from runtime.host.wasi import cli, filesystem, http, io, outgoing, sockets  # noqa: F401  (they register on import)
