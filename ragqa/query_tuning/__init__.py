"""A tuned query encoder: the index's embedder fine-tuned on the QUESTION side only (`ragqa query-encoder train`),
against the fixed passage vectors the index already holds; used with `retrieval.query_encoder_weights`.

Why the query side only: the passages stay as indexed (no re-embedding), a query costs what it cost before, and at
MedQuAD scale on CPU it lifted dense recall@1 where a cross-encoder reranker trained on the same questions did not
learn (see README, "Tuning the query encoder").

Public API:
    ragqa.query_tuning.registry          -> where tuned query encoders live (import-light)
    ragqa.query_tuning.model             -> resolve, check against an index and load one (inference)
    ragqa.query_tuning.train             -> training (imports ragqa.train; never needed at inference)
"""
