"""Mask-predict: non-autoregressive decoding with a conditional masked LM (Ghazvininejad et al. 2019, sec. 3).

The model is a `Seq2Seq` with `decoder_causal=False` and a length head. For each source:

1. predict the target length L from the encoder (top `length_beam` lengths are each decoded; the candidate with
   the best mean log-probability wins, sec. 3.3);
2. iteration 0: the decoder sees L [MASK]s and predicts every position at once;
3. iteration t = 1 .. N-1: re-mask the n = L * (N - t) / N least confident tokens and predict them again
   (the others keep their tokens and confidences); confidence of a re-predicted token is its new probability.

With N = 1 every token is chosen independently given only the source, so two positions can both pick the same
likely word: the "multi-modality" problem shows as repeated tokens ("la la pana"). Each further iteration
conditions the re-predicted tokens on the rest and repairs most of it (`repeat_rate` measures this).
"""

from __future__ import annotations

import torch

from genforge.model.encoder_decoder import Seq2Seq


@torch.no_grad()
def mask_predict(model: Seq2Seq, src: torch.Tensor, src_mask: torch.Tensor, mask_id: int, iterations: int = 4,
                 length_beam: int = 1, max_len: int | None = None) -> list[list[int]]:
    """Decode a batch of sources (B, S) in `iterations` parallel steps; returns B target id lists."""
    model.eval()
    B = src.shape[0]
    memory = model.encode(src, src_mask)  # (B, S, C)
    len_logits = model.length_logits(memory, src_mask)  # (B, Lmax+1)
    len_logits[:, 0] = float("-inf")  # at least one token
    if max_len is not None:
        len_logits[:, max_len + 1:] = float("-inf")
    lengths = len_logits.topk(length_beam, -1).indices  # (B, lb)
    best: list[tuple[float, list[int]]] = [(float("-inf"), [])] * B
    for j in range(length_beam):
        L = lengths[:, j]  # (B,)
        T = int(L.max())
        real = torch.arange(T, device=src.device)[None, :] < L[:, None]  # (B, T)
        tokens = torch.full((B, T), mask_id, dtype=torch.long, device=src.device)
        probs = torch.zeros(B, T, device=src.device)
        masked = real.clone()
        for t in range(iterations):
            logp = torch.log_softmax(model.decode(tokens, memory, src_mask, decoder_mask=real).float(), -1)
            logp[..., mask_id] = float("-inf")  # never predict the mask itself
            p, y = logp.max(-1)  # (B, T)
            tokens = torch.where(masked, y, tokens)
            probs = torch.where(masked, p.exp(), probs)
            if t == iterations - 1:
                break
            n = (L.float() * (iterations - 1 - t) / iterations).long()  # (B,) how many to re-mask
            conf = probs.masked_fill(~real, float("inf"))  # padding is never re-masked
            order = conf.argsort(-1)  # least confident first
            rank = order.argsort(-1)  # rank of each position in that order
            masked = (rank < n[:, None]) & real
            tokens = tokens.masked_fill(masked, mask_id)
        score = (probs.clamp(min=1e-12).log() * real).sum(-1) / L.float()  # mean log-prob per candidate
        for b in range(B):
            if score[b].item() > best[b][0]:
                best[b] = (score[b].item(), tokens[b, :int(L[b])].tolist())
    return [seq for _, seq in best]


def repeat_rate(seqs: list[list[int]]) -> float:
    """Share of tokens equal to the token before them (consecutive repeats): NAT's multi-modality symptom."""
    pairs = sum(max(0, len(s) - 1) for s in seqs)
    reps = sum(a == b for s in seqs for a, b in zip(s, s[1:]))
    return reps / max(1, pairs)
