"""The plain Python forms host functions take and return, independent of wasmtime-py's guesswork.

wasmtime-py 50 spells a WIT ``result``/``variant``/``option`` either "tagged" (``Variant(tag, payload)``) or
"untagged" (the bare payload, ``None`` for an empty case), chosen by whether the cases' Python classes overlap
(wasmtime-py wasmtime/component/_types.py ``VariantLikeType._tagged``): ``result<_, stream-error>`` is
``Variant("ok")`` but ``result<_, header-error>`` is ``None``. Host code written against that rule breaks whenever a
WIT type changes shape, so host functions here see and return one fixed form instead, and ``runtime.host.adapt``
converts at the boundary, driven by the real types:

=========================  ==============================================================================
WIT type                   form a host function sees / returns
=========================  ==============================================================================
``result<T, E>``           ``Ok(value)`` / ``Err(value)`` (``value`` None when the case has no payload)
``variant``                ``Variant(tag, payload)`` always (payload None when the case has none)
``option<T>``              ``None`` / the value; ``Some(value)`` only when T is itself an option
``record``                 a ``dict`` keyed by the WIT field names (``{"seconds": 1, "nanoseconds": 0}``)
``own<R>`` / ``borrow<R>`` parameters: the host rep (an int, a key of the request's ResourceTable);
                           results: a ``ResourceHost`` (``ctx.new(kind, obj)`` makes one)
enum / flags               ``str`` / ``set[str]``
list<u8> / string / ints   ``bytes`` / ``str`` / ``int``; other lists and tuples as ``list`` / ``tuple``
=========================  ==============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from wasmtime.component import Variant

__all__ = ["Ok", "Err", "Some", "Variant", "OK_EMPTY"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ok(Generic[T]):
    value: T = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Err(Generic[T]):
    value: T = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Some(Generic[T]):
    """The present case of an ``option<option<T>>`` (the only place where None alone would be ambiguous)."""

    value: T


#: Shared instances for the hottest return values (no allocation per call).
OK_EMPTY: Ok[Any] = Ok(None)
