"""Fine-tuning the post-embedding model (multi-task pair training) and its offline evaluation.

Needs the ``[train]`` extra (scikit-learn, for the evaluation probes). Imported only by
``postemb train`` / ``postemb eval``; the runtime never imports it.
"""
