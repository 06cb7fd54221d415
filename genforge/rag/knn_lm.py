"""kNN-LM (Khandelwal et al. 2020, "Generalization through Memorization: Nearest Neighbor Language Models").

Datastore: for every position t of a corpus, the key is the LM's final (normed) hidden state at t and
the value is the token at t + 1. At test time the hidden state queries its k nearest keys (squared L2,
as in the paper) and the neighbours' values form
    p_kNN(w) = sum_{i: v_i = w} softmax(-d_i / temperature),
interpolated with the LM:   p = lam * p_kNN + (1 - lam) * p_LM     (eq. 2 of the paper).
Adding text to the datastore changes predictions without training -- "more data at test time".

The hidden state is captured by a forward hook on the model's final norm (`model.norm` in genforge's
GPT; any module name can be given), so the model file is not touched. The datastore is an exact
FAISS `IndexFlatL2` (Johnson et al. 2019); the paper used IVF-PQ at 100M+ keys, which a CPU lesson
does not need. Long texts are split into independent windows of the model's context length.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genforge.errors import CheckpointError, ConfigError
from genforge.extras import require
from genforge.io import atomic_dir


def _windows(ids: list[int], max_len: int) -> list[list[int]]:
    return [ids[i:i + max_len] for i in range(0, max(len(ids) - 1, 1), max_len - 1) if len(ids[i:i + max_len]) > 1]


@torch.inference_mode()
def hidden_and_logits(model: torch.nn.Module, ids: torch.Tensor, hidden_module: str = "norm"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: final hidden states (B, T, C) captured by a hook on `hidden_module`, and logits (B, T, V)."""
    try:
        module = model.get_submodule(hidden_module)
    except AttributeError:
        raise ConfigError(f"model has no module {hidden_module!r} to read hidden states from; set hidden_module "
                          "to the final norm's name") from None
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = model(ids)
    finally:
        handle.remove()
    return captured[-1].float(), logits.float()


class Datastore:
    """FAISS flat L2 index over keys (N, C) with int64 values (N,): the next token after each key's context."""

    def __init__(self, dim: int):
        self.faiss = require("faiss", "rag")
        self.dim = dim
        self.index = self.faiss.IndexFlatL2(dim)
        self.values = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        keys = np.ascontiguousarray(keys, dtype=np.float32)
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ConfigError(f"datastore keys must be (N, {self.dim}), got {keys.shape}; use the same model "
                              "for the datastore and for queries")
        self.index.add(keys)
        self.values = np.concatenate([self.values, np.asarray(values, dtype=np.int64)])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances (M, k), values (M, k)) of the k nearest keys."""
        k = min(k, len(self))
        d, i = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return d, self.values[i]

    def save(self, path: str | Path) -> None:
        with atomic_dir(path) as tmp:
            self.faiss.write_index(self.index, str(Path(tmp) / "keys.faiss"))
            np.save(Path(tmp) / "values.npy", self.values)
            (Path(tmp) / "datastore.json").write_text(json.dumps({"dim": self.dim, "n": len(self)}))

    @classmethod
    def load(cls, path: str | Path) -> Datastore:
        path = Path(path)
        if not (path / "datastore.json").exists():
            raise CheckpointError(f"{path}: no kNN-LM datastore here; build one with build_datastore")
        meta = json.loads((path / "datastore.json").read_text())
        ds = cls(int(meta["dim"]))
        ds.index = ds.faiss.read_index(str(path / "keys.faiss"))
        ds.values = np.load(path / "values.npy")
        return ds


def add_texts(ds: Datastore | None, model: torch.nn.Module, sequences: list[list[int]], max_len: int | None = None,
              hidden_module: str = "norm") -> Datastore:
    """Add (hidden state at t, token t+1) for every position of every sequence; creates the store if None."""
    max_len = max_len or model.config.max_seq_len
    model.eval()
    for seq in sequences:
        for w in _windows(seq, max_len):
            h, _ = hidden_and_logits(model, torch.tensor([w]), hidden_module)  # (1, T, C)
            if ds is None:
                ds = Datastore(h.shape[-1])
            ds.add(h[0, :-1].numpy(), np.asarray(w[1:]))  # keys predict the *next* token
    if ds is None:
        raise ConfigError("kNN-LM datastore: no sequence with at least 2 tokens")
    return ds


def knn_log_probs(ds: Datastore, queries: torch.Tensor, vocab_size: int, k: int, temperature: float = 1.0
                  ) -> torch.Tensor:
    """log p_kNN (M, V) from the k nearest neighbours of queries (M, C)."""
    d, v = ds.search(queries.numpy(), k)  # (M, k) squared L2, (M, k) token ids
    w = torch.softmax(-torch.from_numpy(d) / temperature, dim=-1)  # (M, k)
    p = torch.zeros(queries.shape[0], vocab_size, dtype=torch.float32)
    p.scatter_add_(1, torch.from_numpy(v), w)  # neighbours with the same next token add up
    return torch.log(p)  # -inf where no neighbour votes


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per token (nats)
    tokens: int
    lm_ms_per_token: float
    knn_ms_per_token: float  # extra cost of the datastore search and mixing


def perplexity(model: torch.nn.Module, sequences: list[list[int]], ds: Datastore | None = None, lam: float = 0.25,
               k: int = 16, temperature: float = 1.0, max_len: int | None = None, hidden_module: str = "norm"
               ) -> PerplexityResult:
    """Perplexity of `sequences` under p = lam * p_kNN + (1 - lam) * p_LM (plain LM when ds is None)."""
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"kNN-LM lambda must be in [0, 1], got {lam}")
    if ds is not None and len(ds) == 0:
        raise ConfigError("kNN-LM datastore is empty; add texts before measuring perplexity")
    max_len = max_len or model.config.max_seq_len
    model.eval()
    total, n, t_lm, t_knn = 0.0, 0, 0.0, 0.0
    for seq in sequences:
        for w in _windows(seq, max_len):
            t0 = time.perf_counter()
            h, logits = hidden_and_logits(model, torch.tensor([w]), hidden_module)
            lp = F.log_softmax(logits[0, :-1], dim=-1)  # (T-1, V): position t predicts w[t+1]
            t1 = time.perf_counter()
            if ds is not None:
                lk = knn_log_probs(ds, h[0, :-1], lp.shape[-1], k, temperature)
                # log(lam p_kNN + (1-lam) p_LM) computed stably; lam=0 gives log p_LM exactly
                lp = torch.logaddexp(lk + math.log(lam) if lam > 0 else torch.full_like(lk, -math.inf),
                                     lp + math.log1p(-lam) if lam < 1 else torch.full_like(lp, -math.inf))
            t_knn += time.perf_counter() - t1
            t_lm += t1 - t0
            tgt = torch.tensor(w[1:])
            total -= float(lp.gather(1, tgt[:, None]).sum())
            n += len(w) - 1
    if n == 0:
        raise ConfigError("perplexity: no sequence with at least 2 tokens")
    return PerplexityResult(math.exp(total / n), total / n, n, 1e3 * t_lm / n, 1e3 * t_knn / n)


def sweep(model: torch.nn.Module, sequences: list[list[int]], ds: Datastore, lams: tuple[float, ...] = (0.0, 0.1,
          0.25, 0.5), ks: tuple[int, ...] = (8, 32), temperature: float = 1.0, max_len: int | None = None,
          hidden_module: str = "norm") -> list[dict]:
    """Perplexity for every (lambda, k); lambda = 0 is the LM alone (the baseline row).

    One forward pass and one search at the largest k per window serve every (lambda, k): FAISS returns
    neighbours nearest first, so the top-k of a smaller k is a prefix, and perplexity needs p_kNN of the true
    next token only (sum of the weights of the neighbours whose value is that token). Equal to calling
    `perplexity` for each pair (tested), at 1/(len(lams) * len(ks)) of the cost.
    """
    for lam in lams:
        if not 0.0 <= lam <= 1.0:
            raise ConfigError(f"kNN-LM lambda must be in [0, 1], got {lam}")
    if len(ds) == 0:
        raise ConfigError("kNN-LM datastore is empty; add texts before measuring perplexity")
    max_len = max_len or model.config.max_seq_len
    model.eval()
    kmax = min(max(ks), len(ds))
    total = {(lam, k): 0.0 for k in ks for lam in lams}
    n, t_lm, t_knn = 0, 0.0, 0.0
    for seq in sequences:
        for w in _windows(seq, max_len):
            t0 = time.perf_counter()
            h, logits = hidden_and_logits(model, torch.tensor([w]), hidden_module)
            tgt = torch.tensor(w[1:])  # (T-1,)
            lp_t = F.log_softmax(logits[0, :-1], dim=-1).gather(1, tgt[:, None])[:, 0].double()  # (T-1,) log p_LM
            t1 = time.perf_counter()
            d, v = ds.search(h[0, :-1].numpy(), kmax)  # (T-1, kmax), nearest first
            d, hit = torch.from_numpy(d).double(), torch.from_numpy(v) == tgt[:, None]  # (T-1, kmax)
            for k in ks:
                kk = min(k, kmax)
                wts = torch.softmax(-d[:, :kk] / temperature, dim=-1)  # (T-1, kk)
                log_pk = torch.log((wts * hit[:, :kk]).sum(1))  # (T-1,) -inf where no neighbour votes for it
                for lam in lams:
                    a = log_pk + math.log(lam) if lam > 0 else torch.full_like(log_pk, -math.inf)
                    b = lp_t + math.log1p(-lam) if lam < 1 else torch.full_like(lp_t, -math.inf)
                    total[(lam, k)] -= float(torch.logaddexp(a, b).sum())
            t_knn += time.perf_counter() - t1
            t_lm += t1 - t0
            n += len(w) - 1
    if n == 0:
        raise ConfigError("perplexity: no sequence with at least 2 tokens")
    return [{"lambda": lam, "k": k, "ppl": math.exp(total[(lam, k)] / n), "nll": total[(lam, k)] / n, "tokens": n,
             "lm_ms_per_token": 1e3 * t_lm / n, "knn_ms_per_token": 1e3 * t_knn / n}
            for k in ks for lam in lams]
