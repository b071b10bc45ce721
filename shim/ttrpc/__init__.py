"""Our ttrpc (containerd's lightweight RPC over unix sockets): codec, server, client.

No PyPI package implements ttrpc, so the shim carries its own, mirroring ttrpc-go [TT]. The
package is split like h11: `codec` (frames and envelopes, pure, no I/O) and `status` (codes and
the RpcError family) hold every protocol rule; `server` and `client` are thin asyncio shells.
This __init__ imports nothing, so `import shim.ttrpc.codec` never pulls in asyncio.
"""
