"""Greedy and beam-search decoding for the encoder-decoder (`genforge.model.encoder_decoder.Seq2Seq`).

Beam search keeps the K highest-scoring partial targets (sum of token log-probs) per source; a finished beam
(it emitted EOS) keeps its score and only extends with padding at no cost. The final pick divides each score by
length ** length_penalty (Wu et al. 2016 use a smoothed form; 0 = raw sum). With K = 1 it is greedy decoding
(tested). Both read the encoder once and decode through the model's `DecodeCache` (one new token per step).
"""

from __future__ import annotations

import torch

from genforge.model.encoder_decoder import Seq2Seq


def _strip(seq: list[int], eos_id: int) -> list[int]:
    return seq[:seq.index(eos_id)] if eos_id in seq else seq


@torch.no_grad()
def greedy(model: Seq2Seq, src: torch.Tensor, src_mask: torch.Tensor | None, max_new: int, eos_id: int
           ) -> list[list[int]]:
    """Argmax decoding of a batch of sources (B, S): B target id lists (EOS and after removed)."""
    model.eval()
    B = src.shape[0]
    cache = model.start_cache(model.encode(src, src_mask), src_mask)
    tok = torch.full((B, 1), model.config.decoder_start_id, dtype=torch.long, device=src.device)
    out = torch.zeros((B, 0), dtype=torch.long, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    for _ in range(max_new):
        tok = model.decode(tok, cache=cache)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        out = torch.cat([out, tok], 1)
        done |= tok[:, 0] == eos_id
        if done.all():
            break
    return [_strip(row, eos_id) for row in out.tolist()]


@torch.no_grad()
def beam_search(model: Seq2Seq, src: torch.Tensor, src_mask: torch.Tensor | None, max_new: int, eos_id: int,
                beams: int = 4, length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search over a batch of sources (B, S): the best target per source (EOS and after removed)."""
    model.eval()
    B, K, dev = src.shape[0], beams, src.device
    memory = model.encode(src, src_mask).repeat_interleave(K, 0)  # (B*K, S, C)
    mask = src_mask.repeat_interleave(K, 0) if src_mask is not None else None
    cache = model.start_cache(memory, mask)
    scores = torch.full((B, K), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step does not pick duplicates
    seqs = torch.zeros((B * K, 0), dtype=torch.long, device=dev)
    done = torch.zeros(B * K, dtype=torch.bool, device=dev)
    lengths = torch.zeros(B * K, device=dev)
    tok = torch.full((B * K, 1), model.config.decoder_start_id, dtype=torch.long, device=dev)
    for _ in range(max_new):
        logp = torch.log_softmax(model.decode(tok, cache=cache)[:, -1].float(), -1)  # (B*K, V)
        V = logp.shape[-1]
        # a finished beam extends only with EOS again, at log-prob 0 (its score stays fixed)
        frozen = torch.full_like(logp, float("-inf"))
        frozen[:, eos_id] = 0.0
        logp = torch.where(done[:, None], frozen, logp)
        cand = (scores.view(B * K, 1) + logp).view(B, K * V)
        top, idx = cand.topk(K, dim=-1)  # (B, K)
        parent = (idx // V + torch.arange(B, device=dev)[:, None] * K).view(-1)  # (B*K,) rows of the beams kept
        tok = (idx % V).view(-1, 1)
        cache.reorder(parent)
        seqs = torch.cat([seqs[parent], tok], 1)
        lengths = lengths[parent] + (~done[parent]).float()
        done = done[parent] | (tok[:, 0] == eos_id)
        scores = top
        if done.all():
            break
    norm = scores.view(-1) / lengths.clamp(min=1) ** length_penalty
    best = norm.view(B, K).argmax(-1) + torch.arange(B, device=dev) * K
    return [_strip(seqs[i].tolist(), eos_id) for i in best.tolist()]
