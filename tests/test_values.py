"""The hand-written value classes (imgpipe.formats._record): what the dataclasses gave."""

from __future__ import annotations

import copy
import pickle

import pytest

from imgpipe.formats._record import FrozenValue, Value


class Point(FrozenValue):
    __slots__ = ("label", "source", "x", "y")
    _uncompared = frozenset({"source"})
    _unshown = frozenset({"source"})
    x: int
    y: int
    label: str
    source: object

    def __init__(self, x: int, y: int, label: str = "", source: object = None) -> None:
        if x < 0:
            raise ValueError("x must not be negative")
        self._set(x=x, y=y, label=label, source=source)


class Point3(Point):
    __slots__ = ("z",)
    z: int

    def __init__(self, x: int, y: int, label: str = "", source: object = None, z: int = 0) -> None:
        super().__init__(x, y, label, source)
        self._set(z=z)


class Box(Value):
    __slots__ = ("items",)
    items: list[int]

    def __init__(self, items: list[int] | None = None) -> None:
        self.items = [] if items is None else items


def test_fields_follow_the_annotations_in_order_bases_first() -> None:
    assert Point._fields == ("x", "y", "label", "source")
    assert Point3._fields == ("x", "y", "label", "source", "z")


def test_equality_hash_and_repr_leave_out_what_they_are_told() -> None:
    a, b = Point(1, 2, "a", source=object()), Point(1, 2, "a", source=object())
    assert a == b
    assert hash(a) == hash(b)
    assert a != Point(1, 3, "a")
    assert repr(a) == "Point(x=1, y=2, label='a')"
    # only the very same class compares equal, as a dataclass
    assert Point3(1, 2, "a") != Point(1, 2, "a")
    assert Point(1, 2) != (1, 2, "", None)


def test_a_frozen_value_refuses_assignment() -> None:
    p = Point(1, 2)
    with pytest.raises(AttributeError):
        p.x = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.x  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.other = 1  # type: ignore[attr-defined]


def test_replace_goes_through_init() -> None:
    p = Point(1, 2, "a")
    assert p.replace(y=5) == Point(1, 5, "a")
    assert p == Point(1, 2, "a")
    with pytest.raises(ValueError, match="negative"):
        p.replace(x=-1)
    with pytest.raises(TypeError, match="no field"):
        p.replace(w=1)
    assert Point3(1, 2, z=3).replace(x=4) == Point3(4, 2, z=3)


def test_pickle_and_copy_keep_every_field() -> None:
    p = Point3(1, 2, "a", source="src", z=3)
    for q in (pickle.loads(pickle.dumps(p)), copy.copy(p), copy.deepcopy(p)):
        assert q == p
        assert q.source == "src"
        assert type(q) is Point3
    assert p._asdict() == {"x": 1, "y": 2, "label": "a", "source": "src", "z": 3}


def test_a_mutable_value_is_unhashable_with_a_fresh_default() -> None:
    a, b = Box(), Box()
    a.items.append(1)
    assert b.items == []
    assert a == Box([1])
    with pytest.raises(TypeError):
        hash(a)
    assert pickle.loads(pickle.dumps(a)) == a


def test_slots_and_fields_must_agree() -> None:
    with pytest.raises(TypeError, match="differ"):

        class Bad(FrozenValue):
            __slots__ = ("a",)
            a: int
            b: int


def test_a_field_typed_through_the_typing_module_is_a_field() -> None:
    """Only ClassVars are left out of the fields, not every ``typing.`` annotation."""
    import typing

    class Loose(FrozenValue):
        __slots__ = ("anything",)
        anything: typing.Any
        limit: typing.ClassVar[int] = 3

        def __init__(self, anything: typing.Any) -> None:
            self._set(anything=anything)

    assert Loose._fields == ("anything",)
    assert Loose(1) == Loose(1)
