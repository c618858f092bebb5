"""Frozen value records, written without the ``dataclasses`` module.

The value types of ``formats`` (Descriptor, Reference, Manifest...) are defined on every
command's start-up. As frozen dataclasses they cost the import of ``dataclasses`` (12-19 ms
on a small machine: it pulls inspect, ast, dis and tokenize) and 1.2-1.8 ms per class (it
compiles generated source for each method). A :class:`Record` costs about what a plain class
does, and its instances are built as fast or faster.

A record class names its fields in ``_fields`` (constructor order) and writes its own typed
``__init__``, which checks its arguments and stores each one with ``_set(self, name,
value)``. Its ``replace`` method takes the fields as keywords defaulting to
:data:`NOT_GIVEN` and hands them to :meth:`Record._replaced`. Record then gives what a
frozen dataclass would:

- ``==``: the same class (exactly) and equal fields, else NotImplemented;
- ``hash``: of the fields as a tuple (a class may hash less: a document hashes its digest);
- ``repr``: ``Name(field=value, ...)`` over ``_repr_fields`` (default: every field);
- assigning or deleting an attribute raises :class:`FrozenError`, an AttributeError as
  dataclasses' FrozenInstanceError is;
- pickle and ``copy`` through ``__getstate__``/``__setstate__`` (the fields in order; loading
  does not validate again, as with a dataclass).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, ClassVar, Final, Self

__all__ = ["NOT_GIVEN", "FrozenError", "Record"]

_set: Final = object.__setattr__


class FrozenError(AttributeError):
    """Assigning to or deleting a field of a record (they are values)."""


class _NotGiven:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_GIVEN"


#: The default of a keyword that was not passed: "keep the field" in ``replace``, "use the
#: default" in a constructor whose default is a fresh object (a dict per instance). Typed
#: Any so that signatures can name the field's own type: ``size: int = NOT_GIVEN``.
NOT_GIVEN: Final[Any] = _NotGiven()


class Record:
    """Base of the frozen value types of ``formats`` (see the module docstring)."""

    __slots__ = ()

    #: The fields, in constructor order.
    _fields: ClassVar[tuple[str, ...]] = ()
    #: The fields ``repr`` shows (raw bytes and annotations are left out of documents').
    _repr_fields: ClassVar[tuple[str, ...]] = ()
    #: ``_values(record)`` is the tuple of the fields (set for each class from ``_fields``).
    _values: ClassVar[attrgetter[tuple[Any, ...]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_repr_fields" not in cls.__dict__:
            cls._repr_fields = cls._fields
        # A record has two fields or more: attrgetter of one name returns the value itself.
        cls._values = attrgetter(*cls._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            values = self._values
            return values(self) == values(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values(self))

    def __repr__(self) -> str:
        fields = ", ".join([f"{name}={getattr(self, name)!r}" for name in self._repr_fields])
        return f"{self.__class__.__qualname__}({fields})"

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenError(f"cannot assign to field {name!r} of a {self.__class__.__name__}")

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"cannot delete field {name!r} of a {self.__class__.__name__}")

    def __getstate__(self) -> tuple[Any, ...]:
        return self._values(self)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self._fields, state, strict=True):
            _set(self, name, value)

    def _replaced(self, **changes: Any) -> Self:
        """A new record of this class with ``changes`` (NOT_GIVEN ones ignored) applied,
        built through the constructor, so it is validated as any new one is."""
        kwargs = dict(zip(self._fields, self._values(self), strict=True))
        for name, value in changes.items():
            if value is not NOT_GIVEN:
                kwargs[name] = value
        make: Callable[..., Self] = self.__class__
        return make(**kwargs)
