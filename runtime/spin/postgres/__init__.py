"""Spin's outbound PostgreSQL (factor-outbound-pg): a guest's connections to a PostgreSQL server it may reach.

Served to the guest by runtime.spin.bindings.postgres as ``spin:postgres/postgres@4.0.0`` (and 3.0.0) and
``fermyon:spin/postgres@2.0.0``. The modules, from the guest's address to the server's bytes:

- ``address``: connection strings (URL and key/value forms), the allowed_outbound_hosts check, password masking;
- ``client``: PgConnection, one open connection: connecting (TLS per sslmode), query/execute, deadlines, limits;
- ``wire``: the protocol over pg8000's core, imported only when a guest opens a connection;
- ``codec``: binary wire formats <-> v4 values (pure);
- ``errors``: PgError, the v4 error shape.
"""
