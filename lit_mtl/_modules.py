"""Typed module containers: ``nn.ModuleDict`` and ``nn.ModuleList`` whose items the type checker
knows (``torch.nn`` types every item as ``Module``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar, cast

from torch import nn

M = TypeVar("M", bound=nn.Module)


class TypedModuleDict(nn.ModuleDict, Generic[M]):
    """An ``nn.ModuleDict`` of modules of one type ``M`` (the state dict is the plain one's)."""

    def __getitem__(self, key: str) -> M:
        return cast(M, super().__getitem__(key))

    def values(self) -> Iterable[M]:  # type: ignore[override]  # narrower item type
        return cast(Iterable[M], super().values())

    def items(self) -> Iterable[tuple[str, M]]:  # type: ignore[override]  # narrower item type
        return cast(Iterable[tuple[str, M]], super().items())


class TypedModuleList(nn.ModuleList, Generic[M]):
    """An ``nn.ModuleList`` of modules of one type ``M`` (the state dict is the plain one's)."""

    def __getitem__(self, index: int) -> M:  # type: ignore[override]  # no slices here
        return cast(M, super().__getitem__(index))

    def __iter__(self) -> Iterator[M]:
        return cast(Iterator[M], super().__iter__())
