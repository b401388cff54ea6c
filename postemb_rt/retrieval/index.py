"""``PostIndex``: approximate nearest neighbours over post embeddings (FAISS, inner product).

Embeddings are unit L2 rows, so inner product = cosine. The FAISS index is chosen by size
(``kind="auto"``, decided when the index is built, from ``expected_size`` or the first
batch; later adds keep it):

| posts | kind | why |
|---|---|---|
| <= 20,000 | ``flat`` (IndexFlatIP) | exact; a query reads n*dim*4 bytes (4 MB at 20k x 50): well under 1 ms |
| <= 2,000,000 | ``hnsw`` (IndexHNSWFlat, M=32) | no training, incremental adds, recall@10 >= 0.95 at efSearch 128; +M*2*4 = 256 bytes/post of links |
| larger | ``ivf`` (IndexIVFFlat, nlist = 4*sqrt(n)) | cheaper to build and smaller than HNSW; trained once on the first 256*nlist vectors |

Post ids are arbitrary (int or str): FAISS stores row positions 0..n-1 and ``ids[pos]`` maps
them back. Adding an id already present is skipped (an embedding is a pure function of
(text, model version), so it is the same vector); ``add`` returns how many were new.

Saved as a folder: ``index.faiss`` (faiss.write_index), ``ids.parquet`` (one column ``id``,
its Arrow type kept), ``index.json`` (kind, dim, count, parameters, model version, faiss
version). ``faiss`` is imported here only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ValidationError

KINDS = ("auto", "flat", "hnsw", "ivf")
FLAT_MAX = 20_000
HNSW_MAX = 2_000_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
IVF_NPROBE = 64
UNIT_TOLERANCE = 1e-3  # |norm - 1| allowed on input rows


def choose_kind(n: int) -> str:
    """The kind ``auto`` picks for an index expected to hold ``n`` posts (see the table above)."""
    return "flat" if n <= FLAT_MAX else "hnsw" if n <= HNSW_MAX else "ivf"


def ivf_nlist(n: int) -> int:
    return max(16, int(4 * math.sqrt(max(n, 1))))


def _as_vectors(vectors, dim: int | None, name: str = "vectors") -> np.ndarray:
    v = np.asarray(vectors)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or (dim is not None and v.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, dim)"
        raise ValidationError(f"`{name}` must have shape {want}. Given: {v.shape}.")
    if not np.issubdtype(v.dtype, np.floating):
        raise ValidationError(f"`{name}` must be float32. Given: {v.dtype}.")
    v = np.ascontiguousarray(v, dtype=np.float32)
    if len(v):
        norms = np.linalg.norm(v, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1) > UNIT_TOLERANCE)
        if len(bad):
            raise ValidationError(
                f"`{name}` must be unit L2 rows (the encoder's output). Given: row {int(bad[0])} has norm "
                f"{norms[bad[0]]:.4g}. Fix: v / np.linalg.norm(v, axis=1, keepdims=True).")
    return v


@dataclass
class Hit:
    id: object
    score: float  # inner product = cosine


class PostIndex:
    """An ANN index over unit post embeddings. Build with :meth:`build`, :meth:`from_parquet`,
    :meth:`from_redis`, or ``PostIndex(dim, kind)`` + :meth:`add`; persist with :meth:`save` /
    :meth:`load`; query with :meth:`search`."""

    def __init__(self, dim: int, kind: str = "auto", *, expected_size: int | None = None,
                 model_version: str | None = None, ef_search: int = HNSW_EF_SEARCH, nprobe: int = IVF_NPROBE,
                 nlist: int | None = None):
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
        self.dim, self.kind, self.model_version = dim, kind, model_version
        self.ef_search, self.nprobe = ef_search, nprobe
        self.nlist = nlist or (ivf_nlist(expected_size or 0) if kind == "ivf" else 0)
        if kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        else:
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self.ids: list = []
        self._pos: dict = {}

    # -- building ----------------------------------------------------------------------
    @classmethod
    def build(cls, ids, vectors, kind: str = "auto", model_version: str | None = None, **params) -> "PostIndex":
        """An index over ``vectors`` float32 (n, dim) unit rows with ``ids`` (n,), kind by size."""
        v = _as_vectors(vectors, None)
        idx = cls(v.shape[1], kind, expected_size=len(v), model_version=model_version, **params)
        idx.add(ids, v)
        return idx

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids, vectors) -> int:
        """Add posts: ``ids`` (n,) int or str, ``vectors`` float32 (n, dim) unit rows. Ids already
        in the index (or repeated in ``ids``) are skipped. IVF trains on its first add, which
        must then hold at least 39 * nlist vectors. Returns the number added."""
        v = _as_vectors(vectors, self.dim)
        ids = list(ids)
        if len(ids) != len(v):
            raise ValidationError(f"`ids` and `vectors` must have the same length. Given: {len(ids)} and {len(v)}.")
        keep = []
        for i, pid in enumerate(ids):
            if pid is None:
                raise ValidationError(f"`ids[{i}]` must be an int or str. Given: None.")
            if pid not in self._pos:
                self._pos[pid] = len(self.ids) + len(keep)
                keep.append(i)
        if not keep:
            return 0
        if len(keep) < len(ids):
            v = v[keep]
            ids = [ids[i] for i in keep]
        if self.kind == "ivf" and not self.index.is_trained:
            if len(v) < 39 * self.nlist:
                for pid in ids:
                    del self._pos[pid]
                raise ValidationError(
                    f"an IVF index with nlist={self.nlist} trains on its first add, which needs >= {39 * self.nlist} "
                    f"vectors. Given: {len(v)}. Fix: add more at once, a smaller nlist, or kind='hnsw'.")
            self.index.train(v[: 256 * self.nlist])
        self.index.add(v)
        self.ids.extend(ids)
        return len(ids)

    @classmethod
    def from_parquet(cls, path, kind: str = "auto", batch_rows: int = 65_536, **params) -> "PostIndex":
        """An index over Parquet embeddings (``postemb backfill`` / ``postemb embed`` output: columns
        ``id``, ``embedding`` fixed-size list<float32>, ``model_version``): a file or a folder
        (read recursively; ``_``/``.``-prefixed files and folders ignored). One model version only."""
        import pyarrow.dataset as pads

        ds = pads.dataset(str(path), format="parquet")
        names = ds.schema.names
        if "id" not in names or "embedding" not in names:
            raise ValidationError(f"`path` {str(path)!r} needs columns `id` and `embedding`. Given columns: {names}.")
        n = ds.count_rows()
        if n == 0:
            raise ValidationError(f"`path` {str(path)!r} holds no embeddings.")
        cols = ["id", "embedding"] + (["model_version"] if "model_version" in names else [])
        idx: PostIndex | None = None
        pending_ids, pending_v = [], []
        for batch in ds.to_batches(columns=cols, batch_size=batch_rows):
            if batch.num_rows == 0:
                continue
            emb = batch.column("embedding")
            dim = emb.type.list_size if hasattr(emb.type, "list_size") and emb.type.list_size > 0 else len(emb[0])
            vec = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
            mv = None
            if "model_version" in cols:
                versions = set(batch.column("model_version").to_pylist())
                if len(versions) != 1:
                    raise ValidationError(f"`path` {str(path)!r} mixes model versions {sorted(map(str, versions))}. "
                                          "Fix: build one index per model version.")
                mv = versions.pop()
            if idx is None:
                idx = cls(dim, kind, expected_size=n, model_version=mv, **params)
            elif mv is not None and idx.model_version is not None and mv != idx.model_version:
                raise ValidationError(f"`path` {str(path)!r} mixes model versions {idx.model_version!r} and {mv!r}. "
                                      "Fix: build one index per model version.")
            pending_ids += batch.column("id").to_pylist()
            pending_v.append(vec)
            need = 256 * idx.nlist if idx.kind == "ivf" and not idx.index.is_trained else 0
            if sum(len(p) for p in pending_v) >= need:
                idx.add(pending_ids, np.concatenate(pending_v))
                pending_ids, pending_v = [], []
        if pending_v:
            idx.add(pending_ids, np.concatenate(pending_v))
        return idx

    @classmethod
    def from_redis(cls, client, model_version: str, kind: str = "auto", prefix: str | None = None,
                   scan_count: int = 1000, **params) -> "PostIndex":
        """An index over the near-line store (``postemb_rt.nearline``): every hash at
        ``{prefix}:{model_version}:*``. ``client``: a redis-py client or a ``redis://`` URL.
        Reads in SCAN pages of ``scan_count`` keys, one pipeline each."""
        from .. import nearline

        if isinstance(client, str):
            client = nearline.connect(client)
        prefix = prefix or nearline.KEY_PREFIX
        ids, vecs = [], []
        for keys in _scan_pages(client, f"{nearline.store_key(model_version, '', prefix)}*", scan_count):
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, "post_id", "vector")
            for pid, vec in pipe.execute():
                if pid is None or vec is None:
                    continue  # deleted between SCAN and HMGET, or not an embedding record
                ids.append(pid.decode())
                vecs.append(np.frombuffer(vec, dtype="<f4"))
        if not ids:
            raise ValidationError(f"the store holds no embeddings of model {model_version!r} "
                                  f"(keys {prefix}:{model_version}:*). Fix: check `model_version`.")
        return cls.build(ids, np.stack(vecs).astype(np.float32), kind=kind, model_version=model_version, **params)

    # -- querying ----------------------------------------------------------------------
    def search_positions(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw search: ``queries`` float32 (q, dim) unit rows -> (scores float32 (q, k),
        positions int64 (q, k)); position -1 (score -inf) where fewer than k posts were found."""
        import faiss

        q = _as_vectors(queries, self.dim, "queries")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValidationError(f"`k` must be a positive int. Given: {k!r}.")
        if len(self) == 0 or len(q) == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
        elif self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=min(self.nprobe, self.nlist))
        else:
            params = None
        scores, pos = self.index.search(q, int(k), params=params)
        scores[pos < 0] = -np.inf
        return scores, pos

    def search(self, queries, k: int = 10, exclude=()) -> list[list[Hit]]:
        """Top-k posts for each query (float32 (q, dim) or (dim,)), best first, as ``Hit(id,
        score)``; ids in ``exclude`` (e.g. what the member already saw) are left out."""
        exclude = set(exclude)
        extra = sum(1 for e in exclude if e in self._pos)
        scores, pos = self.search_positions(queries, k + extra)
        out = []
        for srow, prow in zip(scores, pos):
            hits = [Hit(self.ids[p], float(s)) for s, p in zip(srow, prow) if p >= 0 and self.ids[p] not in exclude]
            out.append(hits[:k])
        return out

    def vectors_of(self, ids) -> np.ndarray:
        """The stored vectors of ``ids`` as float32 (n, dim); raises ValidationError naming an
        unknown id."""
        out = np.empty((len(ids), self.dim), np.float32)
        if self.kind == "ivf" and len(ids):
            self.index.make_direct_map()
        for i, pid in enumerate(ids):
            if pid not in self._pos:
                raise ValidationError(f"`ids[{i}]` {pid!r} is not in the index.")
            out[i] = self.index.reconstruct(self._pos[pid])
        return out

    def position(self, pid) -> int | None:
        return self._pos.get(pid)

    # -- persistence -------------------------------------------------------------------
    def describe(self) -> dict:
        import faiss

        return {"kind": self.kind, "dim": self.dim, "count": len(self), "model_version": self.model_version,
                "ef_search": self.ef_search, "nprobe": self.nprobe, "nlist": self.nlist, "hnsw_m": HNSW_M,
                "faiss_version": faiss.__version__, "faiss_index": type(self.index).__name__}

    def save(self, folder) -> Path:
        """Write ``index.faiss``, ``ids.parquet`` and ``index.json`` into ``folder`` (created)."""
        import faiss
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / "index.faiss"))
        pq.write_table(pa.table({"id": pa.array(self.ids)}), folder / "ids.parquet")
        (folder / "index.json").write_text(json.dumps(self.describe(), indent=1))
        return folder

    @classmethod
    def load(cls, folder) -> "PostIndex":
        import faiss
        import pyarrow.parquet as pq

        folder = Path(folder)
        meta_path = folder / "index.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"`index` {str(folder)!r} is not a saved PostIndex (no index.json). "
                                    "Fix: build one with `postemb index build`.")
        meta = json.loads(meta_path.read_text())
        idx = cls.__new__(cls)
        idx.dim, idx.kind, idx.model_version = meta["dim"], meta["kind"], meta["model_version"]
        idx.ef_search, idx.nprobe, idx.nlist = meta["ef_search"], meta["nprobe"], meta["nlist"]
        idx.index = faiss.read_index(str(folder / "index.faiss"))
        idx.ids = pq.read_table(folder / "ids.parquet").column("id").to_pylist()
        idx._pos = {pid: i for i, pid in enumerate(idx.ids)}
        if idx.index.ntotal != len(idx.ids) or idx.index.d != idx.dim:
            raise ValidationError(f"`index` {str(folder)!r} is inconsistent: {idx.index.ntotal} vectors of dim "
                                  f"{idx.index.d}, {len(idx.ids)} ids, index.json says dim {idx.dim}. Fix: rebuild it.")
        return idx


def _scan_pages(client, match: str, count: int):
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor=cursor, match=match, count=count)
        if keys:
            yield keys
        if cursor == 0:
            return
