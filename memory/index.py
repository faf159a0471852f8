"""The vector index behind recall: nearest memories to a query vector, in RAM, rebuilt from the
database at start.

Every vector has a binary code (one bit per dimension: its sign; 48 bytes for MiniLM) and an int8
copy with one scale per vector (so any embedding model keeps its precision). A query scans codes by
Hamming distance, then re-scores the best few hundred candidates with the int8 vectors. Up to
IVF_MIN vectors it scans every code (1.5 ms at 100k); past that the vectors are also grouped into
about sqrt(n) lists by spherical k-means (an inverted file, retrained as the index grows 4x), and a
query scans only the lists nearest to it (1.7 ms at a million, against 80 ms for a float32 scan).
Figures: docs/benchmarks.md (`python bench/memory_recall.py`).

The database keeps the int8 form (`pack`/`unpack`): 388 bytes per MiniLM memory.
"""

from __future__ import annotations

import threading

import numpy as np


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 vectors, float32 scale per vector) with vector ≈ int8 * scale."""
    vectors = np.asarray(vectors, dtype=np.float32)
    scale = np.maximum(np.abs(vectors).max(axis=1), 1e-12) / 127.0
    return np.round(vectors / scale[:, None]).astype(np.int8), scale.astype(np.float32)


def cosines(vectors: np.ndarray, scale: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine similarity of a unit query to int8 vectors with their scales."""
    return (vectors.astype(np.float32) @ query) * scale


def pack(vector: np.ndarray) -> bytes:
    """One vector as stored in the database: its float32 scale, then its int8 components."""
    q, s = quantize(vector[None, :])
    return s.tobytes() + q.tobytes()


def unpack(blobs: list[bytes], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The int8 vectors and scales of blobs written by `pack` (all of one dimension)."""
    raw = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), 4 + dim)
    return raw[:, 4:].copy().view(np.int8), raw[:, :4].copy().view(np.float32).ravel()


IVF_MIN = 200_000  # below this a query scans every code (about 1.5 ms at 100k)
PROBE_SHARE = 0.005  # with the inverted file, the share of vectors a query looks at ...
PROBE_MIN = 8_000  # ... and at least this many


class VectorIndex:
    """Memory ids and their vectors. Thread-safe: the store searches from one worker thread while
    another adds what was just embedded."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self.words = (dim + 63) // 64
        self._n = 0
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._codes = np.zeros((self.words, capacity), dtype=np.uint64)  # one row per word: scans stride 1
        self._vecs = np.zeros((capacity, dim), dtype=np.int8)
        self._scale = np.zeros(capacity, dtype=np.float32)
        self._pos: dict[int, int] = {}
        self._lock = threading.Lock()
        # past IVF_MIN vectors: an inverted file, so a query scans a few lists, not every code
        self._centroids: np.ndarray | None = None  # (lists, dim), unit length
        self._trained_at = 0
        self._list = np.zeros(capacity, dtype=np.int32)  # each position's list
        self._members: list[np.ndarray] = []  # each list's positions (first _counts[l] valid)
        self._counts = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self._n

    def __contains__(self, memory_id: int) -> bool:
        return memory_id in self._pos

    @property
    def nbytes(self) -> int:
        """RAM held by the index (arrays at their current capacity, plus the id map)."""
        return (self._ids.nbytes + self._codes.nbytes + self._vecs.nbytes + self._scale.nbytes
                + len(self._pos) * 100)

    def _codes_of(self, q: np.ndarray) -> np.ndarray:
        bits = np.packbits(q > 0, axis=1)
        pad = self.words * 8 - bits.shape[1]
        if pad:
            bits = np.pad(bits, ((0, 0), (0, pad)))
        return bits.view(np.uint64)  # (n, words)

    def _grow(self, need: int) -> None:
        cap = len(self._ids)
        if need <= cap:
            return
        new = max(need, cap * 2)
        self._ids = np.resize(self._ids, new)
        codes = np.zeros((self.words, new), dtype=np.uint64)
        codes[:, :cap] = self._codes
        self._codes = codes
        vecs = np.zeros((new, self.dim), dtype=np.int8)
        vecs[:cap] = self._vecs
        self._vecs = vecs
        self._scale = np.resize(self._scale, new)
        self._list = np.resize(self._list, new)

    def add(self, ids: np.ndarray | list[int], vectors: np.ndarray, scale: np.ndarray | None = None) -> None:
        """Add (or replace) vectors: float32 ones, or int8 ones with their `scale`."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        if scale is None:
            vectors, scale = quantize(vectors)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors of dimension {vectors.shape[1]}, the index holds {self.dim}")
        codes = self._codes_of(vectors)
        with self._lock:
            pos = np.empty(len(ids), dtype=np.int64)
            added, placed = 0, []  # placed: positions to put in a list (new, or replaced)
            for i, m in enumerate(ids.tolist()):
                p = self._pos.get(m)
                if p is None:
                    p = self._pos[m] = self._n + added
                    added += 1
                    placed.append(p)
                elif self._centroids is not None:
                    self._leave(p)  # replaced: it may belong to another list now
                    placed.append(p)
                pos[i] = p
            self._grow(self._n + added)
            self._n += added
            self._ids[pos] = ids
            self._codes[:, pos] = codes.T
            self._vecs[pos] = vectors
            self._scale[pos] = scale
            if self._centroids is None or self._n >= 4 * self._trained_at:  # lists of about sqrt(n)
                if self._n >= IVF_MIN:
                    self._train()
            elif placed:
                self._join(np.unique(np.asarray(placed, dtype=np.int64)))

    def remove(self, ids: list[int]) -> None:
        with self._lock:
            for m in ids:
                p = self._pos.pop(m, None)
                if p is None:
                    continue
                last = self._n - 1
                if self._centroids is not None:
                    self._leave(p)
                    if p != last:
                        self._rename(last, p)
                if p != last:  # the last one moves into the hole
                    moved = int(self._ids[last])
                    self._ids[p] = moved
                    self._codes[:, p] = self._codes[:, last]
                    self._vecs[p] = self._vecs[last]
                    self._scale[p] = self._scale[last]
                    self._list[p] = self._list[last]
                    self._pos[moved] = p
                self._n = last

    def search(self, query: np.ndarray, k: int, candidates: int | None = None) -> list[tuple[int, float]]:
        """The k nearest (memory id, cosine similarity), best first."""
        with self._lock:
            n = self._n
            if n == 0 or k <= 0:
                return []
            q = np.asarray(query, dtype=np.float32)
            if candidates is None:
                candidates = max(20 * k, min(2000, n // 500))
            if self._centroids is not None:  # the lists hold near vectors: fewer candidates do
                pos = self._nearest_codes(q, self._probe(q, n), 20 * k)
            elif candidates < n:
                pos = self._nearest_codes(q, np.arange(n), candidates)
            else:
                pos = np.arange(n)
            sims = cosines(self._vecs[pos], self._scale[pos], q)
            best = np.argsort(-sims)[:k]
            return [(int(self._ids[pos[i]]), float(sims[i])) for i in best]

    def _nearest_codes(self, q: np.ndarray, among: np.ndarray, candidates: int) -> np.ndarray:
        """Positions (of `among`) of about `candidates` codes nearest to q's: all those within the
        Hamming distance that reaches the count (a histogram is ~5x cheaper than argpartition)."""
        if candidates >= len(among):
            return among
        qc = self._codes_of(q[None, :])[0]
        whole = len(among) == self._n  # every position, in order: no gather needed
        m = len(among)
        word, count = np.empty(m, dtype=np.uint64), np.empty(m, dtype=np.uint8)
        dist = np.zeros(m, dtype=np.uint16)
        for w in range(self.words):
            codes = self._codes[w, :m] if whole else self._codes[w, among]
            np.bitwise_xor(codes, qc[w], out=word)
            np.bitwise_count(word, out=count)
            np.add(dist, count, out=dist)
        within = int(np.searchsorted(np.cumsum(np.bincount(dist, minlength=self.dim + 1)), candidates))
        keep = np.flatnonzero(dist <= within)
        if len(keep) > 4 * candidates:  # many ties at the edge: keep the nearest
            keep = keep[np.argpartition(dist[keep], candidates)[:candidates]]
        return among[keep]

    # -- the inverted file ----------------------------------------------------------------------

    def _floats(self, pos: np.ndarray) -> np.ndarray:
        v = self._vecs[pos].astype(np.float32) * self._scale[pos, None]
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def _nearest_list(self, pos: np.ndarray) -> np.ndarray:
        assert self._centroids is not None
        out = np.empty(len(pos), dtype=np.int32)
        for start in range(0, len(pos), 50_000):
            chunk = pos[start:start + 50_000]
            out[start:start + 50_000] = np.argmax(self._floats(chunk) @ self._centroids.T, axis=1)
        return out

    def _train(self) -> None:
        """Spherical k-means on a sample (sqrt(n) lists), then every vector to its nearest list."""
        n = self._n
        lists = int(min(4096, max(64, np.sqrt(n))))
        rng = np.random.default_rng(0)
        sample = self._floats(rng.choice(n, size=min(n, 64 * lists), replace=False))
        centroids = sample[rng.choice(len(sample), size=lists, replace=False)]
        for _ in range(8):
            nearest = np.argmax(sample @ centroids.T, axis=1)
            sums = np.zeros_like(centroids)
            np.add.at(sums, nearest, sample)
            empty = np.linalg.norm(sums, axis=1) == 0
            sums[empty] = sample[rng.choice(len(sample), size=int(empty.sum()))]
            centroids = sums / np.linalg.norm(sums, axis=1, keepdims=True)
        self._centroids, self._trained_at = centroids.astype(np.float32), n
        self._members = [np.zeros(0, dtype=np.int64) for _ in range(lists)]
        self._counts = np.zeros(lists, dtype=np.int64)
        self._join(np.arange(n))

    def _join(self, pos: np.ndarray) -> None:
        lists = self._nearest_list(pos)
        self._list[pos] = lists
        order = np.argsort(lists, kind="stable")
        bounds = np.flatnonzero(np.diff(lists[order])) + 1
        for group in np.split(pos[order], bounds):
            lst = int(self._list[group[0]])
            have, arr = int(self._counts[lst]), self._members[lst]
            if have + len(group) > len(arr):
                arr = self._members[lst] = np.resize(arr, max(2 * len(arr), have + len(group), 16))
            arr[have:have + len(group)] = group
            self._counts[lst] = have + len(group)

    def _leave(self, p: int) -> None:
        lst = int(self._list[p])
        arr, have = self._members[lst], int(self._counts[lst])
        found = np.flatnonzero(arr[:have] == p)
        if len(found):  # (not yet in a list: added twice in one batch)
            arr[int(found[0])] = arr[have - 1]
            self._counts[lst] = have - 1

    def _rename(self, old: int, new: int) -> None:
        lst = int(self._list[old])
        arr, have = self._members[lst], int(self._counts[lst])
        arr[int(np.flatnonzero(arr[:have] == old)[0])] = new

    def _probe(self, q: np.ndarray, n: int) -> np.ndarray:
        """Positions in the lists nearest to q, enough of them to hold about PROBE_SHARE of all."""
        assert self._centroids is not None
        order = np.argsort(-(self._centroids @ q))
        sizes = np.cumsum(self._counts[order])
        take = int(np.searchsorted(sizes, max(PROBE_MIN, PROBE_SHARE * n))) + 1
        return np.concatenate([self._members[lst][:self._counts[lst]] for lst in order[:take]])

    def similarity(self, ids: list[int], query: np.ndarray) -> dict[int, float]:
        """Cosine similarity of the query to each of these memories that the index holds."""
        with self._lock:
            pos = [self._pos[m] for m in ids if m in self._pos]
            if not pos:
                return {}
            q = np.asarray(query, dtype=np.float32)
            sims = cosines(self._vecs[pos], self._scale[pos], q)
            return {int(self._ids[p]): float(s) for p, s in zip(pos, sims, strict=True)}
