"""Recall by meaning: the vector index against an exact search, the bundled embedding model on a
generated set of 200 viewers and 2,000 facts asked about in other words, superseded and deleted
memories never coming back, and edits from the memory commands reaching a running character."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from typing import Any

import numpy as np
import pytest

from memory import admin
from memory import index as index_module
from memory.embed import Embedder, bundled_path
from memory.index import VectorIndex, pack, unpack
from memory.schema import migrate
from memory.store import SqliteMemory
from runtime.cli import main
from runtime.events import InputEvent, InputKind, LoggedTurn, NewMemory, viewer_key
from tests.conftest import write_config
from tests.memory_set import generate


async def said(store: SqliteMemory, event: InputEvent) -> None:
    """A chat line as the director takes it: logged, and learned from."""
    store.learn(event)
    await store.log_input(event)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder(bundled_path())


async def open_store(path, embedder: Embedder) -> SqliteMemory:
    store = await SqliteMemory.open(path, encoder=lambda: embedder)
    await asyncio.wait_for(store.index_ready.wait(), 60)
    return store


async def indexed(store: SqliteMemory, count: int, timeout: float = 60) -> None:
    """Wait until the index holds `count` memories."""
    deadline = time.monotonic() + timeout
    while len(store.index or ()) < count:
        assert time.monotonic() < deadline, f"index has {len(store.index or ())} of {count}"
        await asyncio.sleep(0.05)


def stored_vector(db, memory_id: int) -> bool:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT 1 FROM memory_vectors WHERE memory_id = ?", (memory_id,)).fetchone() is not None


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors in clusters, the way embeddings of related memories lie."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 50, 1), dim)).astype(np.float32)
    v = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_the_index_finds_what_an_exact_search_finds_and_forgets_what_is_removed():
    everything = clustered(20_050, 384, seed=1)
    vectors, queries = everything[:20_000], everything[20_000:]  # queries from the same clusters
    index = VectorIndex(384, capacity=16)  # grows as it fills
    ids = np.arange(100, 100 + len(vectors))
    index.add(ids[:7000], vectors[:7000])
    index.add(ids[7000:], vectors[7000:])
    overlap = []
    for q in queries:
        exact = set(ids[np.argsort(-(vectors @ q))[:10]].tolist())
        found = index.search(q, 10)
        overlap.append(len(exact & {i for i, _ in found}) / 10)
        best = int(np.argmax(vectors @ q))
        assert found[0][1] == pytest.approx(float(vectors[best] @ q), abs=0.02)  # int8 keeps the cosine
    assert np.mean(overlap) >= 0.95

    gone = [i for i, _ in index.search(queries[0], 10)]
    index.remove(gone)
    assert len(index) == len(vectors) - 10
    assert not {i for i, _ in index.search(queries[0], 50)} & set(gone)
    index.add([gone[0]], queries[0][None, :])  # re-added with a new vector: found first, once
    again = index.search(queries[0], 5)
    assert again[0] == (gone[0], pytest.approx(1.0, abs=0.01))
    assert [i for i, _ in again].count(gone[0]) == 1

    q8, scale = unpack([pack(v) for v in vectors[:3]], 384)  # the database form
    assert np.allclose(q8.astype(np.float32) * scale[:, None], vectors[:3], atol=0.01)


def test_past_a_size_the_index_becomes_an_inverted_file_that_still_finds_the_nearest(monkeypatch):
    monkeypatch.setattr(index_module, "IVF_MIN", 5_000)
    everything = clustered(30_050, 384, seed=3)
    vectors, queries = everything[:30_000], everything[30_000:]
    index = VectorIndex(384)
    for start in range(0, 30_000, 2_500):  # crosses IVF_MIN, then grows 4x: trained twice
        index.add(np.arange(start, start + 2_500), vectors[start:start + 2_500])
    assert index._centroids is not None and index._trained_at >= 20_000
    overlap = [len(set(np.argsort(-(vectors @ q))[:10].tolist()) & {i for i, _ in index.search(q, 10)}) / 10
               for q in queries]
    assert np.mean(overlap) >= 0.9
    index.remove(list(range(0, 30_000, 3)))  # every list stays true to the positions it holds
    index.add([1, 4], queries[:2])  # replaced vectors move to their new nearest list
    assert int(index._counts.sum()) == len(index) == 20_000
    held = np.concatenate([index._members[lst][:index._counts[lst]] for lst in range(len(index._members))])
    assert sorted(held.tolist()) == list(range(len(index)))
    assert index.search(queries[0], 1)[0][0] == 1
    assert not {i for i, _ in index.search(queries[5], 50)} & set(range(0, 30_000, 3))


@pytest.mark.model
@pytest.mark.slow  # about 75 s: `make test-slow`, which CI runs too
async def test_recall_at_5_on_200_viewers_and_2000_facts_asked_in_other_words(tmp_path, embedder):
    cases = generate(viewers=200, per_viewer=10)
    assert len({c.viewer for c in cases}) == 200 and len({c.fact for c in cases}) == 2000
    store = await open_store(tmp_path / "omoide.db", embedder)
    try:
        for c in cases:
            await store.add_memory(c.fact, source="twitch", viewer=f"twitch:{c.viewer}")
        await indexed(store, len(cases))
        anyone = mine = 0
        for c in cases:
            # asked by someone else: only the words of the question point at the fact
            anyone += c.fact in [m.text for m in await store.recall(c.question, 5)]
        for c in cases[::4]:  # asked by the viewer themselves: their own facts count for more
            found = await store.recall(c.question, 5, f"twitch:{c.viewer}")
            mine += c.fact in [m.text for m in found]
        print(f"recall@5 asked by anyone {anyone / len(cases):.3f}, by the viewer {mine / len(cases[::4]):.3f}")
        assert anyone / len(cases) >= 0.9
        assert mine / len(cases[::4]) >= 0.95
    finally:
        await store.aclose()


def chat(text: str, author: str = "Ada", user_id: str = "42") -> InputEvent:
    return InputEvent(InputKind.CHAT, text, "twitch", 0.0, author, meta={"user_id": user_id, "untrusted": True})


@pytest.mark.model
async def test_superseded_and_deleted_memories_never_come_back(tmp_path, embedder, capsys):
    db = tmp_path / "omoide.db"
    store = await open_store(db, embedder)
    try:
        await said(store, chat("my cat is called Miso"))
        await store.add_memory("The stream's mascot is a green frog called Kero.", source="operator")
        await store.add_memory("Bo's favourite snack is seaweed crackers.", source="operator", viewer="twitch:7")
        await store.flush()
        await indexed(store, 3)
        await said(store, chat("my cat is called Tofu now"))  # supersedes Miso
        await store.flush()
        await indexed(store, 4)

        texts = [m.text for m in await store.recall("what is the name of Ada's cat?", 3)]
        assert "Ada said: my cat is called Tofu now" in texts
        assert not any("Miso" in t for t in texts)
        assert "The stream's mascot is a green frog called Kero." in [
            m.text for m in await store.recall("tell me about the frog mascot", 3)]

        # the operator edits and deletes while the character runs (another connection, as the CLI)
        kero = next(r[0] for r in admin.list_memories(db) if "Kero" in r[-1])
        admin.edit(db, kero, "The stream's mascot is a purple octopus called Tako.")
        snack = next(r[0] for r in admin.list_memories(db) if "seaweed" in r[-1])
        admin.delete(db, snack)
        deadline = time.monotonic() + 30
        while True:  # until the new text has its own vector, stored
            await store.flush()
            mascot = [m.text for m in await store.recall("which sea creature is the stream mascot?", 3)]
            if ("The stream's mascot is a purple octopus called Tako." in mascot
                    and stored_vector(db, kero)):
                break
            assert time.monotonic() < deadline, mascot
            await asyncio.sleep(0.1)
        assert not any("seaweed" in m.text for m in await store.recall("what snack does Bo like?", 5))

        # the operator's search ranks by meaning too, with the vectors the character stored
        config = write_config(tmp_path, memory={"database": str(db), "embedding_model": "bundled"})
        assert main(["--config", str(config), "memory", "search", "sea creature", "--limit", "1"]) == 0
        assert "purple octopus called Tako" in capsys.readouterr().out
    finally:
        await store.aclose()

    store = await open_store(db, embedder)  # a restart loads the stored vectors, embeds nothing again
    try:
        assert len(store.index or ()) == 2  # Tofu and Tako: nothing superseded or deleted
        ada = viewer_key(chat("x"))
        texts = [m.text for m in await store.recall("what's my cat called?", 3, ada)]
        assert texts[0].startswith("About Ada:")
        assert "Ada said: my cat is called Tofu now" in texts
    finally:
        await store.aclose()


@pytest.mark.model
async def test_recall_ranks_by_similarity_then_recency_and_importance(tmp_path, embedder):
    store = await open_store(tmp_path / "omoide.db", embedder)
    try:
        await store.add_memory("We played Celeste and Ada cheered at the summit.", source="x", importance=0.1)
        await store.add_memory("We played Celeste and Bo cheered at the summit.", source="x", importance=0.9)
        await store.add_memory("The weather in Oslo was grey all week.", source="x")
        await indexed(store, 3)
        found = await store.recall("remember when we climbed the mountain in Celeste?", 3)
        assert [m.text for m in found][:2] == ["We played Celeste and Bo cheered at the summit.",
                                               "We played Celeste and Ada cheered at the summit."]
        assert "The weather in Oslo was grey all week." not in [m.text for m in found]  # too far off
    finally:
        await store.aclose()


@pytest.mark.model
async def test_a_reflection_that_says_it_again_replaces_the_older_one(tmp_path, embedder):
    store = await open_store(tmp_path / "omoide.db", embedder)
    try:
        turn = LoggedTurn("t1", 1.0, "Ada: my cat is Miso", "Cute!")
        await store.reflected(turn, [NewMemory("Ada's cat is called Miso.", source_turns=("t1",)),
                                     NewMemory("Bo is learning the cello.", source_turns=("t1",))])
        await indexed(store, 2)
        later = LoggedTurn("t2", 2.0, "Ada: Miso says hi", "Hi Miso!")
        await store.reflected(later, [NewMemory("Ada has a cat named Miso.", source_turns=("t2",)),
                                      NewMemory("Bo's cat is called Miso.", source_turns=("t2",))])
        await indexed(store, 4)
        await store.flush()
        live = {r[-1] for r in admin.list_memories(store.path)}
        assert live == {"Ada has a cat named Miso.", "Bo's cat is called Miso.", "Bo is learning the cello."}
    finally:
        await store.aclose()


def test_a_query_is_embedded_by_onnxruntime_into_the_vectors_torch_makes(tmp_path):
    """Recall's query runs under onnxruntime (twice as fast as torch here): exported once, kept,
    read back at the next start, exported again if the kept file is damaged, and the same vectors."""
    torch_made = Embedder(bundled_path(), runtime="torch")
    kept = tmp_path / "onnx"
    first = Embedder(bundled_path(), cache=kept)
    assert (first.runtime, torch_made.runtime) == ("onnx", "torch")
    for texts in (["hi"], [""], ["do you remember my cat's name?"], ["日本語のテキスト"], ["word " * 400],
                  ["short", "a longer line, so the first is padded"]):  # the last two: cut at 256 tokens; a batch
        np.testing.assert_allclose(first.encode(texts), torch_made.encode(texts), atol=1e-5)
    (graph,) = kept.iterdir()
    stamp = graph.stat().st_mtime_ns
    again = Embedder(bundled_path(), cache=kept)
    assert again.runtime == "onnx" and graph.stat().st_mtime_ns == stamp  # read, not exported again
    graph.write_bytes(b"half a file")
    mended = Embedder(bundled_path(), cache=kept)
    assert mended.runtime == "onnx" and graph.stat().st_size > 1_000_000
    np.testing.assert_allclose(mended.encode(["hi"]), torch_made.encode(["hi"]), atol=1e-5)


def test_when_onnxruntime_cannot_run_the_embedding_model_torch_does(monkeypatch, caplog):
    monkeypatch.setattr(Embedder, "_export", lambda self: b"not a graph")
    embedder = Embedder(bundled_path())
    assert embedder.runtime == "torch"
    assert "the embedding model runs in torch" in caplog.text
    vector = embedder.encode(["hello chat"])
    assert vector.shape == (1, embedder.dim) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5


def test_the_embedding_model_is_found_where_models_pull_puts_it(tmp_path):
    from memory.embed import EmbeddingError, resolve

    pulled = tmp_path / "models" / "acme--mini-embedder"
    pulled.mkdir(parents=True)
    (pulled / "config.json").write_text("{}")
    assert resolve("acme/mini-embedder", tmp_path / "models") == pulled
    assert resolve("bundled") == bundled_path()
    with pytest.raises(EmbeddingError, match="omoide models pull --only embedding"):
        resolve("acme/not-pulled", tmp_path / "models")


@pytest.mark.model
def test_memories_added_from_the_command_line_are_found_by_meaning_at_once(tmp_path, capsys):
    """No character has run on this database: nothing has a vector yet."""
    db = tmp_path / "omoide.db"  # not made yet: the first `memory add` makes it
    config = str(write_config(tmp_path, memory={"database": str(db), "embedding_model": "bundled"}))
    for text in ("The stream's mascot is a purple octopus called Tako.", "Bo's favourite snack is seaweed crackers.",
                 "We speedran Celeste last Friday."):
        assert main(["memory", "add", text, "--config", config]) == 0
    capsys.readouterr()
    assert main(["memory", "search", "which sea creature is the mascot?", "--limit", "1", "--config", config]) == 0
    out = capsys.readouterr()
    assert "purple octopus called Tako" in out.out and "left out" not in out.err
    assert not sqlite3.connect(db).execute("SELECT COUNT(*) FROM memory_vectors").fetchone()[0]  # the character's job


@pytest.mark.model
def test_past_its_budget_a_search_says_what_it_left_out(tmp_path, embedder):
    db = tmp_path / "omoide.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        migrate(conn)
    for i in range(5):
        admin.add(db, f"memory number {i} about trains")
    rows, left_out = admin.search_by_meaning(db, "trains", embedder, limit=3, embed_at_most=2)
    assert left_out == 3 and len(rows) == 2


async def test_a_query_embedded_as_the_input_arrives_is_recalled_the_same_and_not_embedded_again(tmp_path, embedder):
    store = await open_store(tmp_path / "omoide.db", embedder)
    calls: list[list[str]] = []
    encode = embedder.encode

    def counted(texts: list[str]) -> Any:
        calls.append(list(texts))
        return encode(texts)

    try:
        await store.add_memory("We played Celeste and Bo cheered at the summit.", source="x")
        await store.add_memory("The weather in Oslo was grey all week.", source="x")
        await indexed(store, 2)
        question = "remember when we climbed the mountain in Celeste?"
        plain = await store.recall(question, 2)
        store.recaller.encoder = type("Counted", (), {"encode": staticmethod(counted)})()
        store.recall_ahead(question)  # as the input arrives
        await asyncio.sleep(0.5)  # the reply before it is still being spoken
        ahead = await store.recall(question, 2)
        assert [m.id for m in ahead] == [m.id for m in plain]
        assert calls == [[question]]  # embedded once, ahead: the recall itself embedded nothing
        await store.recall(question, 2)  # asked again: used once, then embedded as usual
        assert len(calls) == 2
    finally:
        await store.aclose()
