"""The agent's memory: decisions, outcomes and notes in a persistent chromadb collection, recalled by
similarity so that past situations like the present one can be put into a prompt.

Embeddings come from ``embed.py`` (a packaged ONNX model, or Ollama when configured), never from
chromadb's default embedder, which would download a model. chromadb is synchronous: every call runs
in a worker thread so the event loop keeps serving tool calls while a text is embedded.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar, get_args

from pydantic import BaseModel, Field

from ..errors import EaioError, StoreError, ValidationFailed
from .embed import OllamaEmbedder, OnnxEmbedder

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Documents, EmbeddingFunction

    from ..config import MemorySettings, SiteConfig

__all__ = ["Kind", "Memory", "MemoryHit", "format_recall"]

Kind = Literal["decision", "outcome", "note"]
KINDS: frozenset[str] = frozenset(get_args(Kind))
# Our own bookkeeping in chromadb metadata; user keys may not start with "_" so they never collide.
_KIND, _TS, _JSON = "_kind", "_ts", "_json"
_T = TypeVar("_T")


class MemoryHit(BaseModel):
    """One recalled memory. ``distance`` is cosine distance (0 = same meaning, 1 = unrelated)."""

    id: str
    kind: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    distance: float
    ts: int | None = Field(default=None, description="When it was remembered, microseconds UTC")


class Memory:
    """``async with Memory(settings, data_dir) as mem: await mem.remember(...); await mem.recall(...)``.

    The constructor does no I/O; ``__aenter__`` opens (or creates) the store under
    ``data_dir/settings.path``. Each embedder has its own collection: vectors of two models cannot
    be compared, so switching embedder starts an empty memory and leaves the other one intact.
    """

    def __init__(self, settings: MemorySettings, data_dir: Path, *, llm_url: str = "http://127.0.0.1:11434",
                 embedder: EmbeddingFunction[Documents] | None = None) -> None:
        self.settings = settings
        p = Path(settings.path)
        self.path = p if p.is_absolute() else Path(data_dir) / p
        # `embedder` is for tests and callers that share one loaded model between memories.
        if embedder is not None:
            self.embedder = embedder
        elif settings.embedder == "ollama":
            self.embedder = OllamaEmbedder(llm_url, settings.ollama_model, timeout_s=settings.ollama_timeout_s)
        else:
            self.embedder = OnnxEmbedder()
        self.collection_name = _collection_name(self.embedder)
        self._client: ClientAPI | None = None
        self._collection: Collection | None = None

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> Memory | None:
        """The memory the site file describes, or None when ``agent.memory.enabled`` is false."""
        settings = cfg.agent.memory
        if not settings.enabled:
            return None
        return cls(settings, cfg.data_dir, llm_url=cfg.agent.llm.url)

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._open)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        client, self._client, self._collection = self._client, None, None
        if client is not None:
            await asyncio.to_thread(client.close)

    # -- the API --------------------------------------------------------------------------------

    async def remember(self, kind: Kind, text: str, metadata: dict[str, Any] | None = None, *,
                       memory_id: str | None = None) -> str:
        """Store ``text`` (embedded now) and return its id. The same ``memory_id`` again replaces it."""
        _check_kind(kind)
        if not text.strip():
            raise ValidationFailed(f"memory text is empty (kind {kind!r})")
        meta = _flatten(metadata or {})
        meta[_KIND] = kind
        meta[_TS] = time.time_ns() // 1000
        mid = memory_id or f"{kind}-{uuid.uuid4().hex}"
        col = self._open_collection()

        def store() -> None:
            if memory_id is not None:
                # upsert merges metadata; a None value deletes a key, so stale keys of the memory
                # being replaced are cleared in the same single write.
                for old in col.get(ids=[mid], include=["metadatas"])["metadatas"] or []:
                    meta.update({k: None for k in (old or {}) if k not in meta})  # type: ignore[misc]
            col.upsert(ids=[mid], documents=[text], metadatas=[meta])

        await self._run(store)
        return mid

    async def recall(self, situation: str, n: int | None = None, kinds: Sequence[str] | None = None) -> list[MemoryHit]:
        """The ``n`` (default ``settings.recall``) memories nearest to ``situation``, nearest first,
        optionally only of the given kinds."""
        n = self.settings.recall if n is None else n
        if n < 0:
            raise ValidationFailed(f"recall n must be >= 0, got {n}")
        if not situation.strip():
            raise ValidationFailed("recall situation is empty")
        where: dict[str, Any] | None = None
        if kinds is not None:
            for k in kinds:
                _check_kind(k)
            if not kinds:
                return []
            where = {_KIND: {"$in": list(kinds)}}
        col = self._open_collection()
        if n == 0:
            return []

        def query() -> dict[str, Any]:
            # Ask for no more than there is: chromadb warns on every query otherwise.
            size = col.count()
            if size == 0:
                return {"ids": [[]]}
            return dict(col.query(query_texts=[situation], n_results=min(n, size), where=where,
                                  include=["documents", "metadatas", "distances"]))

        res = await self._run(query)
        ids = res["ids"][0]
        if not ids:
            return []
        hits = [_hit(i, d, m, dist) for i, d, m, dist in
                zip(ids, res["documents"][0], res["metadatas"][0], res["distances"][0], strict=True)]
        return sorted(hits, key=lambda h: h.distance)

    async def count(self) -> int:
        col = self._open_collection()
        return await self._run(col.count)

    # -- internals ------------------------------------------------------------------------------

    def _open(self) -> None:
        import chromadb
        from chromadb.config import Settings

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # No telemetry: this machine reaches no analytics host, and a building's data stays local.
            client = chromadb.PersistentClient(path=str(self.path), settings=Settings(anonymized_telemetry=False))
            collection = client.get_or_create_collection(
                self.collection_name, embedding_function=self.embedder,
                configuration={"hnsw": {"space": "cosine"}},
            )
        except EaioError:
            raise
        except Exception as err:
            raise StoreError(f"cannot open the agent memory at {self.path}: {err}", retryable=False) from err
        # chromadb substitutes its downloading default embedder when none reaches the collection;
        # refuse to run with anything but ours.
        persisted = (collection.configuration_json or {}).get("embedding_function") or {}
        if getattr(collection, "_embedding_function", None) is not self.embedder or \
                persisted.get("name") != self.embedder.name():
            client.close()
            raise StoreError(f"agent memory collection {self.collection_name!r} at {self.path} is not bound to "
                             f"the {self.embedder.name()} embedder (stored: {persisted.get('name')!r})",
                             retryable=False)
        self._client, self._collection = client, collection

    def _open_collection(self) -> Collection:
        if self._collection is None:
            raise StoreError("agent memory is not open: use `async with Memory(...)`", retryable=False)
        return self._collection

    async def _run(self, fn: Callable[[], _T]) -> _T:
        try:
            return await asyncio.to_thread(fn)
        except EaioError:
            raise  # the embedder's own errors (LLMError when Ollama is away) say more than a wrapper
        except Exception as err:
            raise StoreError(f"agent memory at {self.path}: {type(err).__name__}: {err}", retryable=False) from err


def format_recall(hits: Sequence[MemoryHit]) -> str:
    """Recalled memories as prompt context, nearest first; empty string when there are none."""
    if not hits:
        return ""
    lines = ["Similar past situations (nearest first):"]
    for h in hits:
        when = "unknown time" if h.ts is None else f"{datetime.fromtimestamp(h.ts / 1e6, UTC):%Y-%m-%d %H:%M} UTC"
        lines.append(f"- [{h.kind}, {when}, similarity {1 - h.distance:.2f}] {h.text}")
    return "\n".join(lines)


def _collection_name(embedder: EmbeddingFunction[Documents]) -> str:
    name = f"memory_{embedder.name()}"
    if isinstance(embedder, OllamaEmbedder):
        name += f"_{embedder.model}"
    # chromadb: 3-512 chars of [a-zA-Z0-9._-], starting and ending with a letter or digit.
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip("._-")[:512]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValidationFailed(f"memory kind {kind!r} is not one of {sorted(KINDS)}")


def _flatten(metadata: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """chromadb takes only str/int/float/bool values: JSON-encode the rest and remember which."""
    out: dict[str, str | int | float | bool] = {}
    encoded: list[str] = []
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or key.startswith(("_", "#", "$")):
            raise ValidationFailed(f"memory metadata key {key!r}: keys must be non-empty strings not starting "
                                   "with '_', '#' or '$' (reserved)")
        if value is None:
            continue  # chromadb has no null; absent says the same
        if isinstance(value, str | int | float | bool):
            out[key] = value
        else:
            try:
                out[key] = json.dumps(value, default=str, sort_keys=True)
            except (TypeError, ValueError) as err:
                raise ValidationFailed(f"memory metadata {key!r} cannot be stored: {err}") from err
            encoded.append(key)
    if encoded:
        out[_JSON] = json.dumps(encoded)
    return out


def _hit(mid: str, text: str | None, meta: dict[str, Any] | None, distance: float) -> MemoryHit:
    meta = dict(meta or {})
    kind = str(meta.pop(_KIND, ""))
    ts = meta.pop(_TS, None)
    for key in json.loads(str(meta.pop(_JSON, "[]"))):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return MemoryHit(id=mid, kind=kind, text=text or "", metadata=meta, distance=float(distance),
                     ts=int(ts) if isinstance(ts, int | float) else None)
