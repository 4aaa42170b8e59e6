"""A bacpypes3 list whose standard objects are decoded only when someone asks for them.

Both fast paths (EAIO's RPM answers, the sim's RPM requests) parse a list straight from the tag
list into plain tuples (``fast``) and keep the tags: any stock reader of the list still gets the
stock objects, decoded from those tags on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from bacpypes3.primitivedata import TagList

__all__ = ["LazyTagList"]


class LazyTagList:
    """Mix in before the stock ``SequenceOf`` class; set ``_stock`` to it and ``_parse`` to a
    parser returning (fast form, tags used), or None for a layout it does not know."""

    _stock: ClassVar[Any]
    _parse: ClassVar[Callable[[list[Any]], tuple[Any, int] | None]]
    fast: Any = None
    _tags: list[Any] | None = None

    @classmethod
    def decode(cls, tag_list: TagList) -> Any:
        try:
            parsed = cls._parse(tag_list.tagList)
        except Exception:  # an odd layout is the stock decoder's to judge
            parsed = None
        if parsed is None:
            return cls(cls._stock.decode(tag_list))  # type: ignore[call-arg]
        fast, used = parsed
        self = cls()
        self.fast, self._tags = fast, tag_list.tagList[:used]
        del tag_list.tagList[:used]
        return self

    def _materialise(self) -> None:
        if self._tags is not None:
            tags, self._tags = self._tags, None
            list.extend(self, self._stock.decode(TagList(list(tags))))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        self._materialise()
        return list.__iter__(self)  # type: ignore[arg-type]

    def __len__(self) -> int:
        self._materialise()
        return list.__len__(self)  # type: ignore[arg-type]

    def __getitem__(self, i: Any) -> Any:
        self._materialise()
        return list.__getitem__(self, i)  # type: ignore[call-overload]

    def __bool__(self) -> bool:
        self._materialise()
        return list.__len__(self) > 0  # type: ignore[arg-type]
