"""Contamination check: do eval items appear in the training corpus?

Two ways. By looking: word n-gram overlap, as in GPT-3 (Brown et al. 2020, appendix C: 13-grams of
normalised words). By asking (`ask_reproduction`), when the corpus is not available: prompt the model with the
start of an item and see whether it continues with the item's exact rest (Carlini et al. 2021's extraction
test; Golchin & Surdeanu 2023, "Time travel in LLMs", guided instruction). A model reproduces text it saw,
especially text it saw several times, and cannot reproduce unseen items beyond what their template predicts.
Each eval item's n-grams are looked up in an index of the corpus's n-grams; an item is flagged
when any of them matches (or a share above `min_overlap`), and listed with its overlap ratio
(matched / total n-grams). Items shorter than n words cannot form an n-gram; they are flagged
only if their whole word sequence occurs verbatim in the corpus.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from genforge.errors import DataError
from genforge.io import read_jsonl

_WORD = re.compile(r"\w+")
CORPUS_FIELDS = ("text", "prompt", "response", "content")


def words(text: str) -> list[str]:
    """Lowercased word tokens with punctuation dropped (so formatting differences don't hide overlap)."""
    return _WORD.findall(text.lower())


def ngrams(ws: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def read_corpus(path: str | Path, fields: Sequence[str] = CORPUS_FIELDS) -> Iterator[str]:
    """Documents of a .jsonl (the string values of `fields` joined) or a .txt file (the whole file)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        for lineno, obj in read_jsonl(path):
            parts = [obj[f] for f in fields if isinstance(obj.get(f), str)]
            if not parts:
                raise DataError(f"{path}:{lineno}: no text field; expected one of {', '.join(fields)}")
            yield "\n".join(parts)
    elif path.is_file():
        yield path.read_text(encoding="utf-8")
    else:
        raise DataError(f"{path}: corpus file not found (give a .jsonl or .txt file)")


class NgramIndex:
    """The set of word n-grams of a corpus (plus its word stream, for items shorter than n)."""

    def __init__(self, n: int = 13):
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        self._docs: list[str] = []
        self.n_docs = 0

    def add(self, text: str) -> None:
        ws = words(text)
        self.grams.update(ngrams(ws, self.n))
        self._docs.append(" " + " ".join(ws) + " ")
        self.n_docs += 1

    @classmethod
    def from_texts(cls, texts: Iterable[str], n: int = 13) -> NgramIndex:
        idx = cls(n)
        for t in texts:
            idx.add(t)
        return idx

    @classmethod
    def from_files(cls, paths: Sequence[str | Path], n: int = 13, fields: Sequence[str] = CORPUS_FIELDS) -> NgramIndex:
        idx = cls(n)
        for p in paths:
            for doc in read_corpus(p, fields):
                idx.add(doc)
        return idx

    def overlap(self, text: str) -> tuple[int, int]:
        """(matched, total) n-grams of text; a text shorter than n counts as one 'n-gram' of itself."""
        ws = words(text)
        if not ws:
            return 0, 0
        if len(ws) < self.n:
            needle = " " + " ".join(ws) + " "
            return int(any(needle in d for d in self._docs)), 1
        grams = ngrams(ws, self.n)
        return sum(g in self.grams for g in grams), len(grams)


def item_text(item: dict | str, fields: Sequence[str] = ("prompt", "response")) -> str:
    if isinstance(item, str):
        return item
    return "\n".join(str(item[f]) for f in fields if f in item)


def check_contamination(items: Sequence[dict | str], index: NgramIndex, *,
                        fields: Sequence[str] = ("prompt", "response"), min_overlap: float = 0.0) -> dict:
    """Flag eval items whose n-grams appear in the corpus index.

    An item is flagged when at least one n-gram matches and matched/total >= min_overlap.
    Returns counts, the contamination rate, per-task counts and the flagged items (most overlap first).
    """
    flagged, per_task = [], {}
    for i, item in enumerate(items):
        matched, total = index.overlap(item_text(item, fields))
        ratio = matched / total if total else 0.0
        task = item.get("task", "") if isinstance(item, dict) else ""
        t = per_task.setdefault(task, {"n": 0, "flagged": 0})
        t["n"] += 1
        if matched and ratio >= min_overlap:
            t["flagged"] += 1
            text = item_text(item, fields)
            flagged.append({"index": i, "task": task, "overlap": ratio, "matched": matched, "total": total,
                            "text": text[:200]})
    flagged.sort(key=lambda f: -f["overlap"])
    return {"n": index.n, "n_items": len(items), "n_flagged": len(flagged),
            "rate": len(flagged) / len(items) if items else 0.0, "per_task": per_task, "flagged": flagged}


# ---- contamination by asking ---------------------------------------------------------------------------

def split_item(text: str, prefix_share: float = 0.5) -> tuple[str, list[str]]:
    """(the item's first `prefix_share` of whitespace words as the prompt, the remaining words)."""
    ws = text.split()
    k = max(1, min(len(ws) - 1, round(len(ws) * prefix_share)))
    return " ".join(ws[:k]), ws[k:]


def reproduced_share(output: str, rest: Sequence[str], m: int) -> float:
    """Share of the first m words of `rest` that `output` reproduces verbatim, in order from the start
    (the longest common word prefix / m): 1.0 is a verbatim continuation."""
    target = list(rest[:m])
    if not target:
        return 0.0
    got = output.split()
    k = 0
    while k < len(target) and k < len(got) and got[k] == target[k]:
        k += 1
    return k / len(target)


def lcs_share(output: str, rest: Sequence[str], m: int) -> float:
    """Longest common subsequence (in words) of `output` and the first m words of `rest`, over m: how much of the
    true continuation comes back in order, even when a word is missed (a small model's partial recall; the
    ROUGE-L recall of the continuation). Words a template predicts count for clean items too, so compare with them."""
    target, got = list(rest[:m]), output.split()[:2 * m]
    if not target:
        return 0.0
    prev = [0] * (len(got) + 1)
    for t in target:
        cur = [0]
        for j, g in enumerate(got):
            cur.append(prev[j] + 1 if t == g else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1] / len(target)


def family_template(texts: Sequence[str], share: float = 0.5) -> set[str]:
    """The words of an item family's template: those in at least `share` of its texts ("moves", "the", "Question:").
    The other words (names, objects, the answer) are what makes an item itself."""
    df = Counter(w for t in texts for w in set(t.split()))
    return {w for w, c in df.items() if c >= share * len(texts)}


def split_at_secret(text: str, template: set[str], prefix_share: float = 0.5) -> tuple[str, list[str]]:
    """Cut `text` just before its first item-specific word from `prefix_share` of the way on: a word of no template
    and not yet in the text, so only a model that has seen the item can write it (like a canary's secret). Falls
    back to `split_item` when the second part has no such word."""
    ws = text.split()
    start = max(1, min(len(ws) - 1, round(len(ws) * prefix_share)))
    for k in range(start, len(ws)):
        if ws[k] not in template and ws[k] not in ws[:k]:
            return " ".join(ws[:k]), ws[k:]
    return split_item(text, prefix_share)


def specific_share(output: str, prompt: str, rest: Sequence[str], template: set[str], m: int) -> float | None:
    """Share of the item-specific words among the first m words of `rest` (no template word, not in the prompt)
    that the output's first 2m words contain; None when there is none to recall."""
    seen = set(prompt.split())
    target = [w for w in rest[:m] if w not in template and w not in seen]
    if not target:
        return None
    got = set(output.split()[:2 * m])
    return sum(w in got for w in target) / len(target)


def ask_reproduction(lm, texts: Sequence[str], *, prefix_share: float = 0.5, words: int = 12,
                     max_new_tokens: int = 48, template: set[str] | None = None) -> list[dict]:
    """Prompt with each text's start (greedy) and score how much of its next `words` words come back.

    lm: anything with `generate` (a pretrained model: no chat template, it continues text). template (the family's
    `family_template`): cut each item at its first item-specific word past `prefix_share` (`split_at_secret`) and
    also score "specific", the share of the continuation's item-specific words recalled: template words come back
    for items never seen too, so they say nothing about memory. Returns per text {"prompt", "rest", "output",
    "reproduced" (in-order share, `lcs_share`), "prefix" (verbatim share from the start, `reproduced_share`),
    "verbatim" (1.0 when all `words` come back exactly), "specific" (with a template; None if the rest has no
    item-specific word)}.
    """
    cut = (lambda t: split_at_secret(t, template, prefix_share)) if template is not None else (
        lambda t: split_item(t, prefix_share))
    prompts, rests = zip(*[cut(t) for t in texts]) if texts else ((), ())
    outs = lm.generate(list(prompts), max_new_tokens=max_new_tokens, temperature=0.0, stop=(), n=1)
    res = []
    for p, rest, o in zip(prompts, rests, outs):
        share = reproduced_share(o[0], rest, words)
        r = {"prompt": p, "rest": " ".join(rest[:words]), "output": o[0],
             "reproduced": lcs_share(o[0], rest, words), "prefix": share, "verbatim": float(share >= 1.0)}
        if template is not None:
            r["specific"] = specific_share(o[0], p, rest, template, words)
        res.append(r)
    return res
