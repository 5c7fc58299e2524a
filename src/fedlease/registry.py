"""The one pattern for everything a config names by a string: a ``Registry`` of entries, declared
in the module that implements them and filled where each entry is written (``register``).

The config schema holds no name lists: ``fedlease.configure`` checks every name a config gives
against its registry (``Registry.problem``), and an unknown name's error lists the registered
ones. Adding an algorithm, a task, a data source, an aggregation rule... is one module (or one
function) plus one registration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from fedlease.errors import ConfigError

T = TypeVar("T")


class UnknownName(ConfigError, KeyError):
    """A name no entry of the registry has; its message lists the registered names."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0])


class Registry(Mapping[str, T], Generic[T]):
    """Entries by name, in the order they were registered; ``field``: the config key that
    names one (``federation.algorithm``), for the messages; ``entries``: the first ones, when
    the implementing module registers them together."""

    def __init__(self, field: str, entries: Mapping[str, T] | None = None):
        self.field = field
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` (once: a second entry of the same name is a bug)."""
        if name in self._entries:
            raise ValueError(f"{self.field}: {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def registers(self, name: str) -> Callable[[T], T]:
        """``register`` as a decorator: ``@PARTITIONERS.registers("iid")``."""
        return lambda entry: self.register(name, entry)

    def problem(self, name: str, field: str = "") -> str | None:
        """None if ``name`` is registered, else what is wrong (``field``: the key to name, when
        not the registry's own, e.g. one ``[[data.datasets]]`` table's)."""
        if name in self._entries:
            return None
        return f"{field or self.field} = {name!r}: expected one of {', '.join(self._entries)}"

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.problem(name)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.field!r}: {', '.join(self._entries)})"
