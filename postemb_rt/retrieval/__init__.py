"""Retrieval over post embeddings: an ANN index (``PostIndex``, FAISS) and member embeddings
by Ward clustering of engaged posts (``member_embedding``, ``retrieve``). ``sources`` reads the
vectors an index is built from (Parquet, the near-line store). See docs/RETRIEVAL.md.

Needs the ``[scale]`` extra (faiss-cpu, scipy); they are imported on first use, not here.
"""
from .index import Hit, PostIndex, choose_kind
from .members import MemberEmbedding, mean_embedding, member_embedding, quotas, retrieve

__all__ = ["PostIndex", "Hit", "choose_kind", "MemberEmbedding", "member_embedding", "mean_embedding",
           "quotas", "retrieve"]
