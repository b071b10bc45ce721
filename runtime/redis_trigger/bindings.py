"""``fermyon:spin/redis-types`` (unversioned): the types of ``fermyon:spin/inbound-redis`` (``payload``, ``error``).

It declares no function, but a component exporting inbound-redis imports it (spin-sdk 3's ``spin-redis`` and
``spin-all`` worlds do, so the HTTP component of a ``spin-all`` build imports it too), and the load-time import
check refuses an import nobody serves. Registered through ``REGISTRY.add_provider_package`` by runtime.loader,
so it is imported only when the registry is first asked for an interface, as the other provider packages are.
"""

from __future__ import annotations

from runtime.host.registry import REGISTRY

redis_types = REGISTRY.interface("fermyon:spin/redis-types", versions=("",))
