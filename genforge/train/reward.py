"""Reward model: a GPT trunk + scalar head trained with Bradley–Terry on ranked completions (`genforge reward`).

Data: JSONL rows `{"prompt", "completions": [...], "ranking": [best ... worst indices]}` (the world's
`preferences.jsonl`) or pairs `{"prompt", "chosen", "rejected"}`. A ranked list of K completions gives
K(K-1)/2 (better, worse) pairs; as in InstructGPT (Ouyang et al. 2022, sec. 3.5) all completions of a
prompt go into the same batch and are scored once, so every pair costs no extra forward pass.
Reported: held-out pairwise accuracy (the share of held-out pairs the model orders like the labels).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genforge.checkpoint import load_checkpoint, write_checkpoint_files
from genforge.config import save_resolved, to_dict
from genforge.errors import DataError
from genforge.io import read_jsonl
from genforge.model.heads import RewardModel
from genforge.tokenizer import Tokenizer
from genforge.train.rl_losses import bradley_terry_loss, ranking_pairs
from genforge.train.rollout import encode_prompt, encode_response, in_batch_order, make_batch, trimmed_groups
from genforge.train.trainer import TrainConfig, Trainer

# ---------------------------------------------------------------------------- data


@dataclass
class RankedPrompt:
    """One prompt with completions ranked best to worst; `where` is file:line for error messages."""

    prompt: str
    completions: list[str]
    ranking: list[int]
    where: str = ""
    scores: list[float] | None = None  # the labeller's scores per completion, when known (ties make no pair)

    def pair_indices(self, min_gap: float = 0.0) -> list[tuple[int, int]]:
        """(better, worse) completion indices of every pair of the ranking; with scores, pairs whose scores
        differ by no more than `min_gap` (ties at 0) are left out."""
        pairs = ranking_pairs(self.ranking)
        if self.scores is None:
            return pairs
        return [(a, b) for a, b in pairs if self.scores[a] - self.scores[b] > min_gap]

    def pairs(self) -> list[tuple[str, str]]:
        """(better, worse) completion texts, every (untied) pair of the ranking."""
        return [(self.completions[a], self.completions[b]) for a, b in self.pair_indices()]


def parse_preference(obj: dict, where: str) -> RankedPrompt:
    """Validate one preference row (ranked list or chosen/rejected pair); errors name `where` (file:line)."""
    if not isinstance(obj.get("prompt"), str):
        raise DataError(f'{where}: expected "prompt" to be a string')
    if "chosen" in obj or "rejected" in obj:
        if not (isinstance(obj.get("chosen"), str) and isinstance(obj.get("rejected"), str)):
            raise DataError(f'{where}: a pair needs string fields "chosen" and "rejected"')
        completions, ranking = [obj["chosen"], obj["rejected"]], [0, 1]
    else:
        completions, ranking = obj.get("completions"), obj.get("ranking", None)
        if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
            raise DataError(f'{where}: expected "completions" to be a list of strings (or "chosen"/"rejected")')
        if len(completions) < 2:
            raise DataError(f"{where}: {len(completions)} completion(s); ranking needs at least 2 to compare")
        ranking = list(range(len(completions))) if ranking is None else ranking
        if sorted(ranking) != list(range(len(completions))):
            raise DataError(f'{where}: "ranking" must list each completion index 0..{len(completions) - 1} once, '
                            f"best first; got {ranking}")
    seen: dict[str, int] = {}
    for i, c in enumerate(completions):
        if c.strip() in seen:
            what = "chosen and rejected are" if len(completions) == 2 else f"completions {seen[c.strip()]} and {i} are"
            raise DataError(f"{where}: {what} identical; a preference needs two different answers")
        seen[c.strip()] = i
    return RankedPrompt(obj["prompt"], list(completions), list(ranking), where)


def read_preferences(path: str | Path) -> list[RankedPrompt]:
    """All rows of a preference JSONL file, validated (DataError with file:line on the first bad row)."""
    rows = [parse_preference(obj, f"{path}:{line}") for line, obj in read_jsonl(path, required=("prompt",))]
    if not rows:
        raise DataError(f"{path}: no preference rows")
    return rows


def split_holdout(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out) by prompt, deterministic in seed; at least one row on each side when possible."""
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    n_val = min(len(rows) - 1, max(1, round(fraction * len(rows)))) if len(rows) > 1 else 0
    val = set(idx[:n_val])
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]


def batch_indices(n: int, batch: int, index: int, seed: int) -> list[int]:
    """Items of the `index`-th batch of `batch` items when epochs are reshuffled (seed, epoch) permutations.

    A pure function of its arguments, as the trainer's data contract requires (resume is exact).
    """
    per_epoch = max(1, n // batch)
    epoch, k = divmod(index, per_epoch)
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[(k * batch + j) % n] for j in range(batch)]


class RankedData:
    """Tokenized ranked prompts; a batch is every completion of `micro_batch` prompts plus their pair indices."""

    def __init__(self, rows: list[RankedPrompt], tok: Tokenizer, micro_batch: int, max_len: int, seed: int = 0,
                 grad_accum: int = 1, min_gap: float = 0.0):
        self.groups = [(encode_prompt(tok, r.prompt), [encode_response(tok, c) for c in r.completions],
                        r.pair_indices(min_gap)) for r in rows if r.pair_indices(min_gap)]
        self.micro_batch, self.max_len, self.seed, self.pad_id = micro_batch, max_len, seed, tok.pad_id
        self.grad_accum = grad_accum

    def collate(self, groups: list) -> dict:
        prompts, responses, pairs = [], [], []
        for prompt, completions, pair_idx in groups:
            base = len(responses)
            prompts += [prompt] * len(completions)
            responses += completions
            pairs += [(base + a, base + b) for a, b in pair_idx]
        batch = make_batch(prompts, responses, self.pad_id, self.max_len)
        batch["pairs"] = torch.tensor(pairs, dtype=torch.long)  # (P, 2) row of the better, row of the worse
        return batch

    def get_batch(self, step: int, micro: int, rank: int, world: int) -> dict:
        index = (step * self.grad_accum + micro) * world + rank
        return self.collate([self.groups[i] for i in batch_indices(len(self.groups), self.micro_batch, index,
                                                                   self.seed)])

    def eval_batches(self) -> list[dict]:
        return [self.collate(self.groups[i:i + self.micro_batch]) for i in range(0, len(self.groups),
                                                                                  self.micro_batch)]


# ---------------------------------------------------------------------------- loss and eval



def load_reward_model(folder: str | Path, device: str | torch.device = "cpu") -> RewardModel:
    """A reward model folder: the trunk (any checkpoint folder) + score_head.safetensors beside it."""
    from safetensors.torch import load_file

    from genforge.checkpoint import load_model
    from genforge.errors import CheckpointError
    from genforge.model.heads import SCORE_HEAD_FILE

    f = Path(folder) / SCORE_HEAD_FILE
    if not f.exists():
        raise CheckpointError(f"{f}: not found; {folder} is not a reward model (train one with `genforge reward`)")
    return RewardModel.from_trunk(load_model(folder, device), load_file(str(f))).to(device).eval()


def rm_scores(model: RewardModel, batch: dict, trim: bool = False) -> torch.Tensor:
    """Scores (B,) of the rows of a `make_batch` batch.

    trim: score rows of similar length together, each group without the columns that are padding in all its rows
    (`rollout.length_groups`); the same scores up to float rounding."""
    groups = trimmed_groups(batch) if trim else None
    if groups is None:
        return model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    parts = [model(batch["input_ids"][idx, lo:hi], batch["attention_mask"][idx, lo:hi],
                   batch["position_ids"][idx, lo:hi]) for idx, lo, hi in groups]  # (n,) each
    return in_batch_order(parts, groups)  # (B,)


def make_bt_loss_fn(trim: bool = False):
    """The Bradley–Terry trainer loss (trim: see `rm_scores`)."""
    def loss_fn(model: RewardModel, batch: dict) -> tuple[torch.Tensor, int, dict]:
        """Trainer loss: Bradley–Terry summed over every pair in the batch, with the pair count."""
        scores = rm_scores(model, batch, trim)  # (B,)
        better, worse = scores[batch["pairs"][:, 0]], scores[batch["pairs"][:, 1]]  # (P,)
        loss = bradley_terry_loss(better, worse).sum()
        return loss, len(better), {"pair_acc": (better > worse).float().mean().item(),
                                   "margin": (better - worse).mean().item()}
    return loss_fn


bt_loss_fn = make_bt_loss_fn()


@torch.no_grad()
def pairwise_accuracy(model: RewardModel, data: RankedData) -> dict:
    """Held-out pairwise accuracy, mean Bradley–Terry loss and mean margin over every held-out pair."""
    dev = next(model.parameters()).device
    correct = total = 0
    loss = margin = 0.0
    for batch in data.eval_batches():
        scores = rm_scores(model, {k: v.to(dev) for k, v in batch.items()})
        better, worse = scores[batch["pairs"][:, 0]], scores[batch["pairs"][:, 1]]
        correct += int((better > worse).sum())
        total += len(better)
        loss += float(bradley_terry_loss(better, worse).sum())
        margin += float((better - worse).sum())
    n = max(total, 1)
    return {"val_pair_acc": correct / n, "val_bt_loss": loss / n, "val_margin": margin / n, "val_pairs": total}


@torch.no_grad()
def score_responses(model: RewardModel, prompts: list[list[int]], responses: list[list[int]], pad_id: int = 0,
                    chunk: int = 32, trim: bool = False) -> torch.Tensor:
    """Reward-model scores (N,) for prompt/response id lists (used as the PPO reward; trim: see `rm_scores`)."""
    dev = next(model.parameters()).device
    max_len = model.trunk.config.max_seq_len
    out = []
    for i in range(0, len(prompts), chunk):
        b = make_batch(prompts[i:i + chunk], responses[i:i + chunk], pad_id, max_len)
        out.append(rm_scores(model, {k: v.to(dev) for k, v in b.items()}, trim).float().cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------- labels on the policy's own samples


def rank_own_samples(model: torch.nn.Module, tok: Tokenizer, rows: list[dict], score_fn, *, samples: int = 4,
                     temperature: float = 0.8, max_new_tokens: int = 128, seed: int = 0,
                     chunk: int = 64, trim: bool = False) -> list[RankedPrompt]:
    """Ranked completions the way InstructGPT's labellers got them (Ouyang et al. 2022, sec. 3.5): the
    policy's greedy answer plus `samples` answers at `temperature` for each row's prompt, ranked best to worst
    by `score_fn(row, text) -> float` (the simulated labeller).

    Duplicates are merged; prompts whose answers all score the same are dropped (they teach nothing). Scores
    stay on each row, so equal-scored completions never form a pair. Sampling is batched in the engine (trim: its
    prefill in length groups, `Engine.trim_prefill`).
    """
    from genforge.infer.sampling import SamplingParams
    from genforge.text import detokenize
    from genforge.train.rollout import sample_responses

    ids = [encode_prompt(tok, r["prompt"]) for r in rows]
    greedy = sample_responses(model, ids, SamplingParams(max_new_tokens=max_new_tokens), stop_id=tok.end_id,
                              chunk=chunk, trim=trim)
    rep = [p for p in ids for _ in range(samples)]  # (N*samples,) each prompt `samples` times in a row
    sampled = sample_responses(model, rep, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                          seed=seed), stop_id=tok.end_id, chunk=chunk,
                               trim=trim)
    out = []
    for i, row in enumerate(rows):
        texts = [greedy[i]] + sampled[i * samples:(i + 1) * samples]
        comps = list(dict.fromkeys(detokenize(tok, [t for t in x if t != tok.end_id]).strip() for x in texts))
        comps = [c for c in comps if c]
        scores = [float(score_fn(row, c)) for c in comps]
        if len(comps) < 2 or len(set(scores)) < 2:
            continue
        ranking = sorted(range(len(comps)), key=lambda k: (-scores[k], len(comps[k]), k))
        out.append(RankedPrompt(row["prompt"], comps, ranking, f"own-samples:{i}", scores))
    return out


def best_vs_worst(rows: list[RankedPrompt]) -> list[RankedPrompt]:
    """One (best, worst) pair per ranked prompt: the DPO data of the own-sample recipe."""
    out = []
    for r in rows:
        a, b = r.ranking[0], r.ranking[-1]
        sc = None if r.scores is None else [r.scores[a], r.scores[b]]
        out.append(RankedPrompt(r.prompt, [r.completions[a], r.completions[b]], [0, 1], r.where, sc))
    return [r for r in out if r.pair_indices()]


@torch.no_grad()
def prompt_pair_accuracy(model: RewardModel, tok: Tokenizer, rows: list[RankedPrompt], *,
                         min_gap: float = 0.0,
                         keep: Callable[[RankedPrompt, int, int], bool] | None = None) -> list[float]:
    """Per ranked prompt, the share of its labelled pairs (score gap > min_gap) that the reward model orders
    like the labeller (a tie in reward counts half). Prompts without such a pair are left out.

    One number per prompt, so a bootstrap over them resamples prompts (pairs of one prompt are not independent).
    keep(row, better, worse): only the pairs it accepts count (e.g. pairs that differ only in style).
    """
    out = []
    for r in rows:
        pairs = [(a, b) for a, b in r.pair_indices(min_gap) if keep is None or keep(r, a, b)]
        if not pairs:
            continue
        prompt = encode_prompt(tok, r.prompt)
        s = score_responses(model, [prompt] * len(r.completions), [encode_response(tok, c) for c in r.completions],
                            tok.pad_id).tolist()
        out.append(sum(1.0 if s[a] > s[b] else 0.5 if s[a] == s[b] else 0.0 for a, b in pairs) / len(pairs))
    return out


# ---------------------------------------------------------------------------- stage


@dataclass
class RewardConfig:
    """`genforge reward`: train a reward model (trunk from a checkpoint + a scalar head) on ranked completions."""

    init_from: str = "runs/tiny/sft/chat/checkpoint"  # checkpoint folder for the trunk (usually the SFT model)
    data: str = "runs/tiny/world/preferences.jsonl"  # ranked lists or chosen/rejected pairs (JSONL)
    val_data: str = ""  # held-out preferences; empty -> hold out val_fraction of the prompts of `data`
    val_fraction: float = 0.1
    out_dir: str = "runs/tiny/reward"
    max_len: int = 256  # prompt + completion tokens (longer rows lose their oldest prompt tokens)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=200, micro_batch=8, warmup_steps=10, lr=1e-3, weight_decay=0.0, eval_every=50, ckpt_every=0,
        log_every=10))


def train_reward_model(model: RewardModel, tok: Tokenizer, train_rows: list[RankedPrompt],
                       val_rows: list[RankedPrompt], cfg: TrainConfig, out_dir: str | Path, *, max_len: int = 256,
                       run_config: dict | None = None, min_gap: float = 0.0, trim_padding: bool = False) -> dict:
    """Fit `model` with the shared trainer; the checkpoint (trunk + score head) goes to out_dir/checkpoint.

    min_gap: with labelled scores, train only on pairs whose scores differ by more than this.
    trim_padding: forwards in length groups without shared padding (`rm_scores`)."""
    train = RankedData(train_rows, tok, cfg.micro_batch, max_len, cfg.seed, cfg.grad_accum, min_gap)
    if not train.groups:
        raise DataError(f"reward model: no training pair whose scores differ by more than {min_gap:g}; "
                        "rank more prompts or lower the gap (align.rm_min_gap)")
    val = RankedData(val_rows, tok, cfg.micro_batch, max_len, cfg.seed) if val_rows else None

    def save_fn(folder: Path) -> None:
        write_checkpoint_files(folder, model.trunk, tok, run_config or {},
                               {"stage": "reward", "step": trainer.step, "metrics": trainer.last_eval})
        model.save_head(folder)

    trainer = Trainer(model, cfg, make_bt_loss_fn(trim_padding), train, out_dir, save_fn=save_fn, name="reward",
                      eval_fn=(lambda m: pairwise_accuracy(m, val)) if val else None)
    return trainer.fit()


def load_preference_run(cfg, stage: str) -> tuple:
    """(model, tokenizer, train_rows, val_rows, out_dir) for a preference stage (reward, dpo) from its config.

    Validation rows come from cfg.val_data, or a seeded hold-out of cfg.data; the resolved config is saved.
    """
    model, tok, _ = load_checkpoint(cfg.init_from)
    if tok is None:
        raise DataError(f"{cfg.init_from}: checkpoint has no tokenizer.json; {stage} needs one")
    rows = read_preferences(cfg.data)
    if cfg.val_data:
        train_rows, val_rows = rows, read_preferences(cfg.val_data)
    else:
        train_rows, val_rows = split_holdout(rows, cfg.val_fraction, cfg.train.seed)
    out = Path(cfg.out_dir)
    save_resolved(cfg, out)
    return model, tok, train_rows, val_rows, out


def main(cfg: RewardConfig) -> dict:
    """Train a reward model from cfg; returns the final metrics (held-out pairwise accuracy among them)."""
    trunk, tok, train_rows, val_rows, out = load_preference_run(cfg, "the reward model")
    torch.manual_seed(cfg.train.seed)
    model = RewardModel(trunk.train())
    return train_reward_model(model, tok, train_rows, val_rows, cfg.train, out, max_len=cfg.max_len,
                              run_config=to_dict(cfg))
