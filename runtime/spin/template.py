"""Spin's ``{{ name }}`` templates (spin crates/expressions ``Template``), and its variable-name rule.

Used by component ``variables`` values and by ``allowed_outbound_hosts`` entries. Pure text in, parts out.
The syntax is Spin's: literal text and ``{{ expr }}`` parts, the expression trimmed; there is no escape for
``{{`` (Spin has none), an unclosed ``{{`` is an error, a lone ``}}`` is literal text. The only expression
form is a variable name (Spin's expression language has no other).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class TemplateError(ValueError):
    """A malformed template or variable name; ``str()`` says what is wrong (never a resolved value)."""


@dataclass(frozen=True)
class Literal:
    text: str


@dataclass(frozen=True)
class Reference:
    #: The variable name between the braces, trimmed.
    name: str


TemplatePart = Literal | Reference


@dataclass(frozen=True)
class Template:
    #: The text as written (for messages: it holds no resolved value, so it is safe to show).
    source: str
    parts: tuple[TemplatePart, ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        parts: list[TemplatePart] = []
        rest = source
        while rest:
            if rest.startswith("{{"):
                expression, closed, after = rest[2:].partition("}}")
                if not closed:
                    raise TemplateError(f"unclosed '{{{{' in template {source!r} (write '{{{{ name }}}}')")
                name = expression.strip()
                try:
                    check_variable_name(name)
                except TemplateError as exc:
                    raise TemplateError(f"template {source!r}: {{{{ {name} }}}}: {exc}") from None
                parts.append(Reference(name))
                rest = after
            else:
                end = rest.find("{{")
                end = len(rest) if end < 0 else end
                parts.append(Literal(rest[:end]))
                rest = rest[end:]
        return cls(source=source, parts=tuple(parts))

    @property
    def is_literal(self) -> bool:
        return all(isinstance(p, Literal) for p in self.parts)

    @property
    def references(self) -> tuple[str, ...]:
        """Variable names used, in order of first use."""
        return tuple(dict.fromkeys(p.name for p in self.parts if isinstance(p, Reference)))

    def render(self, value_of: Callable[[str], str]) -> str:
        return "".join(p.text if isinstance(p, Literal) else value_of(p.name) for p in self.parts)


def check_variable_name(name: str) -> None:
    """Spin's variable key rule (spin-expressions ``Key::new``); raises TemplateError saying which part fails.

    The same rule applies to application variables, component variable keys and the names a guest asks for.
    """
    if not name:
        raise TemplateError("a variable name must not be empty")
    bad = next((c for c in name if not (c == "_" or ("a" <= c <= "z") or c.isdigit() and c.isascii())), None)
    if bad is not None:
        raise TemplateError(
            f"invalid character {bad!r} in variable name {name!r}: names may contain only lower-case letters, "
            "digits and '_'"
        )
    if not ("a" <= name[0] <= "z"):
        raise TemplateError(f"variable name {name!r} must start with a lower-case letter")
    if name[-1] == "_":
        raise TemplateError(f"variable name {name!r} must end with a lower-case letter or digit")
    if "__" in name:
        raise TemplateError(f"variable name {name!r} must not contain consecutive underscores")
