"""User parameters, declared once: a dataclass field's help, kind, range and default.

Every setting a user can give (a method's hyperparameters, a task's inputs, the runtime's
options) is a dataclass field whose metadata holds a `Param`. The one declaration

* checks values (`check_fields`, from the dataclasses' ``__post_init__``: one range check
  and one message for every surface),
* parses text (`Param.parse`: command-line flags, service form fields, eval and batch
  options all go through it), and
* documents itself (`Param.expected`, the help text and the default, for ``--help``, the
  service's ``/v1/info`` and the web page).

Nothing here knows argparse (diffpir_rt.cliargs turns declarations into flags) or the
engine: this module sits on the floor every room may stand on.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass
from typing import Any, Iterable, Optional

from diffpir_rt.errors import DiffPIRError

__all__ = ["Param", "ParamError", "check_fields", "declared", "echo", "merge_params", "param"]

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


#: The word a user gives for "choose or estimate it for me": `--sigma-n auto` and `--kernel auto`
#: (estimated from the measurement), `--boundary auto` (the task's best model the method can run).
AUTO = "auto"


class ParamError(ValueError):
    """Text that does not parse as a parameter's value; the message says what was expected."""


def echo(text: str) -> str:
    """The user's text as a message quotes it: repr for odd text, long text elided."""
    if len(text) > 40:
        return repr(text[:20]) + "..." + repr(text[-12:])
    return text if text.isprintable() and text.strip() == text and text else repr(text)


@dataclass(frozen=True)
class Param:
    """How one user parameter is spelled, checked and explained.

    Attributes:
        help: one line for --help, form fields and the page (what it does, its units).
        kind: float, int, str or bool.
        low, high: the closed range of a number (None: unbounded); low_open excludes low.
        choices: the allowed values of a str (or int) parameter.
        optional: None is a value (the field's docstring says what None means).
        words: text values allowed besides the kind's (e.g. "auto"), kept as text.
        group: where a generated form puts it ("" = with the method's main settings,
            "advanced" = folded away).
    """

    help: str
    kind: type = float
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    choices: Optional[tuple[Any, ...]] = None
    optional: bool = False
    words: tuple[str, ...] = ()
    group: str = ""

    def expected(self) -> str:
        """What a valid value looks like, e.g. 'a number in [0, 1]'."""
        if self.choices is not None:
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.kind is bool:
            text = "true or false"
        elif self.kind is str:
            text = "text"
        else:
            noun = "an integer" if self.kind is int else "a number"
            low, high = (self._show(v) for v in (self.low, self.high))
            if self.low is None and self.high is None:
                text = noun
            elif self.high is None:
                text = f"{noun} {'>' if self.low_open else '>='} {low}"
            elif self.low is None:
                text = f"{noun} <= {high}"
            else:
                text = f"{noun} in {'(' if self.low_open else '['}{low}, {high}]"
        extra = [*self.words, *(("none",) if self.optional else ())]
        return text + (f", or {' or '.join(extra)}" if extra else "")

    def _show(self, value: Optional[float]) -> str:
        if value is None:
            return ""
        return str(int(value)) if self.kind is int else f"{value:g}"

    # ------------------------------------------------------------------ values

    def valid(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, str) and value in self.words:
            return True
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
            if self.kind is int and not isinstance(value, int):
                return False
            if not math.isfinite(value):
                return False
            if self.low is not None and (value <= self.low if self.low_open else value < self.low):
                return False
            if self.high is not None and value > self.high:
                return False
        elif not isinstance(value, self.kind):
            return False
        return self.choices is None or value in self.choices

    def check(self, name: str, value: Any) -> None:
        """Raise DiffPIRError('name: expected ..., got ...') unless `value` is valid."""
        if not self.valid(value):
            raise DiffPIRError(f"{name}: expected {self.expected()}, got {value!r}")

    def parse(self, text: str) -> Any:
        """The value of `text` (a flag's or a form field's); raises ParamError."""
        raw = text if self.kind is str else text.strip()  # text is taken as given: "cpu " is no device name
        lowered = raw.lower()
        if lowered in self.words:
            return lowered
        if self.optional and lowered == "none":
            return None
        value: Any
        try:
            if self.kind is bool:
                if lowered not in _TRUE + _FALSE:
                    raise ValueError
                value = lowered in _TRUE
            elif self.kind is int:
                value = int(raw)
            elif self.kind is float:
                value = float(raw)
            else:
                value = raw
        except ValueError:
            raise ParamError(f"expected {self.expected()}, got {echo(text)}") from None
        if not self.valid(value):
            raise ParamError(f"expected {self.expected()}, got {echo(text)}")
        return value


def param(default: Any = MISSING, like: Optional[Param] = None, **spec: Any) -> Any:
    """A dataclass field declared as a user parameter: `lam: float = param(1.0, help=..., low=0)`,
    or `sigma_n: float = param(like=SIGMA_N)` for a parameter shared by several owners
    (keyword arguments then change the shared declaration for this field only)."""
    declaration = dataclasses.replace(like, **spec) if like is not None else Param(**spec)
    if default is MISSING:
        return dataclasses.field(metadata={"param": declaration})
    return dataclasses.field(default=default, metadata={"param": declaration})


def declared(cls_or_instance: Any) -> dict[str, Param]:
    """name -> Param of every declared field of a dataclass, in field order."""
    return {f.name: f.metadata["param"] for f in dataclasses.fields(cls_or_instance) if "param" in f.metadata}


def check_fields(instance: Any) -> None:
    """Check every declared field of a dataclass instance (the first bad one raises DiffPIRError)."""
    for name, spec in declared(instance).items():
        spec.check(name, getattr(instance, name))


def merge_params(owners: Iterable[tuple[str, dict[str, Param]]]) -> dict[str, Param]:
    """One Param per name over several owners (e.g. every method's config): the loosest range,
    the union of choices and words, and a help that names each owner's meaning when they differ.

    The kinds must agree: one name means one kind of value on every surface.

    Raises:
        DiffPIRError: a name declared with two different kinds.
    """
    merged: dict[str, Param] = {}
    helps: dict[str, list[tuple[str, str]]] = {}
    for owner, params in owners:
        for name, spec in params.items():
            helps.setdefault(name, [])
            if spec.help not in (h for _, h in helps[name]):
                helps[name].append((owner, spec.help))
            if name not in merged:
                merged[name] = spec
                continue
            old = merged[name]
            if old.kind is not spec.kind:
                raise DiffPIRError(f"parameter {name}: declared as {old.kind.__name__} and as {spec.kind.__name__}")
            low = None if old.low is None or spec.low is None else min(old.low, spec.low)
            high = None if old.high is None or spec.high is None else max(old.high, spec.high)
            choices = None
            if old.choices is not None and spec.choices is not None:
                choices = tuple(dict.fromkeys((*old.choices, *spec.choices)))
            merged[name] = dataclasses.replace(
                old, low=low, high=high, choices=choices, low_open=old.low_open and spec.low_open,
                optional=old.optional or spec.optional, words=tuple(dict.fromkeys((*old.words, *spec.words))),
                group=old.group if old.group == spec.group else "",
            )  # fmt: skip
    for name, entries in helps.items():
        if len(entries) > 1:
            merged[name] = dataclasses.replace(merged[name], help="; ".join(f"{owner}: {h}" for owner, h in entries))
    return merged
