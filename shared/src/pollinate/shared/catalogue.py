"""The item catalogue a device receives from the server with the model.

It says what the server may know about items: their ids (the app's own strings), their
content features (genres), how popular each is (interaction counts of the training data,
a public statistic of the catalogue) and the rating scale. Row ``i`` of the catalogue is
row ``i`` of the model's item tables.

A device turns its events into training data against it
(:mod:`pollinate.client.events`). It is shared because the server builds it and the
device reads it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pollinate.shared.errors import ConfigError

if TYPE_CHECKING:
    from pollinate.shared.data.types import Interactions


@dataclass(frozen=True, eq=False)
class Catalogue:
    """Item ids, content features and popularity, row-aligned with the model's items."""

    item_ids: np.ndarray
    genres: np.ndarray | None = None
    genre_names: tuple[str, ...] = ()
    popularity: np.ndarray | None = None
    rating_scale: tuple[float, float] | None = None
    titles: np.ndarray | None = None
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        ids = np.asarray(self.item_ids).astype(str)
        object.__setattr__(self, "item_ids", ids)
        n = len(ids)
        if n == 0:
            raise ConfigError("a catalogue needs at least one item")
        index = {str(item): i for i, item in enumerate(ids)}
        if len(index) != n:
            raise ConfigError("the catalogue's item ids are not unique")
        object.__setattr__(self, "_index", index)
        if self.genres is not None:
            g = np.asarray(self.genres, dtype=np.float32)
            if g.ndim != 2 or g.shape[0] != n or g.shape[1] != len(self.genre_names):
                raise ConfigError(
                    f"catalogue genres have shape {g.shape}, expected ({n}, "
                    f"{len(self.genre_names)})"
                )
            object.__setattr__(self, "genres", g)
        pop = np.zeros(n) if self.popularity is None else np.asarray(self.popularity, float)
        if pop.shape != (n,) or not np.isfinite(pop).all() or (pop < 0).any():
            raise ConfigError(f"catalogue popularity must be {n} finite counts >= 0")
        object.__setattr__(self, "popularity", pop)
        if self.titles is not None:
            titles = np.asarray(self.titles).astype(str)
            if titles.shape != (n,):
                raise ConfigError(f"catalogue titles must be {n} strings")
            object.__setattr__(self, "titles", titles)
        if self.rating_scale is not None:
            lo, hi = (float(x) for x in self.rating_scale)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConfigError(f"rating scale {self.rating_scale} must be finite, low < high")
            object.__setattr__(self, "rating_scale", (lo, hi))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def pop(self) -> np.ndarray:
        assert self.popularity is not None
        return self.popularity

    def index(self, item: str) -> int | None:
        """The row of ``item``, or None when the catalogue does not know it."""
        return self._index.get(item)

    def title(self, i: int) -> str:
        return str(self.titles[i]) if self.titles is not None else str(self.item_ids[i])

    def genres_of(self, i: int) -> list[str]:
        if self.genres is None:
            return []
        return [self.genre_names[g] for g in np.flatnonzero(self.genres[i] > 0)]

    # ------------------------------------------------------------ building
    @classmethod
    def from_interactions(
        cls,
        data: Interactions,
        rows: np.ndarray | None = None,
        titles: Sequence[str] | None = None,
    ) -> Catalogue:
        """The catalogue of a dataset: its own item ids, genres, and popularity counted
        over ``rows`` (the training rows; all rows when None)."""
        items = data.items if rows is None else data.items[rows]
        return cls(
            item_ids=np.asarray(data.item_ids).astype(str),
            genres=data.item_genres,
            genre_names=tuple(data.genre_names),
            popularity=np.bincount(items, minlength=data.n_items).astype(float),
            rating_scale=data.rating_scale,
            titles=None if titles is None else np.asarray(titles).astype(str),
        )

    # ------------------------------------------------------------ (de)serialising
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Numeric and unicode arrays only (no pickle), for the wire and the store."""
        out = {
            "item_ids": self.item_ids,
            "popularity": self.pop,
            "genre_names": np.asarray(self.genre_names, dtype=str),
        }
        if self.genres is not None:
            out["genres"] = self.genres
        if self.rating_scale is not None:
            out["rating_scale"] = np.asarray(self.rating_scale, dtype=float)
        if self.titles is not None:
            out["titles"] = self.titles
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Catalogue:
        unknown = set(arrays) - {
            "item_ids", "popularity", "genre_names", "genres", "rating_scale", "titles"
        }  # fmt: skip
        if unknown or "item_ids" not in arrays:
            raise ConfigError(f"not a catalogue: unknown arrays {sorted(unknown)} or no item_ids")
        scale = arrays.get("rating_scale")
        return cls(
            item_ids=arrays["item_ids"],
            genres=arrays.get("genres"),
            genre_names=tuple(str(g) for g in arrays.get("genre_names", np.zeros(0, str))),
            popularity=arrays.get("popularity"),
            rating_scale=None if scale is None else (float(scale[0]), float(scale[1])),
            titles=arrays.get("titles"),
        )

    def to_json(self) -> str:
        raw: dict[str, Any] = {k: v.tolist() for k, v in self.to_arrays().items()}
        return json.dumps(raw)

    @classmethod
    def from_json(cls, text: str) -> Catalogue:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ConfigError("a catalogue in JSON is an object")
        return cls.from_arrays({k: np.asarray(v) for k, v in raw.items()})
