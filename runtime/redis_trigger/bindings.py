"""``fermyon:spin/redis-types`` (unversioned): the types of ``fermyon:spin/inbound-redis`` (``payload``, ``error``).

It declares no function, but a component exporting inbound-redis imports it (spin-sdk 3's ``spin-redis`` and
``spin-all`` worlds do, so the HTTP component of a ``spin-all`` build imports it too), and the load-time import
check refuses an import nobody serves. runtime.loader adds this module as a provider package for apps with a
Redis trigger only, so a pure http app's start imports nothing new; the cost of that is that an http-only app
built for ``spin-all`` is refused at Create (missing import fermyon:spin/redis-types). Moving this one
``REGISTRY.interface`` line into runtime.spin.bindings (imported by every app) would serve it for all apps.
"""

from __future__ import annotations

from runtime.host.registry import REGISTRY

redis_types = REGISTRY.interface("fermyon:spin/redis-types", versions=("",))
