"""ComponentExecutor: one ``wasi:http/incoming-handler@0.2.x`` component serving requests (contract.Executor).

Per executor (built once per worker process, after fork): the import check (every missing import named, so a bad
app fails at task Create), one Linker of Python host functions, the export index of ``handle``. Per request, as
Spin does: a fresh Store (memory limit, epoch deadline from the request's deadline) and instance, a fresh
RequestContext and resource table, ``handle(incoming-request, response-outparam)``, and then the outcome:

=========================================  ============================================================
what happened                              what the server is told
=========================================  ============================================================
response set, body finished (or never      nothing: the response went through the sink
asked for)
trap / host error before the response      GuestFailure(500), log ``spin: <id>: trap: <reason>``
deadline passed (epoch or a host wait)     GuestFailure(504)
instance over its memory limit             GuestFailure(500) saying so
handle returned without setting one        GuestFailure(500)
any failure after ``sink.start``           GuestFailure: the server aborts the connection
=========================================  ============================================================

Nothing survives a request: the table is emptied, cleanups run (outbound connections, file descriptors), and the
Store is closed at once rather than left to the garbage collector (its instance holds the guest's whole linear
memory, tens of MB for Python guests).

Timing: with the ``runtime.host.executor`` logger at DEBUG each request logs store/instantiate/handle/cleanup in
microseconds; otherwise no clock is read beyond what the deadline needs.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING

import wasmtime
from wasmtime.component import Component

from runtime.epoch import EpochTicker

from runtime.errors import WasmLoadError
from runtime.exits import error_reason, failure_line, write_stderr_line
from runtime.host import marshal
from runtime.host.context import ComponentHost, RequestContext, bound
from runtime.host.linking import build_linker, check_imports, describe_exception
from runtime.host.registry import REGISTRY, Registry
from runtime.host.traps import GuestExit
from runtime.host.wasi.http import IncomingExchange, exchange_of, new_incoming_request, new_response_outparam
from runtime.host.wasi.io import DeadlineExceeded
from runtime.http.contract import GuestFailure

if TYPE_CHECKING:
    from runtime.http.contract import ComponentConfig, RequestBody, RequestHead, ResponseSink

log = logging.getLogger(__name__)

_INCOMING_HANDLER = re.compile(r"^wasi:http/incoming-handler@0\.2\.\d+$")


#: wasmtime builds a module's copy-on-write memory image (a sealed memfd) at its first instantiation. Sealing fails
#: with EBUSY while the kernel transiently pins the memfd's pages; seen once in a full CI run on a loaded machine.
#: The image is not cached on failure, so another attempt builds it anew.
_MEMFD_SEAL_ERROR = "cannot add seals to the memfd"
_TRIAL_ATTEMPTS = 3


class _TransientImageError(Exception):
    """The memory image could not be sealed this time; worth another attempt."""


class ComponentExecutor:
    def __init__(
        self,
        config: ComponentConfig,
        component: Component,
        engine: wasmtime.Engine,
        *,
        ticker: EpochTicker | None = None,
        registry: Registry = REGISTRY,
        fast_marshalling: bool = True,
    ) -> None:
        # Before the Linker exists: add_func binds wasmtime-py's trampoline when it is called.
        marshal.install(speed=fast_marshalling)
        self.component_id = config.id
        self.config = config
        self.component = component
        self.engine = engine
        self.ticker = ticker or EpochTicker.shared(engine)
        self.host = ComponentHost(config)
        self.handle_index = self._find_handle(component, engine)
        self.plan = check_imports(component, engine, config, registry)
        self.linker = build_linker(engine, self.plan)
        self._trial_instantiate()

    def _trial_instantiate(self) -> None:
        """Instantiate once in a throwaway Store, so that what only instantiation checks fails at load.

        That is the memory limit (a guest whose initial memory exceeds SPIN_MAX_INSTANCE_MEMORY) and any link
        error our import plan cannot see. No guest code runs: WASI toolchains emit no start functions (as in
        runtime.guest); it costs about a millisecond.
        """
        for attempt in range(_TRIAL_ATTEMPTS):
            try:
                self._instantiate_once()
                return
            except _TransientImageError:
                if attempt + 1 == _TRIAL_ATTEMPTS:
                    raise WasmLoadError(f"{self.component_id}: cannot instantiate: {_MEMFD_SEAL_ERROR}") from None
                log.warning("%s: %s; trying again", self.component_id, _MEMFD_SEAL_ERROR)
                time.sleep(0.05 * (attempt + 1))

    def _instantiate_once(self) -> None:
        store = wasmtime.Store(self.engine)
        if self.config.max_instance_memory is not None:
            store.set_limits(memory_size=self.config.max_instance_memory)
        store.set_epoch_deadline(2**62)
        try:
            self.linker.instantiate(store, self.component)
        except wasmtime.WasmtimeError as exc:
            reason = error_reason(str(exc))
            if _MEMFD_SEAL_ERROR in reason:
                raise _TransientImageError from None
            if "exceeds memory limits" in reason:
                raise WasmLoadError(
                    f"{self.component_id}: needs more linear memory than the per-instance limit of "
                    f"{self.config.max_instance_memory} bytes (SPIN_MAX_INSTANCE_MEMORY): {reason}"
                ) from None
            raise WasmLoadError(f"{self.component_id}: cannot instantiate: {reason}") from None
        finally:
            store.close()

    def _find_handle(self, component: Component, engine: wasmtime.Engine) -> object:
        exports = list(component.type.exports(engine))
        interface = next((name for name in exports if _INCOMING_HANDLER.match(name)), None)
        if interface is None:
            raise WasmLoadError(
                f"{self.component_id}: not an HTTP component: it exports {', '.join(exports) or 'nothing'}, "
                "not wasi:http/incoming-handler@0.2.x (a WASIp3 component built with spin-sdk >= 4 cannot run here)"
            )
        interface_index = component.get_export_index(interface)
        handle_index = component.get_export_index("handle", interface_index) if interface_index is not None else None
        if handle_index is None:
            raise WasmLoadError(f"{self.component_id}: {interface} has no `handle` function")
        return handle_index

    # ------------------------------------------------------------------------------------------------ a request

    def handle(self, head: RequestHead, body: RequestBody, sink: ResponseSink) -> None:
        with self.ticker.running():  # the epoch moves only while some guest call is in flight
            self._handle(head, body, sink)

    def _handle(self, head: RequestHead, body: RequestBody, sink: ResponseSink) -> None:
        timing = log.isEnabledFor(logging.DEBUG)
        t0 = time.perf_counter() if timing else 0.0
        remaining = head.deadline - time.monotonic()
        if remaining <= 0:
            raise GuestFailure(504, "Gateway Timeout", f"spin: {self.component_id}: timeout: no time left to start")
        ctx = RequestContext(self.host, head=head, body=body, sink=sink, deadline=head.deadline)
        store = wasmtime.Store(self.engine)
        if self.config.max_instance_memory is not None:
            store.set_limits(memory_size=self.config.max_instance_memory)
        # Before instantiate: instantiation runs guest code paths that check the deadline too (a Store with no
        # deadline set traps as soon as instantiation runs guest code).
        store.set_epoch_deadline(self.ticker.ticks_for(remaining))
        failure: Exception | None = None
        t1 = t2 = t3 = t0
        with bound(ctx):
            try:
                t1 = time.perf_counter() if timing else 0.0
                instance = self.linker.instantiate(store, self.component)
                t2 = time.perf_counter() if timing else 0.0
                func = instance.get_func(store, self.handle_index)  # type: ignore[arg-type]
                if func is None:
                    raise WasmLoadError(f"{self.component_id}: the handle export is not a function")
                request = new_incoming_request(ctx, head, body)
                outparam = new_response_outparam(ctx, sink)
                func(store, request, outparam)
            except Exception as exc:  # noqa: BLE001 - traps, host errors, and wasmtime-py conversion errors alike
                failure = exc
            finally:
                t3 = time.perf_counter() if timing else 0.0
                self._end_request(ctx, store)
        try:
            self._outcome(ctx, failure)
        finally:
            if timing:
                t4 = time.perf_counter()
                log.debug(
                    "%s %s %s: store %.0f us, instantiate %.0f us, handle %.0f us, cleanup %.0f us",
                    self.component_id, head.method, head.target,
                    (t1 - t0) * 1e6, (t2 - t1) * 1e6, (t3 - t2) * 1e6, (t4 - t3) * 1e6,
                )

    def _end_request(self, ctx: RequestContext, store: wasmtime.Store) -> None:
        ctx.table.clear()
        for cleanup in ctx.cleanups:
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - cleanup must finish for every resource
                log.debug("%s: request cleanup failed: %s", self.component_id, exc)
        ctx.cleanups.clear()
        store.close()
        for note in ctx.notes:
            write_stderr_line(f"spin: {self.component_id}: {note}")

    # ------------------------------------------------------------------------------------------------ outcome

    def _outcome(self, ctx: RequestContext, failure: Exception | None) -> None:
        exchange = exchange_of(ctx)
        started = exchange is not None and exchange.started
        host_failure = ctx.host_failure
        if failure is None and host_failure is None:
            self._check_response(exchange)
            return
        if isinstance(host_failure, GuestExit) and host_failure.status == 0 and exchange is not None:
            if exchange.started and (exchange.finished or (exchange.response and exchange.response.body is None)):
                if not exchange.finished:
                    exchange.finish(None)
                return  # exit(0) after a complete response: the guest is done, nothing failed
        status, public, line = self._classify(ctx, failure, host_failure)
        if exchange is not None and exchange.finished:
            # The whole response reached the sink before the guest failed: the client has its answer, so the
            # failure is only logged (as Spin does), never turned into an abort of a complete response.
            write_stderr_line(line + " (after the response was complete)")
            return
        if started:
            raise GuestFailure(status, public, line + " (after the response started)")
        raise GuestFailure(status, public, line)

    def _check_response(self, exchange: IncomingExchange | None) -> None:
        cid = self.component_id
        if exchange is None or exchange.response is None:
            if exchange is not None and exchange.error is not None:
                code = exchange.error
                detail = f"{code.tag}({code.payload})" if code.payload is not None else code.tag
                raise GuestFailure(500, "Internal Server Error", f"spin: {cid}: error: the guest answered with error-code {detail}")
            raise GuestFailure(500, "Internal Server Error", f"spin: {cid}: error: the handler returned without setting a response")
        if exchange.broken is not None:
            raise GuestFailure(500, "Internal Server Error", f"spin: {cid}: error: {exchange.broken} (after the response started)")
        if not exchange.finished:
            if exchange.response.body is None:
                exchange.finish(None)  # the guest never asked for a body: the response has an empty one
                return
            raise GuestFailure(
                500, "Internal Server Error",
                f"spin: {cid}: error: the handler returned without finishing the response body (after the response started)",
            )

    def _classify(self, ctx: RequestContext, failure: Exception | None, host_failure: BaseException | None) -> tuple[int, str, str]:
        cid = self.component_id
        message = str(failure) if failure is not None else ""
        if isinstance(host_failure, DeadlineExceeded) or (
            "interrupt" in error_reason(message) and time.monotonic() >= ctx.deadline - 2 * self.ticker.interval
        ):
            return 504, "Gateway Timeout", f"spin: {cid}: timeout: the request ran past its deadline"
        if "exceeds memory limits" in message or "memory limit" in message:
            limit = self.config.max_instance_memory
            return 500, "Internal Server Error", f"spin: {cid}: error: the instance hit its memory limit ({limit} bytes)"
        if isinstance(host_failure, GuestExit):
            return 500, "Internal Server Error", f"spin: {cid}: error: {host_failure} before completing a response"
        if host_failure is not None:
            return 500, "Internal Server Error", f"spin: {cid}: error: {describe_exception(host_failure)}"
        line = failure_line(cid, message)
        limit = self.config.max_instance_memory
        if limit is not None and ": trap: " in line:
            # A memory.grow past the limit returns -1 to the guest, which then usually traps; wasmtime's C API
            # tells the host neither the Store's memory size nor that a grow failed, so say it as a possibility.
            line += f" (if the guest ran out of memory: its limit is {limit} bytes)"
        return 500, "Internal Server Error", line
