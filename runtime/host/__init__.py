"""The Python host of ``wasi:http/incoming-handler@0.2.x`` components (Spin 2/3 HTTP apps).

wasmtime-py cannot create incoming wasi:http requests with its built-in (Rust) WASI (``Linker.add_wasi_http`` adds
only wasi:http/types and outgoing-handler: wasmtime-py wasmtime/component/_linker.py), and Python resources cannot
be mixed with it (a Python function cannot return wasmtime-wasi's own stream type: "mismatched resource types"), so
everything such a component imports is implemented here in Python:

* ``registry``  which Python code serves which imported interface (the provider hook; read its docstring);
* ``linking``   imports -> Linker, and ``check_imports`` (every missing import named at task Create);
* ``adapt``     wasmtime-py value forms <-> the fixed forms of ``values``, generated from the WIT types;
* ``context``   the per-request state host functions see; ``table`` its resource table; ``traps`` HostTrap;
* ``marshal``   the wasmtime-py 50.0.1 monkeypatches (``install()`` once per process);
* ``wasi``      the provider package for WASI p2 + wasi:http (io, http, cli, clocks, random, filesystem, sockets);
* ``executor``  ComponentExecutor (contract.Executor); its epoch ticker is runtime.epoch's.
"""
