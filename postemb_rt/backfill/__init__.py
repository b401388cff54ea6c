"""Batch backfill on Ray Data: every post of a folder of Parquet or JSONL files -> Parquet embeddings.

    input/2024/01/a.parquet                      output/2024/01/a.parquet/part-00000.parquet   (id, embedding, model_version)
    input/2024/01/b.jsonl          backfill ->   output/2024/01/b.jsonl/part-00000.parquet
                                                 output/2024/01/b.jsonl/_errors-00000.jsonl    (bad rows and why)
                                                 output/2024/01/b.jsonl/_SUCCESS.json          (counts, source size/mtime)

The unit of work is a *split*: a run of Parquet row groups (about ``rows_per_split`` rows; a bigger group is cut) or
a byte range of a JSONL file (lines belong to the split they start in). The driver lists
the splits, ``ray.data.from_items`` makes one row per split, and ``map_batches`` runs them
on a pool of actors (``ActorPoolStrategy``), each of which loads the model once and then,
per split: reads it, checks every row, embeds the good ones with ``Encoder.encode``,
writes ``part-NNNNN.parquet`` (and ``_errors-NNNNN.jsonl`` when some rows were bad) under
``output/_staging/<file>/`` by write-then-rename, and returns one summary row. Ray Data does
the scheduling, backpressure, actor restarts and task retries; the driver only sees the
summaries (a few bytes per split), never the embeddings.

Resuming and duplicates: a split's name is fixed by its position in the file, so a retried
or repeated split rewrites the same file instead of adding one. When every split of an
input file is done, the driver writes ``_SUCCESS.json`` and renames the staging folder into
place (one ``rename``: the file's embeddings appear all at once or not at all). A re-run
skips input files whose output has ``_SUCCESS.json``, and reuses the finished splits of a
file that was interrupted half-way (each part is complete: parts are renamed into place
only once written). The staging folder's ``_source.json`` records what its parts were made
from: the source's size and mtime, the model (version and content fingerprint) and the
split plan. A resumed run with another model is refused (naming both); a changed source
or split plan (``rows_per_split``) restarts that file, so parts of two plans are never
mixed. Before a commit the rows are counted against the input (Parquet: the footer;
JSONL: its non-blank lines). Every file is written by ``postemb_rt.durable`` (temporary
name, fsync, rename, fsync of the folder), and so is the commit's rename. Readers of ``output/`` (pyarrow, ``postemb index build``) ignore
``_staging/`` and every ``_``- or ``.``-prefixed file, so they see committed files only.

Paths must be visible under the same name to every Ray node (a shared file system) and
support an atomic ``rename`` (POSIX, NFS, Lustre); object stores (S3) are not supported.

Modules: ``plan`` (listing the input files and cutting them into splits), ``splits`` (the
Ray actor: reading, checking and embedding one split), ``resume`` (what an output already
holds: the model, prompt, input columns and id type a run must share with it), ``run`` (the driver:
``backfill``, committing, the report). The names below are the public API.
"""
from .plan import FORMATS, ROWS_PER_SPLIT, STAGING, SUCCESS, FilePlan, Split, jsonl_rows, list_inputs, part_name, plan_file
from .run import BackfillError, BackfillReport, backfill, resolve_model_version
from .splits import SplitEmbedder, embeddings_table

__all__ = ["backfill", "BackfillError", "BackfillReport", "resolve_model_version", "plan_file", "list_inputs",
           "jsonl_rows", "part_name", "embeddings_table", "SplitEmbedder", "Split", "FilePlan", "FORMATS",
           "ROWS_PER_SPLIT", "STAGING", "SUCCESS"]
