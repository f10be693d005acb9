"""dropbear.cached.cached_property: computed once per instance, frozen dataclasses too."""

from dataclasses import dataclass

from dropbear.cached import cached_property


@dataclass(frozen=True)
class Box:
    value: int

    @cached_property
    def doubled(self) -> int:
        """Twice the value."""
        CALLS.append(self.value)
        return 2 * self.value


CALLS: list[int] = []


def test_computed_once_per_instance_and_kept_apart():
    CALLS.clear()
    a, b = Box(1), Box(2)
    assert (a.doubled, a.doubled, b.doubled, b.doubled) == (2, 2, 4, 4)
    assert CALLS == [1, 2]
    assert a == Box(1)  # the cached value is not a field: equality is unchanged


def test_the_class_attribute_is_the_descriptor_with_its_docstring():
    assert isinstance(Box.doubled, cached_property)
    assert Box.doubled.__doc__ == "Twice the value."
