"""Long-term memory at 10k, 100k and 1M memories: insert throughput, top-10 recall latency, recall@10
against an exact search, RAM and disk, for our store and for ChromaDB (what other VTuber runtimes
use), with sqlite-vec and a plain float32 numpy scan as the other designs we could have chosen.

Every backend gets the same vectors: real all-MiniLM-L6-v2 embeddings of generated viewer facts
and questions (4,000 of them), mixed pairwise with a little noise to make as many memories as
needed, so neighbours lie the way embeddings of related memories do (the nearest memory to a query
is at cosine ~0.75). Each backend runs alone in its own process, one after the other, in this run.

Ours is measured through the store's real recall path minus embedding the query (which is the same
for everyone and printed once): index search, then the rows fetched from SQLite and ranked.
Chroma's `query` likewise returns the documents.

    pip install -e '.[bench]'
    python bench/memory_recall.py                           # 10k and 100k, every backend
    python bench/memory_recall.py --sizes 1000000 --chroma-limit-min 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BACKENDS = ("chroma", "omoide", "sqlite-vec", "numpy")  # chroma first: the others are compared with it
BATCH = 5000


def rss_mb() -> float:
    """Anonymous resident memory: what the process holds itself (the memory-mapped vectors handed
    to every backend are file pages, left out)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


def disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def make_data(folder: Path, n: int, queries: int) -> float:
    """vectors.npy (n, 384) and queries.npy; returns the ms to embed one query."""
    from memory.embed import Embedder, bundled_path
    from tests.memory_set import generate

    embedder = Embedder(bundled_path())
    cases = generate()
    bases = embedder.encode([c.fact for c in cases] + [c.question for c in cases])
    one = []
    for c in cases[:50]:
        t = time.perf_counter()
        embedder.encode([c.question])
        one.append((time.perf_counter() - t) * 1000)
    rng = np.random.default_rng(7)

    def mix(count: int) -> np.ndarray:
        out = np.empty((count, bases.shape[1]), dtype=np.float32)
        for start in range(0, count, 100_000):
            m = min(100_000, count - start)
            i, j = rng.integers(0, len(bases), m), rng.integers(0, len(bases), m)
            a = rng.uniform(0.55, 1.0, (m, 1)).astype(np.float32)
            v = a * bases[i] + (1 - a) * bases[j] + 0.03 * rng.standard_normal((m, bases.shape[1]), dtype=np.float32)
            out[start:start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out

    np.save(folder / "vectors.npy", mix(n))
    np.save(folder / "queries.npy", mix(queries))
    return statistics.median(one)


def exact_top10(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    best = np.full((len(queries), 10), -1, dtype=np.int64)
    best_s = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    for start in range(0, len(vectors), 200_000):
        s = queries @ vectors[start:start + 200_000].T
        idx = np.argpartition(-s, 10, axis=1)[:, :10]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, idx, 1)], axis=1)
        cand_i = np.concatenate([best, idx + start], axis=1)
        keep = np.argsort(-cand_s, axis=1)[:, :10]
        best, best_s = np.take_along_axis(cand_i, keep, 1), np.take_along_axis(cand_s, keep, 1)
    return best


# -- workers: one backend, one size, in a process of its own ------------------------------------

def worker(backend: str, n: int, data: Path, work: Path, limit_s: float) -> dict[str, object]:
    vectors = np.load(data / "vectors.npy", mmap_mode="r")[:n]
    queries = np.load(data / "queries.npy")
    texts = [f"memory {i}: something the character remembers" for i in range(n)]
    base = rss_mb()
    run = {"omoide": run_omoide, "chroma": run_chroma, "sqlite-vec": run_sqlite_vec, "numpy": run_numpy}[backend]
    result = run(vectors, queries, texts, work, limit_s)
    result["rss_mb"] = round(result.pop("rss") - base, 1)  # measured before the backend closed
    result["disk_mb"] = round(disk_mb(work), 1)
    return result


def timed_queries(search, queries: np.ndarray) -> tuple[list[float], list[list[int]]]:  # noqa: ANN001
    for q in queries[:5]:
        search(q)  # warm-up
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        ids = search(q)
        times.append((time.perf_counter() - t) * 1000)
        found.append(ids)
    return times, found


async def timed_queries_async(search, queries: np.ndarray) -> tuple[list[float], list[list[int]]]:  # noqa: ANN001
    """The same, awaited in the event loop as the runtime's turns await recall."""
    for q in queries[:5]:
        await search(q)
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        ids = await search(q)
        times.append((time.perf_counter() - t) * 1000)
        found.append(ids)
    return times, found


def run_omoide(vectors, queries, texts, work, limit_s):  # noqa: ANN001, ANN201
    from memory.recall import RecallSettings
    from memory.store import SqliteMemory

    class Given:  # the vectors are given: no model to load
        name, dim = "bench", vectors.shape[1]

        def encode(self, texts: list[str], batch: int = 64) -> np.ndarray:
            raise AssertionError("the benchmark gives every vector")

    pure = RecallSettings(recency_weight=0, importance_weight=0, viewer_weight=0, min_similarity=-1)

    async def main() -> dict[str, object]:
        store = await SqliteMemory.open(work / "omoide.db", encoder=Given, settings=pure)
        try:
            ids: list[int] = []
            t = time.perf_counter()
            for start in range(0, len(texts), BATCH):
                ids += await store.add_embedded(texts[start:start + BATCH], np.asarray(vectors[start:start + BATCH]),
                                                "bench")
            insert_s = time.perf_counter() - t
            position = {m: i for i, m in enumerate(ids)}

            async def search(q: np.ndarray) -> list[int]:
                return [position[m.id] for m in await store.ranked_by_vector(q, 10)]

            times, found = await timed_queries_async(search, queries)
            ram = store.index.nbytes / 2**20 if store.index else 0.0
            rss = rss_mb()
        finally:
            await store.aclose()
        t = time.perf_counter()  # a restart: the index is rebuilt from the database
        store = await SqliteMemory.open(work / "omoide.db", encoder=Given, settings=pure)
        await store.index_ready.wait()
        reload_s = time.perf_counter() - t
        await store.aclose()
        return {"insert_s": insert_s, "inserted": len(texts), "times": times, "found": found,
                "index_mb": round(ram, 1), "reload_s": round(reload_s, 2), "rss": rss}

    return asyncio.run(main())


def run_chroma(vectors, queries, texts, work, limit_s):  # noqa: ANN001, ANN201
    import chromadb

    client = chromadb.PersistentClient(path=str(work / "chroma"))
    col = client.create_collection("memories", configuration={"hnsw": {"space": "cosine"}})
    t = time.perf_counter()
    inserted = 0
    for start in range(0, len(texts), BATCH):
        col.add(ids=[str(i) for i in range(start, min(start + BATCH, len(texts)))],
                embeddings=np.asarray(vectors[start:start + BATCH]), documents=texts[start:start + BATCH])
        inserted = min(start + BATCH, len(texts))
        if time.perf_counter() - t > limit_s and inserted < len(texts):
            return {"insert_s": time.perf_counter() - t, "inserted": inserted, "times": [], "found": [],
                    "note": f"stopped after {limit_s / 60:.0f} min of inserting", "rss": rss_mb()}
    insert_s = time.perf_counter() - t

    def search(q: np.ndarray) -> list[int]:
        r = col.query(query_embeddings=[q], n_results=10)
        return [int(i) for i in r["ids"][0]]

    times, found = timed_queries(search, queries)
    return {"insert_s": insert_s, "inserted": inserted, "times": times, "found": found, "rss": rss_mb()}


def run_sqlite_vec(vectors, queries, texts, work, limit_s):  # noqa: ANN001, ANN201
    import pysqlite3.dbapi2 as sqlite3
    import sqlite_vec

    db = sqlite3.connect(work / "vec.db")
    db.enable_load_extension(True)
    db.load_extension(sqlite_vec.loadable_path())
    db.execute(f"CREATE VIRTUAL TABLE mem USING vec0(embedding float[{vectors.shape[1]}])")
    db.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, text TEXT)")
    t = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        chunk = np.asarray(vectors[start:start + BATCH], dtype=np.float32)
        db.executemany("INSERT INTO mem (rowid, embedding) VALUES (?, ?)",
                       [(start + i + 1, v.tobytes()) for i, v in enumerate(chunk)])
        db.executemany("INSERT INTO docs (id, text) VALUES (?, ?)",
                       [(start + i + 1, texts[start + i]) for i in range(len(chunk))])
        db.commit()
    insert_s = time.perf_counter() - t

    def search(q: np.ndarray) -> list[int]:
        rows = db.execute("SELECT m.rowid, d.text FROM (SELECT rowid, distance FROM mem WHERE embedding MATCH ?"
                          " AND k = 10 ORDER BY distance) m JOIN docs d ON d.id = m.rowid",
                          (q.astype(np.float32).tobytes(),)).fetchall()
        return [int(r[0]) - 1 for r in rows]

    times, found = timed_queries(search, queries[:50] if len(texts) > 200_000 else queries)
    return {"insert_s": insert_s, "inserted": len(texts), "times": times, "found": found, "rss": rss_mb()}


def run_numpy(vectors, queries, texts, work, limit_s):  # noqa: ANN001, ANN201
    t = time.perf_counter()
    matrix = np.array(vectors, dtype=np.float32)  # in RAM, as a numpy index would hold it
    insert_s = time.perf_counter() - t

    def search(q: np.ndarray) -> list[int]:
        s = matrix @ q
        top = np.argpartition(-s, 10)[:10]
        return [int(i) for i in top[np.argsort(-s[top])]]

    times, found = timed_queries(search, queries)
    return {"insert_s": insert_s, "inserted": len(texts), "times": times, "found": found, "rss": rss_mb()}


# -- the run ------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--chroma-limit-min", type=float, default=30.0, help="stop Chroma's inserts after this long")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        out = worker(args.worker, args.n, Path(args.data), Path(args.work), args.chroma_limit_min * 60)
        print("RESULT " + json.dumps(out))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")
    data = Path(tempfile.mkdtemp(prefix="omoide-bench-"))
    try:
        embed_ms = make_data(data, max(sizes), args.queries)
        vectors = np.load(data / "vectors.npy", mmap_mode="r")
        queries = np.load(data / "queries.npy")
        print(f"embedding one query with all-MiniLM-L6-v2 (the same for every backend): {embed_ms:.1f} ms median")
        print(f"{'memories':>9} {'backend':<11} {'insert/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'recall@10':>9}"
              f" {'RAM MB':>7} {'disk MB':>8}  vs chroma p50")
        for n in sizes:
            truth = exact_top10(np.asarray(vectors[:n]), queries)
            chroma_p50 = None
            for backend in backends:
                work = data / f"{backend}-{n}"
                work.mkdir()
                proc = subprocess.run(
                    [sys.executable, __file__, "--worker", backend, "--n", str(n), "--data", str(data),
                     "--work", str(work), "--chroma-limit-min", str(args.chroma_limit_min)],
                    capture_output=True, text=True, cwd=ROOT)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                shutil.rmtree(work, ignore_errors=True)
                if line is None:
                    print(f"{n:>9} {backend:<11} failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(line[7:])
                rate = r["inserted"] / r["insert_s"] if r["insert_s"] else float("inf")
                if not r["times"]:
                    print(f"{n:>9} {backend:<11} {rate:>9.0f}  ({r.get('note')}: {r['inserted']} inserted)")
                    continue
                p50, p95 = np.percentile(r["times"], 50), np.percentile(r["times"], 95)
                hits = [len(set(f) & set(truth[i].tolist())) / 10 for i, f in enumerate(r["found"])]
                if backend == "chroma":
                    chroma_p50 = p50
                ratio = f"{chroma_p50 / p50:.2f}x faster" if chroma_p50 and backend != "chroma" else ""
                extra = (f" (index {r['index_mb']} MB, rebuilt at start in {r['reload_s']} s)"
                         if backend == "omoide" else "")
                print(f"{n:>9} {backend:<11} {rate:>9.0f} {p50:>8.2f} {p95:>8.2f} {np.mean(hits):>9.3f}"
                      f" {r['rss_mb']:>7.0f} {r['disk_mb']:>8.0f}  {ratio}{extra}", flush=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
