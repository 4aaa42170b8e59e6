"""The agent's memory with real embeddings: the packaged all-MiniLM-L6-v2 on onnxruntime, a real
persistent chromadb on disk, and Ollama embeddings through the real ``ollama`` client against the
wire-level stand-in. chromadb's own (downloading) embedder is booby-trapped for every test here."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest
from chromadb.api.types import DefaultEmbeddingFunction, Documents, Embeddings
from chromadb.config import Settings
from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

from eaio.agents.embed import OllamaEmbedder, OnnxEmbedder
from eaio.agents.memory import Memory, MemoryHit, format_recall
from eaio.config import MemorySettings, SiteConfig
from eaio.errors import LLMError, StoreError, ValidationFailed
from ollama_standin import OllamaStandIn

INCIDENTS = {
    "valve": "zone 2 too warm in the afternoon because the chilled water valve was stuck closed",
    "fan": "AHU-1 supply fan tripped on high static pressure after a damper closed",
    "meter": "main electricity meter counter rolled over and the demand looked negative",
    "boiler": "boiler locked out on flame failure overnight, heating hot water went cold",
    "co2": "conference room CO2 above 1400 ppm during meetings, outdoor air damper at minimum",
    "offline": "modbus gateway offline after a power cut, every meter read failed with a timeout",
}
NOTES = {
    "service": "the chiller plant is serviced every first Monday of the month",
    "west": "zone 2 faces west and gets the afternoon sun",
}
# Paraphrases sharing few words with their incident: only meaning can match them.
SITUATIONS = {
    "valve": "why is the second zone hot after lunch although cooling is on?",
    "fan": "the air handler's fan shut down because duct pressure was too high",
    "meter": "the energy meter reading wrapped around to zero",
    "boiler": "no heat this morning, the boiler would not fire",
    "co2": "stuffy meeting room, carbon dioxide is high",
    "offline": "all reads from the modbus devices time out since the outage",
}


@pytest.fixture(autouse=True)
def no_default_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    """chromadb's default embedder downloads a model: any use of it fails the test."""

    def trap(*_: Any, **__: Any) -> Any:
        raise AssertionError("chromadb's default embedder was used (it downloads a model)")

    def call_trap(self: Any, input: Documents) -> Embeddings:  # chromadb checks this exact signature
        raise AssertionError("chromadb's default embedder was used (it downloads a model)")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(DefaultEmbeddingFunction, "__call__", call_trap)
    monkeypatch.setattr(ONNXMiniLM_L6_V2, "_download_model_if_not_exists", trap)
    monkeypatch.setattr(ONNXMiniLM_L6_V2, "_download", trap)


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    """One loaded model for the module (loading is the slow part)."""
    return OnnxEmbedder()


class CountingEmbedder(OnnxEmbedder):
    """The real embedder, counting the texts it is asked to embed (same chromadb name and config)."""

    def __init__(self, inner: OnnxEmbedder) -> None:
        super().__init__()
        self._inner = inner
        self.texts: list[str] = []
        self._count_lock = threading.Lock()

    def __call__(self, input: Documents) -> Embeddings:
        with self._count_lock:
            self.texts.extend(input)
        return self._inner(input)


def memory(tmp_path: Path, embedder: Any, **settings: Any) -> Memory:
    return Memory(MemorySettings(**settings), tmp_path, embedder=embedder)


async def fill(mem: Memory) -> dict[str, str]:
    """Remember every incident (decisions) and note; their ids by key."""
    ids = {k: await mem.remember("decision", t, {"key": k}) for k, t in INCIDENTS.items()}
    ids |= {k: await mem.remember("note", t, {"key": k}) for k, t in NOTES.items()}
    return ids


# -- the embedder --------------------------------------------------------------------------------


def test_onnx_embedder_gives_unit_vectors_in_input_order(embedder: OnnxEmbedder) -> None:
    texts = ["short", *INCIDENTS.values(), "a much longer text " * 40]  # varied lengths: batches get sorted
    small_batches = OnnxEmbedder(batch_size=3)
    together = embedder.embed(texts)
    one_by_one = np.stack([embedder.embed([t])[0] for t in texts])
    assert together.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # Padding inside a batch must not change a text's vector (the attention mask excludes it).
    assert float((together * one_by_one).sum(axis=1).min()) > 0.9999
    assert float((small_batches.embed(texts) * one_by_one).sum(axis=1).min()) > 0.9999
    # chromadb's entry point returns the same vectors.
    assert np.allclose(np.asarray(embedder(texts[:2])), together[:2], atol=1e-6)


def test_onnx_embedder_is_rebuilt_from_its_persisted_config() -> None:
    original = OnnxEmbedder(batch_size=7)
    rebuilt = OnnxEmbedder.build_from_config(original.get_config())
    assert isinstance(rebuilt, OnnxEmbedder)
    assert rebuilt.batch_size == 7
    assert not original.is_legacy()  # chromadb stores it by name, not as an anonymous legacy function
    with pytest.raises(ValueError, match="other-model"):
        OnnxEmbedder.build_from_config({"model": "other-model"})


def test_onnx_embedder_loads_once_under_concurrent_first_use() -> None:
    fresh = OnnxEmbedder()
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(fresh.embed(["zone 2 is warm"]))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 4
    assert all(np.allclose(r, results[0]) for r in results)


# -- recall --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_most_similar_past_incident_comes_back_first(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    async with memory(tmp_path, embedder) as mem:
        ids = await fill(mem)
        assert await mem.count() == len(INCIDENTS) + len(NOTES)
        for key, situation in SITUATIONS.items():
            hits = await mem.recall(situation, n=3, kinds=["decision"])
            assert [h.kind for h in hits] == ["decision"] * 3
            assert hits[0].id == ids[key], (situation, [h.text for h in hits])
            assert hits[0].text == INCIDENTS[key]
            assert hits[0].metadata == {"key": key}
            assert [h.distance for h in hits] == sorted(h.distance for h in hits)
            assert 0.0 <= hits[0].distance < hits[1].distance


@pytest.mark.anyio
async def test_recall_defaults_to_the_configured_count_and_caps_at_what_is_stored(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    async with memory(tmp_path, embedder, recall=2) as mem:
        assert await mem.recall("anything at all") == []  # empty memory: nothing, no error
        await mem.remember("note", NOTES["west"])
        assert len(await mem.recall("anything at all", n=5)) == 1
        await fill(mem)
        assert len(await mem.recall(SITUATIONS["fan"])) == 2
        assert await mem.recall(SITUATIONS["fan"], n=0) == []


@pytest.mark.anyio
async def test_kinds_filter_recalls_only_those_kinds(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    async with memory(tmp_path, embedder) as mem:
        ids = await fill(mem)
        outcome = await mem.remember("outcome", "after replacing the valve actuator zone 2 held its setpoint")
        situation = SITUATIONS["valve"]
        # Unfiltered, the decision about the stuck valve is nearest ...
        assert (await mem.recall(situation, n=10))[0].id == ids["valve"]
        # ... but asked for notes, the note about zone 2's afternoon sun comes first, and only notes come.
        notes = await mem.recall(situation, n=10, kinds=["note"])
        assert [h.kind for h in notes] == ["note", "note"]
        assert notes[0].id == ids["west"]
        mixed = await mem.recall(situation, n=10, kinds=["outcome", "note"])
        assert {h.kind for h in mixed} == {"outcome", "note"}
        assert outcome in {h.id for h in mixed}
        assert await mem.recall(situation, kinds=[]) == []
        with pytest.raises(ValidationFailed, match="'incident'"):
            await mem.recall(situation, kinds=["incident"])


@pytest.mark.anyio
async def test_metadata_round_trips_and_bad_input_is_refused(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    meta = {"zone": "zone2", "severity": 2, "kw": 1.5, "resolved": False,
            "points": ["zone2.temp", "zone2.cool_sp"], "evidence": {"temp": 25.5}, "absent": None}
    async with memory(tmp_path, embedder) as mem:
        mid = await mem.remember("decision", INCIDENTS["valve"], meta, memory_id="decision-42")
        assert mid == "decision-42"
        [hit] = await mem.recall(SITUATIONS["valve"])
        assert hit.metadata == {k: v for k, v in meta.items() if v is not None}
        assert hit.ts is not None
        # The same id again replaces the memory rather than adding one.
        await mem.remember("outcome", "the valve was freed and zone 2 cooled down", memory_id="decision-42")
        assert await mem.count() == 1
        [hit] = await mem.recall(SITUATIONS["valve"])
        assert (hit.kind, hit.metadata) == ("outcome", {})

        with pytest.raises(ValidationFailed, match="'_kind'"):
            await mem.remember("note", "x", {"_kind": "decision"})
        with pytest.raises(ValidationFailed, match="empty"):
            await mem.remember("note", "   ")
        with pytest.raises(ValidationFailed, match="'plan'"):
            await mem.remember("plan", "x")  # type: ignore[arg-type]
        assert await mem.count() == 1


@pytest.mark.anyio
async def test_concurrent_remembers_are_all_kept(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    async with memory(tmp_path, embedder) as mem:
        texts = [f"zone {i} drifted {i % 3 + 1} degC above its cooling setpoint" for i in range(20)]
        ids = await asyncio.gather(*(mem.remember("note", t) for t in texts))
        assert len(set(ids)) == 20
        assert await mem.count() == 20
        hits = await mem.recall("zone 7 drifted 2 degC above its cooling setpoint", n=1)
        assert hits[0].text == texts[7]


@pytest.mark.anyio
async def test_a_memory_that_is_not_open_says_so(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    mem = memory(tmp_path, embedder)
    assert not (tmp_path / "memory").exists()  # the constructor does no I/O
    with pytest.raises(StoreError, match="not open"):
        await mem.recall("anything")


# -- persistence ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_memories_persist_across_reopen_without_re_embedding(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    async with memory(tmp_path, embedder) as mem:
        ids = await fill(mem)
        before = {k: await mem.recall(s, n=3) for k, s in SITUATIONS.items()}

    counting = CountingEmbedder(embedder)
    async with memory(tmp_path, counting) as mem:
        assert await mem.count() == len(ids)
        for key, situation in SITUATIONS.items():
            after = await mem.recall(situation, n=3)
            assert [h.id for h in after] == [h.id for h in before[key]]
            assert [h.distance for h in after] == pytest.approx([h.distance for h in before[key]], abs=1e-5)
    # Only the six situations were embedded: the stored memories kept their vectors.
    assert counting.texts == list(SITUATIONS.values())


@pytest.mark.anyio
async def test_a_reopened_collection_is_bound_to_our_embedder_never_chromadb_default(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    async with memory(tmp_path, embedder) as mem:
        await fill(mem)
        name, path = mem.collection_name, mem.path

    # Opened by plain chromadb with no embedder given, the collection rebuilds ours from its stored config.
    client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
    try:
        col = client.get_collection(name)
        assert col.configuration_json["embedding_function"]["name"] == "eaio_onnx_minilm"
        assert col.configuration_json["hnsw"]["space"] == "cosine"
        # chromadb keeps its default as a placeholder here and embeds with the embedder rebuilt from the
        # stored config: ours, found by its registered name. The trap fixture fails the query otherwise.
        assert isinstance(col.configuration["embedding_function"], OnnxEmbedder)
        res = col.query(query_texts=[SITUATIONS["boiler"]], n_results=1)
        assert res["documents"][0] == [INCIDENTS["boiler"]]
    finally:
        client.close()


@pytest.mark.anyio
async def test_a_collection_bound_to_another_embedder_is_refused(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    mem = memory(tmp_path, embedder)
    # Someone created our collection with different vectors (here: an Ollama model's).
    client = chromadb.PersistentClient(path=str(mem.path), settings=Settings(anonymized_telemetry=False))
    try:
        client.create_collection(mem.collection_name, embedding_function=OllamaEmbedder("http://127.0.0.1:9", "m"))
    finally:
        client.close()
    with pytest.raises(StoreError, match="eaio_ollama"):
        async with mem:
            pass


# -- configuration -------------------------------------------------------------------------------


def test_from_config(tmp_path: Path) -> None:
    off = SiteConfig.model_validate({"data_dir": str(tmp_path), "agent": {"memory": {"enabled": False}}})
    assert Memory.from_config(off) is None

    onnx = Memory.from_config(SiteConfig.model_validate({"data_dir": str(tmp_path)}))
    assert onnx is not None
    assert onnx.path == tmp_path / "memory"
    assert isinstance(onnx.embedder, OnnxEmbedder)

    cfg = SiteConfig.model_validate({"data_dir": str(tmp_path), "agent": {
        "llm": {"url": "http://127.0.0.1:9"},
        "memory": {"embedder": "ollama", "ollama_model": "nomic-embed-text:latest", "ollama_timeout_s": 15,
                   "path": str(tmp_path / "m")}}})
    ollama = Memory.from_config(cfg)
    assert ollama is not None
    assert ollama.path == tmp_path / "m"
    assert isinstance(ollama.embedder, OllamaEmbedder)
    assert (ollama.embedder.url, ollama.embedder.model, ollama.embedder.timeout_s) == (
        "http://127.0.0.1:9", "nomic-embed-text:latest", 15)
    # A collection per embedder: vectors of different models are never compared.
    assert ollama.collection_name != onnx.collection_name
    assert ollama.collection_name == "memory_eaio_ollama_nomic-embed-text_latest"


def test_format_recall() -> None:
    assert format_recall([]) == ""
    text = format_recall([MemoryHit(id="a", kind="decision", text="valve stuck", distance=0.25, ts=0)])
    assert text.splitlines() == ["Similar past situations (nearest first):",
                                 "- [decision, 1970-01-01 00:00 UTC, similarity 0.75] valve stuck"]


# -- Ollama embeddings ---------------------------------------------------------------------------


@pytest.fixture
def ollama(embedder: OnnxEmbedder) -> Iterator[OllamaStandIn]:
    """The stand-in, answering /api/embed with real vectors (from the packaged model)."""
    with OllamaStandIn() as standin:
        standin.embed = lambda texts: embedder.embed(texts).tolist()
        yield standin


@pytest.mark.anyio
async def test_ollama_embeddings_through_the_real_client(tmp_path: Path, ollama: OllamaStandIn) -> None:
    settings = MemorySettings(embedder="ollama", ollama_model="nomic-embed-text")
    async with Memory(settings, tmp_path, llm_url=ollama.url) as mem:
        assert isinstance(mem.embedder, OllamaEmbedder)
        ids = await fill(mem)
        hits = await mem.recall(SITUATIONS["meter"], n=2, kinds=["decision"])
        assert hits[0].id == ids["meter"]

    embeds = [body for method, path, body in ollama.received if path == "/api/embed"]
    assert embeds, "no /api/embed request reached the stand-in"
    assert {b["model"] for b in embeds} == {"nomic-embed-text"}
    sent = [t for b in embeds for t in ([b["input"]] if isinstance(b["input"], str) else b["input"])]
    assert sent == [*INCIDENTS.values(), *NOTES.values(), SITUATIONS["meter"]]


@pytest.mark.anyio
async def test_ollama_embedder_errors_are_llm_errors(tmp_path: Path, ollama: OllamaStandIn) -> None:
    missing = Memory(MemorySettings(embedder="ollama", ollama_model="no-such-embedder"), tmp_path / "a",
                     llm_url=ollama.url)
    async with missing as mem:
        with pytest.raises(LLMError, match="no-such-embedder"):
            await mem.remember("note", "x")

    async with Memory(MemorySettings(embedder="ollama"), tmp_path / "b", llm_url=ollama.url) as mem:
        await mem.remember("note", NOTES["west"])
        ollama.stop()
        with pytest.raises(LLMError, match="unreachable"):
            await mem.recall("why is zone 2 warm?")
        with pytest.raises(LLMError, match="unreachable"):
            await mem.remember("note", "lost?")
        assert await mem.count() == 1  # a failed embedding stores nothing half-done
