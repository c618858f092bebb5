"""Hand-written value classes: what ``@dataclass`` gave, without its start-up cost.

Defining a dataclass execs generated source for each method (1.2-1.8 ms a class on a
small machine) and ``import dataclasses`` pulls in inspect, ast and tokenize (12-19 ms);
a start-up path defines a dozen of them (issue 13). A class deriving from :class:`Value`
or :class:`FrozenValue` annotates its fields (in order, as a dataclass does), names them
in ``__slots__`` and writes its ``__init__`` (typed, validating where it must);
equality, hashing, repr, pickling and ``replace()`` come from here, read from the
annotations when the class is defined (a loop over strings, nothing compiled).

Semantics, as the dataclasses had them:

- equality compares the compared fields (``_uncompared`` leaves some out), and only with
  an instance of the very same class;
- a :class:`FrozenValue` refuses assignment (``AttributeError``) and hashes its compared
  fields; a :class:`Value` is mutable and unhashable;
- repr is ``Name(field=value, ...)`` (``_unshown`` leaves some out);
- a pickle (and ``copy.copy``) restores the fields as they are, without calling
  ``__init__`` again;
- ``_asdict()`` gives the fields by name, shallow (as a NamedTuple's);
- ``replace(**changes)`` builds a new instance through ``__init__`` (validation runs),
  so every field must be an ``__init__`` parameter of the same name.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

__all__ = ["FrozenValue", "Value"]


def _restore(cls: type[_Fields], state: tuple[Any, ...]) -> _Fields:
    obj = object.__new__(cls)
    for name, value in zip(cls._fields, state, strict=True):
        object.__setattr__(obj, name, value)
    return obj


class _Fields:  # noqa: PLW1641 (each kind below says how it hashes)
    """What both kinds share: fields, equality, repr, pickling, ``replace()``. A
    subclass annotates its fields in order (as a dataclass does) and names the same ones
    in ``__slots__``."""

    __slots__ = ()
    #: every field, in order (collected from the classes' ``__slots__``)
    _fields: ClassVar[tuple[str, ...]] = ()
    #: fields equality and hashing leave out (a source handle, a cache)
    _uncompared: ClassVar[frozenset[str]] = frozenset()
    #: fields the repr leaves out
    _unshown: ClassVar[frozenset[str]] = frozenset()
    _compared: ClassVar[tuple[str, ...]] = ()
    _shown: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The fields in declaration order, base classes first, as a dataclass orders
        # them: the class annotations (strings, never evaluated), ClassVars aside.
        fields: list[str] = []
        slots: set[str] = set()
        for klass in reversed(cls.__mro__):
            if klass is object or klass.__module__ == __name__:  # the bases here
                continue
            own = klass.__dict__.get("__slots__", ())
            slots.update((own,) if isinstance(own, str) else own)
            own_annotations = klass.__dict__.get("__annotations__", {})  # noqa: RUF063 (no inspect)
            for name, ann in own_annotations.items():
                if name not in fields and not str(ann).startswith(("ClassVar", "typing.ClassVar")):
                    fields.append(name)
        if set(fields) != slots:
            raise TypeError(f"{cls.__qualname__}: __slots__ and the annotated fields differ")
        cls._fields = tuple(fields)
        cls._compared = tuple(f for f in fields if f not in cls._uncompared)
        cls._shown = tuple(f for f in fields if f not in cls._unshown)

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self._compared)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()

    def __repr__(self) -> str:
        shown = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._shown)
        return f"{type(self).__qualname__}({shown})"

    def __reduce__(self) -> tuple[Any, ...]:
        return _restore, (type(self), tuple(getattr(self, f) for f in self._fields))

    def _asdict(self) -> dict[str, Any]:
        """The fields by name (shallow, as a NamedTuple's ``_asdict``)."""
        return {f: getattr(self, f) for f in self._fields}

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` (field names), built through ``__init__``."""
        values = {f: getattr(self, f) for f in self._fields}
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {', '.join(sorted(unknown))}")
        values.update(changes)
        return type(self)(**values)


class Value(_Fields):
    """A mutable value: equality and repr over its fields, unhashable (see the module
    docstring)."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment] # mutable, as a dataclass without frozen


class FrozenValue(_Fields):
    """An immutable value: as :class:`Value`, and hashable; assignment raises
    ``AttributeError``. ``__init__`` sets the fields with :meth:`_set`."""

    __slots__ = ()

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is frozen")

    def __hash__(self) -> int:
        return hash(self._key())
