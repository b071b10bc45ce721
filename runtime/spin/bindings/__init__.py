"""Spin's host interfaces for components, as Python providers of runtime.host's registry.

Importing this package registers them (runtime.host.registry imports it on first use): ``variables``
(``fermyon:spin/variables@2.0.0``), ``config`` (``wasi:config/store``), ``key_value``
(``fermyon:spin/key-value@2.0.0``), ``wasi_keyvalue`` (``wasi:keyvalue/{store,atomics,batch}@0.2.0-draft2``),
``sqlite`` (``fermyon:spin/sqlite@2.0.0``, ``spin:sqlite/sqlite@3.0.0``), ``redis`` (``fermyon:spin/redis@2.0.0``,
outbound), ``mysql`` (``fermyon:spin/mysql@2.0.0``, outbound; rdbms-types' values from runtime.spin.rdbms_types),
``postgres`` (``spin:postgres/postgres@4.0.0`` and ``@3.0.0``, ``fermyon:spin/postgres@2.0.0``, outbound),
``mqtt`` (``fermyon:spin/mqtt@2.0.0``, outbound publish), all backed by the app's SpinServices
(runtime.spin.services, reached as ``ctx.component.services``); ``types_only`` (``fermyon:spin/redis-types``,
``fermyon:spin/rdbms-types@2.0.0``: types a world imports, no function); and
``deny``: the Spin interfaces an SDK imports but this shim does not back, answered with the interface's own error
value so a guest that merely imports them runs, and one that calls them gets an error it can handle instead of a
trap.
"""

from runtime.spin.bindings import (  # noqa: F401
    config, deny, key_value, mqtt, mysql, postgres, redis, sqlite, types_only, variables, wasi_keyvalue,
)
