"""``PostIndex``: approximate nearest neighbours over post embeddings (FAISS, inner product).

Embeddings are unit L2 rows, so inner product = cosine. The FAISS index is chosen by size
(``kind="auto"``, decided when the index is built, from ``expected_size`` or the first
batch; later adds keep it):

| posts | kind | why |
|---|---|---|
| <= 20,000 | ``flat`` (IndexFlatIP) | exact; a query reads n*dim*4 bytes (4 MB at 20k x 50): well under 1 ms |
| <= 2,000,000 | ``hnsw`` (IndexHNSWFlat, M=32) | no training, incremental adds, recall@10 >= 0.95 at efSearch 128; +M*2*4 = 256 bytes/post of links |
| larger | ``ivf`` (IndexIVFFlat, nlist = 4*sqrt(n)) | cheaper to build and smaller than HNSW; trained on 256*nlist vectors sampled from all |

Binary (``binary=True``): each post is stored as its sign bits, ``quantize_embeddings(v,
"ubinary")`` (``postemb_rt.quantization``, the library's one quantization: bit = x > 0, packed 8
per byte, so ceil(dim/8) bytes per post instead of dim*4: 7 vs 200 bytes at 50-d, 48 vs 1536 at
384-d), in FAISS's binary indexes (``IndexBinaryFlat`` / ``IndexBinaryHNSW`` / ``IndexBinaryIVF``,
Hamming distance; queries are quantized the same way). A binary hit's score is
``1 - 2 * hamming / dim``, the cosine of the two sign vectors. With ``rescore=m`` (> 0) the
float vectors are kept too (``vectors.npy`` when saved, memory-mapped on load, so they can stay
on disk): a query fetches the ``k * m`` nearest by Hamming and re-ranks them by float cosine,
the practice of sentence-transformers' binary-quantization retrieval (``rescore_multiplier``);
scores are then exact cosines. What recall this keeps on our data: docs/RETRIEVAL.md.

Post ids are ints (int64) or strs, one type per index (``ids.parquet`` holds one Arrow type):
FAISS stores row positions 0..n-1 and ``ids[pos]`` maps them back. Adding an id already present
is skipped (an embedding is a pure function of (text, vector version), so it is the same
vector); ``add`` returns how many were new and counts the rest in ``skipped``, which ``build``
and ``from_parquet`` log as a warning (rows of their input whose id came earlier: the first
row of each id is kept). Skipped rows whose vector is not their id's first are counted apart,
in ``conflicts``, and named in that warning: ``repeats.py``.

Versions: an index records the **vector version** of its vectors (``Encoder.vector_version``:
the model version plus ``@<k>`` / ``+<precision>`` / ``+max<n>`` / ``+chunk`` when those change the
numbers), the string the near-line store keys by and backfill writes in its ``model_version``
column. The vector version does not name the prompt (an input, like the text): ``prompt_name``
records the one the posts were embedded with where the source says it (a backfill output's
``_SUCCESS.json``, a ``postemb embed`` Parquet file's metadata, the near-line records'
``prompt_name``; ``sources.py``), "" for none, None when not known.

Saved as a folder (``index.faiss``, ``ids.parquet``, ``vectors.npy`` with rescoring, ``index.json``
recording each file's size and SHA-256), written beside the target and swapped in whole:
``folder.py``. ``faiss`` is imported here and there only. Reading the sources (Parquet, the
near-line store) is ``sources.py``'s.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ValidationError
from .checks import as_ids, as_vectors, check_k, check_positive, check_rescore
from .ranking import padded, rescored
from .repeats import EXAMPLES, differing, skipped_message
from .sources import read_parquet, read_store, stated_prompt

log = logging.getLogger("postemb_rt")
KINDS = ("auto", "flat", "hnsw", "ivf")
FLAT_MAX = 20_000
HNSW_MAX = 2_000_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
IVF_NPROBE = 64
TIE_FETCH_MAX = 1024  # HNSW/IVF: most posts fetched past the k-th while they tie it (a text reposted 100,000 times)


def choose_kind(n: int) -> str:
    """The kind ``auto`` picks for an index expected to hold ``n`` posts (see the table above)."""
    return "flat" if n <= FLAT_MAX else "hnsw" if n <= HNSW_MAX else "ivf"


def ivf_nlist(n: int) -> int:
    return max(16, int(4 * math.sqrt(max(n, 1))))


def _warn_skipped(idx: "PostIndex", rows: int, source) -> None:
    if idx.skipped:
        log.warning("%s: %s", source, skipped_message(idx, rows))


@dataclass
class Hit:
    id: object
    score: float  # inner product = cosine (binary, not rescored: cosine of the sign vectors)


class PostIndex:
    """An ANN index over unit post embeddings. Build with :meth:`build`, :meth:`from_parquet`,
    :meth:`from_redis`, or ``PostIndex(dim, kind)`` + :meth:`add`; persist with :meth:`save` /
    :meth:`load`; query with :meth:`search`. ``binary=True`` stores sign bits (Hamming);
    ``rescore=m`` also keeps the float vectors and re-ranks the k*m Hamming-nearest by cosine
    (see the module docstring). ``vector_version``: the version of the vectors it holds;
    ``prompt_name``: the model prompt its posts were embedded with ("" none, None not known)."""

    def __init__(self, dim: int, kind: str = "auto", *, expected_size: int | None = None,
                 vector_version: str | None = None, binary: bool = False, rescore: int = 0,
                 ef_search: int = HNSW_EF_SEARCH, nprobe: int = IVF_NPROBE, nlist: int | None = None,
                 prompt_name: str | None = None):
        import faiss

        if kind not in KINDS:
            raise ValidationError(f"`kind` must be one of {KINDS}. Given: {kind!r}.")
        if not isinstance(dim, int) or dim < 1:
            raise ValidationError(f"`dim` must be a positive int. Given: {dim!r}.")
        if kind == "auto":
            if expected_size is None:
                raise ValidationError("`kind='auto'` needs `expected_size` (the number of posts it will hold). "
                                      "Fix: pass expected_size=N, or use PostIndex.build(ids, vectors).")
            kind = choose_kind(expected_size)
        if prompt_name is not None and not isinstance(prompt_name, str):
            raise ValidationError(f"`prompt_name` must be a str (\"\": no prompt) or None (not known). "
                                  f"Given: {type(prompt_name).__name__}.")
        self.dim, self.kind, self.vector_version, self.prompt_name = dim, kind, vector_version, prompt_name
        self.binary, self.rescore = bool(binary), check_rescore(rescore, bool(binary))
        self.bits = 8 * -(-dim // 8) if self.binary else 0  # FAISS binary codes are whole bytes
        self.ef_search = check_positive("ef_search", ef_search, f"leave it out ({HNSW_EF_SEARCH}), or more for recall")
        self.nprobe = check_positive("nprobe", nprobe, f"leave it out ({IVF_NPROBE}), or more for recall")
        nlist = nlist if nlist is None else check_positive("nlist", nlist, "leave it out (4 * sqrt(expected_size))")
        self.nlist = nlist or (ivf_nlist(expected_size or 0) if kind == "ivf" else 0)
        # binary + rescore: the float vectors, in parts appended by add() (joined on first use)
        self._float_parts: list[np.ndarray] = []
        if self.binary:
            if kind == "flat":
                self.index = faiss.IndexBinaryFlat(self.bits)
            elif kind == "hnsw":
                self.index = faiss.IndexBinaryHNSW(self.bits, HNSW_M)
                self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            else:
                self.index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(self.bits), self.bits, self.nlist)
        elif kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        else:
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self.ids: list = []
        self._pos: dict = {}
        self.skipped = 0  # ids add() skipped as already present (or repeated in one call)
        self.conflicts, self.conflict_ids = 0, []  # of those, rows of another vector; a few of their ids

    @property
    def model_version(self) -> str | None:
        """Alias of :attr:`vector_version` (what older code and index.json files call it)."""
        return self.vector_version

    # -- building ----------------------------------------------------------------------
    @classmethod
    def build(cls, ids, vectors, kind: str = "auto", vector_version: str | None = None, **params) -> "PostIndex":
        """An index over ``vectors`` float32 (n, dim) unit rows with ``ids`` (n,), kind by size;
        ``params``: ``binary``, ``rescore``, ``ef_search``, ``nprobe``, ``nlist``, ``prompt_name``."""
        v = as_vectors(vectors, None)
        idx = cls(v.shape[1], kind, expected_size=len(v), vector_version=vector_version, **params)
        idx.add(ids, v)
        _warn_skipped(idx, len(v), "PostIndex.build")
        return idx

    def _codes(self, v: np.ndarray) -> np.ndarray:
        """What FAISS stores: float32 (n, dim) as is, or (binary) uint8 (n, bits/8) sign bits."""
        if not self.binary:
            return v
        from ..quantization import quantize

        return np.ascontiguousarray(quantize(v, "ubinary"), dtype=np.uint8)

    def _floats(self) -> np.ndarray:
        """float32 (n, dim): the kept float vectors of a binary index with rescoring."""
        if len(self._float_parts) != 1:
            self._float_parts = [np.concatenate(self._float_parts) if self._float_parts
                                 else np.empty((0, self.dim), np.float32)]
        return self._float_parts[0]

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids, vectors, vector_version: str | None = None) -> int:
        """Add posts: ``ids`` (n,) int or str, of one type, the index's (ValidationError before
        anything is added otherwise), ``vectors`` float32 (n, dim) unit rows. Ids already in the
        index (or repeated in ``ids``) are skipped, counted in ``skipped`` (and in ``conflicts`` when
        their vector is not the kept one: ``repeats.py``). IVF trains on its first
        add, which must then hold at least 39 * nlist vectors. ``vector_version``: the vectors' (as in
        :meth:`search`; an empty index of none takes it). Returns the number added."""
        self._same_version(vector_version, "vectors")
        if not self.ids and self.vector_version is None:
            self.vector_version = vector_version
        v = as_vectors(vectors, self.dim)
        ids = list(ids)
        if len(ids) != len(v):
            raise ValidationError(f"`ids` and `vectors` must have the same length. Given: {len(ids)} and {len(v)}.")
        ids = as_ids(ids, self.ids[0] if self.ids else None)
        keep, repeats = [], []  # repeats: (row, position of its id's kept row)
        for i, pid in enumerate(ids):
            pos = self._pos.get(pid)
            if pos is None:
                self._pos[pid] = len(self.ids) + len(keep)
                keep.append(i)
            else:
                repeats.append((i, pos))
        conflicts = differing(self, v, ids, repeats, keep, len(self.ids))
        if not keep:
            self._count_skipped(len(ids), conflicts)
            return 0
        skipped = len(ids) - len(keep)
        if skipped:
            v = v[keep]
            ids = [ids[i] for i in keep]
        if self.kind == "ivf" and not self.index.is_trained:
            try:
                self.train(v)
            except ValidationError:
                for pid in ids:
                    del self._pos[pid]
                raise
        self.index.add(self._codes(v))
        self._count_skipped(skipped, conflicts)
        if self.rescore:
            self._float_parts.append(v)
        self.ids.extend(ids)
        return len(ids)

    def train(self, vectors) -> None:
        """IVF: learn the nlist centroids from ``vectors`` float32 (n, dim) unit rows (n >= 39 * nlist), a
        seeded uniform sample of 256 * nlist of them (FAISS's cap, and all a binary IVF converts to floats),
        never the first rows: input in time or topic order would put every centroid among its first topics.
        ``add`` trains on its first add so; ``from_parquet`` samples its whole input first."""
        v = as_vectors(vectors, self.dim)
        if len(v) < 39 * self.nlist:
            raise ValidationError(
                f"`kind` 'ivf': an IVF index with nlist={self.nlist} trains on its first add, which needs >= "
                f"{39 * self.nlist} vectors. Given: {len(v)}. Fix: `kind` 'hnsw' or 'auto' (kind by size: IVF "
                "pays from millions of posts), or add more at once, or a smaller nlist.")
        self.index.train(self._codes(v[_sample(len(v), 256 * self.nlist)]))

    @classmethod
    def from_parquet(cls, path, kind: str = "auto", batch_rows: int = 65_536, vector_version: str | None = None,
                     allow_unversioned: bool = True, on_progress=None, **params) -> "PostIndex":
        """An index over Parquet embeddings (``postemb backfill`` / ``postemb embed`` output: columns
        ``id``, ``embedding`` fixed-size list<float32>, ``model_version``): a file or a folder
        (read recursively; ``_``/``.``-prefixed files and folders ignored). One version only: the
        ``model_version`` column holds the vector version (``Encoder.vector_version``);
        ``vector_version`` states it for Parquet without one (and must equal the column's).
        An index of no version (logged as a warning) is refused with ``allow_unversioned=False``.
        ``prompt_name``: what the files record (``sources.parquet_prompt``: backfill or embed),
        else the one given (a different one is refused). ``on_progress(rows indexed, rows in all)``: called
        after each batch is added (a progress bar's update: minutes at millions of posts)."""
        n, batches, recorded = read_parquet(path, batch_rows, vector_version, allow_unversioned)
        params["prompt_name"] = stated_prompt(params.get("prompt_name"), recorded, repr(str(path)))
        idx: PostIndex | None = None
        for ids, vec, mv in batches:
            if idx is None:
                idx = cls(vec.shape[1], kind, expected_size=n, vector_version=mv, **params)
                if idx.kind == "ivf":  # a first pass for a sample of every file (read twice: IVF is for millions)
                    idx.train(_sampled(read_parquet(path, batch_rows, vector_version, allow_unversioned)[1], n,
                                       _sample(n, 256 * idx.nlist)))
            idx.add(ids, vec)
            if on_progress is not None:
                on_progress(len(idx) + idx.skipped, n)
        _warn_skipped(idx, n, path)
        if idx.vector_version is None:
            log.warning("%s records no vector version (no model_version column, none given): queries of this index "
                        "cannot be checked against the model that made its vectors", path)
        return idx

    @classmethod
    def from_redis(cls, client, vector_version: str, kind: str = "auto", prefix: str | None = None,
                   scan_count: int = 1000, **params) -> "PostIndex":
        """An index over the near-line store (``postemb_rt.nearline``): every hash at
        ``{prefix}:{vector_version}:*``. ``vector_version``: the version the worker stores under,
        its encoder's ``Encoder.vector_version`` (the model version, plus ``@<k>`` / ``+bf16`` / ``+int8`` /
        ``+max<n>`` / ``+chunk`` where the worker runs so); ``postemb_rt.encoder.vector_version(model_version,
        precision, long_posts, truncate_dim, max_length)`` computes it. ``client``: a redis-py client or a ``redis://`` URL.
        Reads in SCAN pages of ``scan_count`` keys, one pipeline each. Nothing under that version:
        ValidationError listing the versions the store does hold (from a few SCAN pages).
        ``prompt_name``: the one its records name (``sources.read_store``), else the one given (a
        different one is refused)."""
        ids, vectors, recorded = read_store(client, vector_version, prefix, scan_count)
        params["prompt_name"] = stated_prompt(params.get("prompt_name"), recorded, f"the store's {vector_version!r}")
        return cls.build(ids, vectors, kind=kind, vector_version=vector_version, **params)

    # -- querying ----------------------------------------------------------------------
    def search_positions(self, queries, k: int, rescore: int | None = None,
                         vector_version: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw search: ``queries`` float32 (q, dim) unit rows -> (scores float32 (q, k),
        positions int64 (q, k)), best first, equal scores in the order the posts were added;
        position -1 (score -inf) where fewer than k posts were found.
        ``rescore``: a binary index's rescore multiplier for this call (default: the index's;
        0: Hamming order; > 0 needs an index built with rescore > 0, which kept the floats)."""
        import faiss

        self._same_version(vector_version, "queries")
        q = self._queries(queries)
        check_k(k)
        m = self.rescore if rescore is None else check_rescore(rescore, self.binary)
        if m and not self.rescore:
            raise ValidationError(f"`rescore` {m} needs the float vectors, which this index did not keep (built "
                                  "with rescore=0). Fix: rebuild with rescore > 0 (`postemb index build --binary "
                                  "--rescore N`), or rescore=0.")
        if len(self) == 0 or len(q) == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        k, n = int(k), self.index.ntotal
        fetch = min(k * max(m, 1), n)  # FAISS allocates (q, fetch): k is a cap, not a size

        def params(fetch: int):
            if self.kind == "hnsw":
                return faiss.SearchParametersHNSW(efSearch=max(self.ef_search, fetch))
            return faiss.SearchParametersIVF(nprobe=min(self.nprobe, self.nlist)) if self.kind == "ivf" else None
        if not self.binary:
            # an ANN index keeps the equal scores it met first: one more is fetched, and while that one ties the k-th
            # twice as many (up to TIE_FETCH_MAX past it), so the cut keeps the first added (flat: already so)
            fetch, most = (fetch, fetch) if self.kind == "flat" else (min(k + 1, n), min(k + TIE_FETCH_MAX, n))
            scores, pos = self.index.search(q, fetch, params=params(fetch))
            while fetch < most and ((pos[:, -1] >= 0) & (scores[:, -1] == scores[:, k - 1])).any():
                fetch = min(2 * fetch, most)
                scores, pos = self.index.search(q, fetch, params=params(fetch))
            return padded(scores, pos, k)
        hamming, pos = self.index.search(self._codes(q), fetch, params=params(fetch))
        pos = pos.astype(np.int64, copy=False)
        if not m:  # cosine of the sign vectors: (dim - 2 * hamming) / dim; padding bits are 0 on both sides
            scores = (1.0 - 2.0 * hamming.astype(np.float32) / self.dim).astype(np.float32)
            return padded(scores, pos, k)
        return rescored(q, pos, self._floats(), k)

    def _same_version(self, given: str | None, what: str) -> None:
        if given is not None and self.vector_version is not None and given != self.vector_version:
            raise ValidationError(
                f"`vector_version` {given!r}: the {what} are not the index's vectors, which are "
                f"{self.vector_version!r} (another model, precision or prefix: its neighbours would be unrelated "
                f"posts). Fix: embed them with an encoder whose vector_version is {self.vector_version!r} "
                "(`postemb index query --text` loads one so), or build an index of their version.")

    def _queries(self, queries) -> np.ndarray:
        """``queries`` checked (``as_vectors``); one of another width is told how the index's were made."""
        try:
            return as_vectors(queries, self.dim, "queries")
        except ValidationError as exc:
            shape = np.shape(queries)
            if not self.vector_version or not shape or shape[-1] == self.dim:
                raise
            nested = re.search(r"@(\d+)(?:\+|$)", self.vector_version)
            how = f"its model, truncate_dim={nested.group(1)}" if nested else "its model, its full width"
            raise ValidationError(f"{exc} The index holds {self.vector_version!r} vectors. Fix: embed the queries as "
                                  f"they were ({how}).") from None

    def search(self, queries, k: int = 10, exclude=(), rescore: int | None = None,
               vector_version: str | None = None) -> list[list[Hit]]:
        """Top-k posts for each query (float32 (q, dim) or (dim,)), best first (equal scores in the
        order the posts were added), as ``Hit(id, score)``; ids in ``exclude`` (e.g. what the member
        already saw) are left out. ``k`` is a cap: a k beyond the index's size returns every post
        (no k-sized arrays are made).
        ``rescore``: as in :meth:`search_positions`. ``vector_version``: the queries' (``Encoder.vector_version``,
        or ``vector_version_at(k)`` for a prefix); another than the index's is refused (a query of another model,
        precision or prefix of the same width would find unrelated posts; the vectors cannot tell)."""
        check_k(k)  # before k grows by the excluded ids
        exclude = set(exclude)
        extra = sum(1 for e in exclude if e in self._pos)
        # never more than the index holds: a k of 10**12 ("all of them") must not size arrays
        scores, pos = self.search_positions(queries, max(1, min(k + extra, len(self))), rescore=rescore,
                                            vector_version=vector_version)
        out = []
        for srow, prow in zip(scores, pos):
            hits = [Hit(self.ids[p], float(s)) for s, p in zip(srow, prow) if p >= 0 and self.ids[p] not in exclude]
            out.append(hits[:k])
        return out

    def vectors_of(self, ids) -> np.ndarray:
        """The stored vectors of ``ids`` as float32 (n, dim); raises ValidationError naming an
        unknown id. A binary index returns the kept float vectors (rescore > 0), else the sign
        vectors scaled to unit norm (+-1/sqrt(dim)): the most its bits say."""
        positions = []
        for i, pid in enumerate(ids):
            if pid not in self._pos:
                raise ValidationError(f"`ids[{i}]` {pid!r} is not in the index.")
            positions.append(self._pos[pid])
        return self.vectors_at(positions)

    def vectors_at(self, positions) -> np.ndarray:
        """:meth:`vectors_of` by row position (0..len-1) instead of id."""
        out = np.empty((len(positions), self.dim), np.float32)
        if self.binary and self.rescore:
            return np.asarray(self._floats()[positions], np.float32).reshape(len(positions), self.dim)
        if self.kind == "ivf" and len(positions) and not self.index.direct_map.type:  # NoMap; adds keep it
            self.index.make_direct_map()
        for i, p in enumerate(positions):
            row = self.index.reconstruct(int(p))
            if self.binary:
                bits = np.unpackbits(np.asarray(row, np.uint8))[: self.dim]
                row = (bits.astype(np.float32) * 2 - 1) / np.sqrt(self.dim)
            out[i] = row
        return out

    def _count_skipped(self, skipped: int, conflicts: list) -> None:
        self.skipped += skipped
        self.conflicts += len(conflicts)
        self.conflict_ids += conflicts[: EXAMPLES - len(self.conflict_ids)]

    def position(self, pid) -> int | None:
        return self._pos.get(pid)

    # -- persistence -------------------------------------------------------------------
    def describe(self) -> dict:
        import faiss

        return {"kind": self.kind, "dim": self.dim, "binary": self.binary, "bits": self.bits,
                "rescore": self.rescore, "count": len(self), "vector_version": self.vector_version,
                "prompt_name": self.prompt_name,
                "bytes_per_post": self.bits // 8 if self.binary else 4 * self.dim,
                "ef_search": self.ef_search, "nprobe": self.nprobe, "nlist": self.nlist, "hnsw_m": HNSW_M,
                "faiss_version": faiss.__version__, "faiss_index": type(self.index).__name__}

    def save(self, folder) -> Path:
        """Save as the folder ``folder`` (``index.faiss``, ``ids.parquet``, ``vectors.npy`` with
        rescoring, ``index.json`` recording each file's size and SHA-256): written beside it, fsynced
        and swapped in whole (``folder.py``), so the folder holds the old index or the whole new one,
        never a mix; saving over the folder this index was loaded from (its ``vectors.npy``
        memory-mapped) is safe. A folder holding other files is refused (ValidationError)."""
        from . import folder as storage

        return storage.write(self, folder)

    @classmethod
    def load(cls, folder, mmap: bool = True) -> "PostIndex":
        """A saved index, its files checked against the sizes and SHA-256s ``index.json`` records
        (folders saved before it recorded them: counts and shapes only); a damaged or mixed folder
        raises one ValidationError naming the file and the fix. ``mmap``: a binary index's float
        vectors (rescoring) are memory-mapped from ``vectors.npy`` (read from disk as queries
        touch them) rather than read in; an ``add`` after loading reads them into memory."""
        from . import folder as storage

        return storage.read(cls, folder, mmap)


def _sample(n: int, m: int) -> np.ndarray:
    """Sorted positions of a uniform sample of min(n, m) of n rows, the same for the same (n, m)."""
    return np.arange(n) if n <= m else np.sort(np.random.default_rng(0).choice(n, m, replace=False))


def _sampled(batches, n: int, rows: np.ndarray) -> np.ndarray:
    """float32 (len(rows), dim): the ``rows`` (sorted positions among n) of ``batches`` ((ids, vectors, _), ...)."""
    out, start = [], 0
    for _, vec, _ in batches:
        lo, hi = np.searchsorted(rows, [start, start + len(vec)])
        out.append(vec[rows[lo:hi] - start])
        start += len(vec)
    return np.concatenate(out)
