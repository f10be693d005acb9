"""``cached_property`` without the lock.

Python 3.11's :class:`functools.cached_property` takes a lock shared by every instance on
each first access (3.12 dropped it). Messages, entries and states compute their encoding,
digest or root once per object and there are many objects per request, so that lock was
a visible part of a node's CPU. This descriptor computes the value on first access and
stores it in the instance's ``__dict__``, where later accesses find it without calling
the descriptor (frozen dataclasses allow it: they only guard ``__setattr__``). Two threads
racing on a first access may both compute the value; each gets the same result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class cached_property(Generic[T]):  # noqa: N801 - named after the functools original
    """Computes ``func(instance)`` once per instance and caches it in the instance."""

    def __init__(self, func: Callable[[Any], T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> cached_property[T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = self.func(instance)
        instance.__dict__[self.name] = value
        return value
