"""Spin interfaces that declare types and no function, which components import because their world does.

``fermyon:spin/redis-types`` (unversioned: ``payload``, ``error`` of inbound-redis): every component of spin-sdk 3's
``spin-redis`` and ``spin-all`` worlds imports it, an HTTP-only ``spin-all`` build too. ``fermyon:spin/rdbms-types``
(``@2.0.0``: the values of the MySQL and PostgreSQL 2.0.0 APIs, runtime.spin.rdbms_types).
``spin:mqtt-trigger/spin-mqtt-types`` (unversioned: spin-trigger-mqtt's p2 world, which one wasm may also serve
HTTP with). The load-time import
check refuses an import nobody serves, so each is registered here with nothing to link: a few microseconds at the
registry's first use, for every app.
"""

from __future__ import annotations

from runtime.host.registry import REGISTRY

redis_types = REGISTRY.interface("fermyon:spin/redis-types", versions=("",))
rdbms_types = REGISTRY.interface("fermyon:spin/rdbms-types", versions=("2.0.0",))
mqtt_trigger_types = REGISTRY.interface("spin:mqtt-trigger/spin-mqtt-types", versions=("",))
