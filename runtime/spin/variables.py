"""Spin variables: application variables resolved through Spin's env providers, component variables from templates.

What a guest reads through ``fermyon:spin/variables`` and ``wasi:config/store`` is a *component* variable (the
component's ``variables = { key = "text {{ app_var }} text" }`` table); its template names *application*
variables (``[variables]``), whose values come from providers, first match wins, as Spin and
containerd-shim-spin configure them:

1. the runtime config's ``type = "env"`` providers (``[[variables_provider]]`` / ``[[config_provider]]``), in
   file order; each looks up ``<prefix>_<NAME>`` (prefix default ``SPIN_VARIABLE``, the name upper-cased, joined
   with ``_`` exactly as Spin's ``crates/variables-env`` does, so spin-operator's ``prefix = "SPIN_VARIABLE_"``
   looks up ``SPIN_VARIABLE__<NAME>``) in the task's environment, then in its dotenv file;
2. Spin's default env provider, which Spin always appends: ``SPIN_VARIABLE_<NAME>`` in the task's environment
   (Spin's default provider also reads ``.env`` from its working directory; that is not done here: it would
   make a stray ``/.env`` in an image a source of variables, and no runtime config asked for it);
3. the variable's ``default`` from spin.toml.

containerd-shim-spin also copies ``<NAME>`` from the container's environment to ``SPIN_VARIABLE_<NAME>`` before
Spin starts (``utils.rs``, ``configure_application_variables_from_environment_variables``), so wherever a
provider looks up ``SPIN_VARIABLE_<NAME>`` a plain ``<NAME>`` in the task env answers too (after the prefixed
one, as this shim has always ordered them).

A variable with neither a value nor a default is missing; ``check_required`` fails the load for it (Spin's
startup validation resolves every variable), naming the env vars that would set it. Values are never part of a
message, a log line or a repr, because ``secret = true`` variables hold secrets (and only the app knows which
non-secret ones do too); a dotenv syntax error names the line, never its text.

Pure: manifest model, an env mapping and the runtime config's provider specs (dotenv text already read) in,
strings out. Dotenv files are parsed once at load; values are resolved per call (a few dict lookups and a join;
nothing to cache), and neither env nor dotenv can change while the task lives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from runtime.errors import AppError, ManifestError
from runtime.manifest import Manifest, Variable
from runtime.spin.runtime_config import EnvVariablesProviderSpec, RuntimeConfigError
from runtime.spin.template import Reference, Template, TemplateError, check_variable_name

#: The case names of Spin's ``fermyon:spin/variables@2.0.0`` ``error`` variant.
VariableErrorKind = Literal["invalid-name", "undefined", "provider", "other"]

#: Spin's ``DEFAULT_ENV_PREFIX`` (crates/variables-env); joined to the name with ``_``.
DEFAULT_ENV_PREFIX = "SPIN_VARIABLE"
ENV_PREFIX = DEFAULT_ENV_PREFIX + "_"


class VariableError(Exception):
    """A guest's request for a variable failed; ``kind`` is the WIT error case, ``str()`` its payload."""

    def __init__(self, kind: VariableErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: VariableErrorKind = kind
        self.message = message


class MissingVariablesError(AppError):
    """Variables without a value or a default at load; the message names them and the env vars that set them."""


def _upper(name: str) -> str:
    """Spin's ``to_ascii_uppercase`` (str.upper would also fold non-ASCII letters)."""
    return "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in name)


@dataclass(frozen=True)
class EnvProvider:
    """One of Spin's env variables providers, its dotenv file (if any) parsed."""

    prefix: str = DEFAULT_ENV_PREFIX
    #: The dotenv file's variables (env-var names -> values). Kept out of repr: they are secrets.
    dotenv: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Where the dotenv values came from, for messages (``dotenv_path`` as written); None = no dotenv file.
    dotenv_source: str | None = None

    @classmethod
    def from_spec(cls, spec: EnvVariablesProviderSpec, env: Mapping[str, str]) -> EnvProvider:
        """Parse the spec's dotenv text (``$VAR`` substituted from ``env`` first, as dotenvy reads the process
        env); raises RuntimeConfigError naming the runtime config, the provider, the file and the line."""
        prefix = DEFAULT_ENV_PREFIX if spec.prefix is None else spec.prefix
        if spec.dotenv_text is None:
            return cls(prefix, {}, spec.dotenv_path if spec.dotenv_file is not None else None)
        try:
            values = parse_dotenv(spec.dotenv_text, env)
        except DotenvSyntaxError as exc:
            raise RuntimeConfigError(f"{spec.where}: dotenv_path {spec.dotenv_path!r} ({spec.dotenv_file}): {exc}"
                                     ) from None
        return cls(prefix, values, spec.dotenv_path)

    def env_key(self, name: str) -> str:
        """The env var (and dotenv key) this provider reads for application variable ``name``."""
        return f"{self.prefix}_{_upper(name)}"


#: Spin's default provider, always tried after the configured ones.
DEFAULT_PROVIDER = EnvProvider()


def env_names(name: str, providers: Sequence[EnvProvider] = (DEFAULT_PROVIDER,)) -> tuple[str, ...]:
    """The task env vars that set application variable ``name``, in the order they are tried."""
    names: list[str] = []
    plain_alias = f"{ENV_PREFIX}{_upper(name)}"
    for provider in providers:
        key = provider.env_key(name)
        for candidate in (key, _upper(name)) if key == plain_alias else (key,):
            if candidate not in names:
                names.append(candidate)
    return tuple(names)


@dataclass(frozen=True)
class VariableResolver:
    """Resolves an app's variables for its components. Built once per app at load; safe to share across threads."""

    app_variables: Mapping[str, Variable]
    #: component id -> component variable key -> parsed template.
    component_templates: Mapping[str, Mapping[str, Template]]
    #: The task's environment. Kept out of repr: it holds the secret values.
    env: Mapping[str, str] = field(repr=False)
    #: For messages, e.g. the manifest path.
    where: str = "spin.toml"
    #: The providers in the order they are tried: the runtime config's, then Spin's default one.
    providers: tuple[EnvProvider, ...] = (DEFAULT_PROVIDER,)

    @classmethod
    def from_manifest(
        cls,
        manifest: Manifest,
        env: Mapping[str, str],
        providers: Sequence[EnvVariablesProviderSpec] = (),
    ) -> VariableResolver:
        """Parse every component's variable templates and the providers' dotenv files now; raises ManifestError for
        a bad key or template, RuntimeConfigError for a bad dotenv file. ``providers`` are the runtime config's
        (none = only Spin's default env provider, which is appended either way)."""
        where = str(manifest.path)
        templates: dict[str, dict[str, Template]] = {}
        for component in manifest.components.values():
            parsed: dict[str, Template] = {}
            for key, text in component.variables.items():
                prefix = f"{where}: component {component.id!r}: variable {key!r}"
                try:
                    check_variable_name(key)
                    template = Template.parse(text)
                except TemplateError as exc:
                    raise ManifestError(f"{prefix}: {exc}") from None
                for name in template.references:
                    if name not in manifest.variables:
                        declared = ", ".join(sorted(manifest.variables)) or "none"
                        raise ManifestError(
                            f"{prefix} = {text!r} refers to application variable {name!r}, which is not declared "
                            f"(add [variables] {name} = {{ default = \"...\" }} or {{ required = true }}; "
                            f"declared: {declared})"
                        )
                parsed[key] = template
            templates[component.id] = parsed
        env = dict(env)
        chain = (*(EnvProvider.from_spec(spec, env) for spec in providers), DEFAULT_PROVIDER)
        return cls(app_variables=dict(manifest.variables), component_templates=templates, env=env, where=where,
                   providers=chain)

    # ------------------------------------------------------------------------------------------------ load checks

    def missing(self) -> tuple[str, ...]:
        """Application variables with no provider value and no default, in declaration order."""
        return tuple(name for name in self.app_variables if self._lookup(name) is None)

    def check_required(self) -> None:
        """Raise MissingVariablesError naming every variable that has no value (and how to set each)."""
        missing = self.missing()
        if not missing:
            return
        if len(missing) == 1:
            names, files = self._how(missing[0])
            how = f"set {names} in the container's environment" + (f", or {files}" if files else "")
        else:
            parts = []
            for name in missing:
                names, files = self._how(name)
                parts.append(f"{name}: {names}" + (f" (or {files})" if files else ""))
            how = "set in the container's environment: " + "; ".join(parts)
        plural = "s" if len(missing) > 1 else ""
        raise MissingVariablesError(
            f"{self.where}: required variable{plural} without a value: {', '.join(missing)} ({how})"
        )

    def _how(self, name: str) -> tuple[str, str]:
        """The env vars that would set ``name`` ("A or B") and the dotenv keys that would ("K in file", or "")."""
        files = [f"{p.env_key(name)} in {p.dotenv_source}" for p in self.providers if p.dotenv_source is not None]
        return " or ".join(env_names(name, self.providers)), " or ".join(files)

    # ------------------------------------------------------------------------------------------------ guest calls

    def app_value(self, name: str) -> str:
        """An application variable's value; VariableError("provider") when nothing provides one."""
        value = self._lookup(name)
        if value is None:
            if name not in self.app_variables:
                raise VariableError("undefined", f"no application variable {name!r}")
            names, files = self._how(name)
            raise VariableError(
                "provider",
                f"no provider resolved required variable {name!r} (set {names}" + (f", or {files}" if files else "")
                + ")",
            )
        return value

    def get(self, component_id: str, key: str) -> str:
        """The component's variable ``key``, as ``fermyon:spin/variables.get`` returns it."""
        try:
            check_variable_name(key)
        except TemplateError as exc:
            raise VariableError("invalid-name", str(exc)) from None
        template = self.component_templates.get(component_id, {}).get(key)
        if template is None:
            raise VariableError(
                "undefined",
                f"no variable for {component_id!r}.{key!r} (declare it in [component.{component_id}] variables)",
            )
        return self._render(template)

    def get_all(self, component_id: str) -> list[tuple[str, str]]:
        """Every variable of the component, resolved, in declaration order (``wasi:config/store.get-all``)."""
        return [(key, self._render(t)) for key, t in self.component_templates.get(component_id, {}).items()]

    def keys(self, component_id: str) -> tuple[str, ...]:
        return tuple(self.component_templates.get(component_id, {}))

    def _render(self, template: Template) -> str:
        return "".join(p.text if not isinstance(p, Reference) else self.app_value(p.name) for p in template.parts)

    def _lookup(self, name: str) -> str | None:
        variable = self.app_variables.get(name)
        if variable is None:
            return None
        for provider in self.providers:
            key = provider.env_key(name)
            # Spin's env provider: the process env first, then the provider's dotenv file.
            value = self._env_value(key, name)
            if value is None:
                value = provider.dotenv.get(key)
            if value is not None:
                return value
        return variable.default

    def _env_value(self, key: str, name: str) -> str | None:
        value = self.env.get(key)
        if value is None and key == f"{ENV_PREFIX}{_upper(name)}":
            value = self.env.get(_upper(name))  # containerd-shim-spin's <NAME> -> SPIN_VARIABLE_<NAME> copy
        return value


# ---------------------------------------------------------------------------------------------------- dotenv files


class DotenvSyntaxError(ValueError):
    """A dotenv file Spin's parser (dotenvy 0.15) would reject too; the message names the line, never its text."""


_DOTENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")

# Where a physical line leaves the scanner (dotenvy's QuotedLines): a value in quotes, or ending in a backslash,
# continues on the next line.
_COMPLETE, _ESCAPE, _STRONG, _STRONG_ESCAPE, _WEAK, _WEAK_ESCAPE, _COMMENT, _WHITESPACE = range(8)


def parse_dotenv(text: str, env: Mapping[str, str]) -> dict[str, str]:
    """Parse a dotenv file the way Spin reads one (dotenvy 0.15.7's ``from_path_iter``): ``KEY=value`` lines,
    optional ``export``, ``#`` comments, ``'literal'`` and ``"escaped"`` quoting (quoted values may span lines),
    ``$VAR`` / ``${VAR}`` substituted from ``env`` first, then from the file's earlier keys (unset = empty).
    A key given twice keeps its last value (Spin collects the pairs into a map).

    Two dotenvy quirks are not copied because no file means them: ``"...$VAR"`` (a substitution right before the
    closing quote; dotenvy keeps the quote as text and then fails the line as unterminated) closes the quote, and
    trailing blanks on the last line of a file without a final newline are ignored (dotenvy fails that line).
    A UTF-8 byte order mark is skipped. Raises DotenvSyntaxError.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    substitutions: dict[str, str | None] = {}
    values: dict[str, str] = {}
    for line_number, line in _logical_lines(text):
        parsed = _parse_line(line, line_number, substitutions, env)
        if parsed is not None:
            values[parsed[0]] = parsed[1]
    return values


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each logical line: physical lines joined while a quote or escape is open,
    a ``#`` comment after whitespace cut off, the line break removed."""
    physical = text.split("\n")
    if physical and physical[-1] == "":
        physical.pop()
    lines: list[tuple[int, str]] = []
    buffer = ""
    start = 0
    state = _COMPLETE
    for number, raw in enumerate(physical, start=1):
        chunk = raw + "\n" if number < len(physical) or text.endswith("\n") else raw
        if not buffer:
            start = number
            if chunk.lstrip().startswith("#"):
                lines.append((number, ""))
                continue
        cut, state = _scan(state, chunk)
        if state == _COMMENT:
            lines.append((start, buffer + chunk[:cut]))
        elif state == _COMPLETE or (state == _WHITESPACE and not chunk.endswith("\n")):
            lines.append((start, (buffer + chunk).removesuffix("\n").removesuffix("\r")))
        else:
            buffer += chunk
            continue
        buffer = ""
        state = _COMPLETE
    if buffer:
        raise DotenvSyntaxError(f"line {start}: a quoted value is not closed (or the file ends after a backslash)")
    return lines


def _scan(state: int, chunk: str) -> tuple[int, int]:
    """dotenvy's ``eval_end_state``: the state after ``chunk``, and where a comment starts when it found one."""
    for pos, c in enumerate(chunk):
        if state == _WHITESPACE:
            if c == "#":
                return pos, _COMMENT
            state = {"\\": _ESCAPE, '"': _WEAK, "'": _STRONG}.get(c, _COMPLETE)
        elif state == _ESCAPE:
            state = _COMPLETE
        elif state == _COMPLETE:
            if c.isspace() and c not in "\n\r":
                state = _WHITESPACE
            else:
                state = {"\\": _ESCAPE, '"': _WEAK, "'": _STRONG}.get(c, _COMPLETE)
        elif state == _WEAK:
            state = {"\\": _WEAK_ESCAPE, '"': _COMPLETE}.get(c, _WEAK)
        elif state == _WEAK_ESCAPE:
            state = _WEAK
        elif state == _STRONG:
            state = {"\\": _STRONG_ESCAPE, "'": _COMPLETE}.get(c, _STRONG)
        elif state == _STRONG_ESCAPE:
            state = _STRONG
    return len(chunk), state


def _parse_line(
    line: str, number: int, substitutions: dict[str, str | None], env: Mapping[str, str]
) -> tuple[str, str] | None:
    rest = line.rstrip().lstrip()
    if not rest or rest.startswith("#"):
        return None

    def key_at(text: str) -> tuple[str, str]:
        match = _DOTENV_KEY.match(text)
        if match is None:
            raise DotenvSyntaxError(f"line {number}: expected a variable name (letters, digits, '_', '.')")
        return match.group(), text[match.end():].lstrip()

    def after_equals(text: str) -> str:
        if not text.startswith("="):
            raise DotenvSyntaxError(f"line {number}: expected '=' after the variable name")
        return text[1:].lstrip()

    key, rest = key_at(rest)
    if key == "export" and not rest.startswith("="):
        key, rest = key_at(rest)
    rest = after_equals(rest)
    if not rest or rest.startswith("#"):
        substitutions[key] = None
        return key, ""
    value = _parse_value(rest, number, substitutions, env)
    substitutions[key] = value
    return key, value


def _parse_value(text: str, number: int, substitutions: dict[str, str | None], env: Mapping[str, str]) -> str:
    """dotenvy's ``parse_value``: quoting, backslash escapes and ``$`` substitution of one value."""
    out: list[str] = []
    strong = weak = escaped = expecting_end = False
    mode = ""  # "" | "$" (reading $NAME) | "{" (reading ${NAME})
    name: list[str] = []

    def substitute() -> None:
        var = "".join(name)
        name.clear()
        value = env.get(var)
        if value is None:
            value = substitutions.get(var) or ""
        out.append(value)

    for c in text:
        if expecting_end:
            if c == "#":
                break
            if c not in " \t":
                raise DotenvSyntaxError(
                    f"line {number}: unexpected text after a blank in the value (quote a value that has spaces)"
                )
        elif escaped:
            if c in "\\'\"$ ":
                out.append(c)
            elif c == "n":
                out.append("\n")
            else:
                raise DotenvSyntaxError(
                    f"line {number}: invalid escape in the value (a backslash may precede \\, ', \", $, a space "
                    "or n)"
                )
            escaped = False
        elif strong:
            if c == "'":
                strong = False
            else:
                out.append(c)
        elif mode:
            if c.isalnum():
                name.append(c)
            elif mode == "$":
                if c == "{" and not name:
                    mode = "{"
                else:
                    substitute()
                    mode = ""
                    if c == "$":
                        mode = "$"
                    elif c == '"' and weak:
                        weak = False
                    else:
                        out.append(c)
            elif c == "}":
                substitute()
                mode = ""
            else:
                name.append(c)
        elif c == "$":
            mode = "$"
        elif weak:
            if c == '"':
                weak = False
            elif c == "\\":
                escaped = True
            else:
                out.append(c)
        elif c == "'":
            strong = True
        elif c == '"':
            weak = True
        elif c == "\\":
            escaped = True
        elif c in " \t":
            expecting_end = True
        else:
            out.append(c)
    if mode == "{" or strong or weak:
        raise DotenvSyntaxError(f"line {number}: a quote or ${{ in the value is not closed")
    substitute()
    return "".join(out)
