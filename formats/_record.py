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
  does not validate again, as with a dataclass);
- ``_asdict()``: the fields by name (shallow, as a NamedTuple's).

:class:`FrozenValue` is the same for imgpipe's own values, written with less (and
:class:`Value` its mutable, unhashable kind): the fields are read from the class's
annotations (checked against ``__slots__``), ``_uncompared`` leaves fields out of
equality and hashing (a source handle), ``_unshown`` out of the repr, and
``replace(**changes)`` is generic (not typed field by field).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, ClassVar, Final, Self

__all__ = ["NOT_GIVEN", "FrozenError", "FrozenValue", "Record", "Value"]

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


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """``record -> its values of names, as a tuple``: attrgetter, which returns the bare
    value for one name (wrapped then; a staticmethod, so the class attribute does not
    bind)."""
    if len(names) >= 2:
        return attrgetter(*names)
    if names:
        (name,) = names
        return staticmethod(lambda record: (getattr(record, name),))
    return staticmethod(lambda record: ())


class Record:
    """Base of the frozen value types of ``formats`` (see the module docstring)."""

    __slots__ = ()

    #: The fields, in constructor order.
    _fields: ClassVar[tuple[str, ...]] = ()
    #: The fields ``repr`` shows (raw bytes and annotations are left out of documents').
    _repr_fields: ClassVar[tuple[str, ...]] = ()
    #: Fields left out of equality and hashing (a source handle), and out of the repr.
    _uncompared: ClassVar[frozenset[str]] = frozenset()
    _unshown: ClassVar[frozenset[str]] = frozenset()
    #: ``_values(record)`` is the tuple of the fields, ``_key(record)`` of the compared
    #: ones (set for each class from ``_fields``).
    _values: ClassVar[Callable[[Any], tuple[Any, ...]]]
    _key: ClassVar[Callable[[Any], tuple[Any, ...]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_repr_fields" not in cls.__dict__:
            cls._repr_fields = tuple(f for f in cls._fields if f not in cls._unshown)
        cls._values = _getter(cls._fields)
        cls._key = _getter(tuple(f for f in cls._fields if f not in cls._uncompared))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            key = type(self)._key
            return key(self) == key(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(type(self)._key(self))

    def __repr__(self) -> str:
        fields = ", ".join([f"{name}={getattr(self, name)!r}" for name in self._repr_fields])
        return f"{self.__class__.__qualname__}({fields})"

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenError(f"cannot assign to field {name!r} of a {self.__class__.__name__}")

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"cannot delete field {name!r} of a {self.__class__.__name__}")

    def __getstate__(self) -> tuple[Any, ...]:
        return type(self)._values(self)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self._fields, state, strict=True):
            _set(self, name, value)

    def _asdict(self) -> dict[str, Any]:
        """The fields by name (shallow, as a NamedTuple's ``_asdict``)."""
        return dict(zip(self._fields, type(self)._values(self), strict=True))

    def _replaced(self, **changes: Any) -> Self:
        """A new record of this class with ``changes`` (NOT_GIVEN ones ignored) applied,
        built through the constructor, so it is validated as any new one is."""
        kwargs = dict(zip(self._fields, type(self)._values(self), strict=True))
        for name, value in changes.items():
            if value is not NOT_GIVEN:
                kwargs[name] = value
        make: Callable[..., Self] = self.__class__
        return make(**kwargs)


class _Annotated(Record):
    """What :class:`FrozenValue` and :class:`Value` share: the fields are the class's
    annotations, in order, base classes first (as a dataclass orders them; ClassVars
    aside; never evaluated), which must be the names in its ``__slots__``; ``__init__``
    stores them with :meth:`_set`; ``replace(**changes)`` is generic."""

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        if "_fields" not in cls.__dict__:
            fields: list[str] = []
            slots: set[str] = set()
            for klass in reversed(cls.__mro__):
                if klass.__module__ == __name__ or klass is object:  # the bases here
                    continue
                own = klass.__dict__.get("__slots__", ())
                slots.update((own,) if isinstance(own, str) else own)
                annotations = klass.__dict__.get("__annotations__", {})  # noqa: RUF063 (no inspect)
                for name, ann in annotations.items():
                    classvar = str(ann).startswith(("ClassVar", "typing.ClassVar"))
                    if name not in fields and not classvar:
                        fields.append(name)
            if set(fields) != slots:
                raise TypeError(f"{cls.__qualname__}: __slots__ and the annotated fields differ")
            cls._fields = tuple(fields)
        super().__init_subclass__(**kwargs)

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            _set(self, name, value)

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` (field names), built through ``__init__`` (validated)."""
        unknown = set(changes) - set(self._fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {', '.join(sorted(unknown))}")
        return self._replaced(**changes)


class FrozenValue(_Annotated):
    """An immutable value of imgpipe's own (see :class:`_Annotated`): hashable, assigning
    a field raises :class:`FrozenError`."""

    __slots__ = ()


class Value(_Annotated):
    """A mutable value (see :class:`_Annotated`): equality and repr over its fields,
    assignable, unhashable, as a dataclass without ``frozen``."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]

    def __setattr__(self, name: str, value: object) -> None:
        _set(self, name, value)

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
