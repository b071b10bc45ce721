"""A plain record type for the `start` path: what @dataclass gives, without importing dataclasses, which pulls in
inspect (~9 ms of every `start`, measured with `python -X importtime`). Fields are the class's annotations, in
order; a class attribute is the field's default (a dict or list default is copied per record), none means
required."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~5 ms of every `start`; annotations only need it for checkers
if TYPE_CHECKING:
    from typing import Any


class Record:
    __slots__ = ()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            names.extend(name for name in vars(klass).get("__annotations__", {}) if name not in names)
        return tuple(names)

    def __init__(self, **values: Any) -> None:
        for name in self.field_names():
            if name in values:
                value = values.pop(name)
            elif hasattr(type(self), name):
                default = getattr(type(self), name)
                value = type(default)(default) if isinstance(default, (dict, list)) else default
            else:
                raise TypeError(f"{type(self).__name__}: missing field {name!r}")
            object.__setattr__(self, name, value)
        if values:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(values)}")

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.field_names()}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.as_dict() == self.as_dict()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.as_dict().items())})"
