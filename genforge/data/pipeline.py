"""The cleaning pipeline: read -> normalise -> filter -> classify -> exact dedup -> near dedup -> write, streaming.

`clean_corpus` writes the kept documents as `{"id", "text"}` JSONL, a `<name>.removed.jsonl` sidecar
(`{"id", "reason", "detail", "source"}` per removed document), `clean_report.json` (counts, sizes,
timing, config), `data_report.md` (the same for people: counts per filter, removed examples, throughput,
the learned filters against the heuristics) and `<name>.filters/` (the classifiers and their training
report). Deduplication keeps the first occurrence, so put the sources you trust most first.

How it scales on one machine:

* memory is bounded by the dedup index, not the corpus: documents stream through in chunks, at most
  ~2 x workers chunks in flight; per kept document the index holds an 8-byte exact key and one 8-byte
  key per LSH band in sorted numpy runs (`dedup.RunIndex`, 16 B an entry with its value; a fixed 32 MB
  presence bitmap of the band keys lets the ~98 % of lookups that miss skip the runs), while MinHash
  signatures spill to a file in the work folder and are read back only to verify a candidate;
* JSON parsing, normalisation, the filters, the classifiers, MinHash and JSON encoding run in a process pool
  (`workers`), a chunk at a time (JSONL inputs travel as undecoded lines, `_RawChunk`; the main process only reads
  and splits them): one whitespace split of the whole chunk, per-word properties read from a vocabulary and
  summed per text with numpy (`batch.ChunkRules`), shared by the rules, the classifiers and MinHash; the
  one-document code (`clean.reject_reason`) judges only the texts that pass cannot clear; results are consumed
  in input order and every keep/drop decision that depends on earlier documents (dedup) is made in the main
  process, so the output is the same for any number of workers. Those decisions are batched per chunk:
  one sorted lookup in the index runs, one gather of sketches and signatures for the candidates among
  earlier chunks, one comparison of every pair of rows of the chunk that share a band key (`_sharing_pairs`),
  and Python per document only to walk the few pairs that pass, in input order;
* runs are resumable: every `checkpoint_docs` documents the partial outputs and the append-only index
  files are flushed and fsynced and `state.json` records their lengths; a run killed at any moment
  resumes from the last checkpoint (files truncated back to it, index rebuilt from its files) and writes
  byte-identical output.

With `pack_to` (and `pack_tokenizer`) the run also tokenises and packs the kept documents into train/val shards,
the same bytes as `shards.pack_shards` of the cleaned output: each worker tokenises its chunk's survivors beside the
filters (plain texts from the rules' word ids, `ChunkRules.doc_tokens`), and the main process appends the tokens
of the documents dedup keeps, in input order, to shard files in the work folder (`shards.ShardWriter`), whose
lengths are checkpointed with the rest; they move into `pack_to` when the clean is done. The tokens of documents
dedup then removes are wasted work (~8 % of the survivors on the benchmark corpus).

`score_against_labels` compares what was kept with a labels file such as the tiny world's `corpus_labels.jsonl`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import os
import shutil
import tempfile
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from genforge.data.batch import ChunkRules
from genforge.data.classify import (
    CLEAN_ALIASES,
    ClassifierConfig,
    TextClassifier,
    load_labelled,
    save_filters,
    train_filters,
)
from genforge.data.clean import (
    CleanConfig,
    HarmfulMatcher,
    boilerplate_anchored,
    normalize,
    normalize_many,
    reject_reason,
    tokens,
    word_tokens,
)
from genforge.data.dedup import BatchMinHash, NearDeduper
from genforge.data.readers import Doc, expand_paths, iter_documents, iter_raw_lines, parse_jsonl_line
from genforge.errors import ConfigError, DataError
from genforge.io import read_jsonl, write_json, write_text
from genforge.progress import Progress

PLANTED = ("junk", "harmful", "exact_dup", "near_dup")
STATE_VERSION = 1
SKETCH = 32  # signature values per kept document kept in memory for the candidate pre-check
WORKER_PART = 256  # rows a worker judges at once (`_Worker.process_parts`): its peak memory, not the output
SEALED_ROWS = 256  # rows of a chunk looked up in the index at once (bounds the candidate pairs in memory)
IN_CHUNK_PAIRS = 1 << 22  # pairs of rows sharing a band key in one chunk compared at once (more: kept rows only)
SKETCH_SLACK = 0.3  # a candidate is read from disk when its sketch agreement is >= threshold - this
NEAR_FILTER_BITS = 28  # presence bitmap of the LSH band keys (32 MB): ~2 % false hits at 5 M keys, ~10 % at 28 M
N_EXAMPLES = 3  # removed documents shown per reason in data_report.md
N_BAD_SAMPLES = 5


@dataclass
class CleanReport:
    """What `clean_corpus` did: counts per removal reason, sizes, timing and (for small runs) the ids."""

    docs_in: int
    docs_kept: int
    bytes_in: int
    bytes_kept: int
    removed: dict[str, int]
    seconds: float
    out_path: str
    report_path: str
    removed_path: str
    cpu_seconds: float = 0.0
    bad_lines: int = 0
    bad_samples: list[dict] = field(default_factory=list)
    resumed_from: int = 0
    data_report_path: str = ""
    filters: dict = field(default_factory=dict)
    shards: str = ""  # the shard folder packed while cleaning (`pack_to`), if any
    tokens: dict = field(default_factory=dict)  # its tokens per split
    kept_ids: list[str] = field(default_factory=list, repr=False)
    removed_ids: dict[str, str] = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        """The JSON-friendly part (no per-document lists, which are not copied: they can hold a million ids)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in ("kept_ids", "removed_ids")}


def _harmful_matcher(cfg: CleanConfig) -> HarmfulMatcher:
    terms = list(cfg.harmful_terms)
    if cfg.harmful_terms_file:
        p = Path(cfg.harmful_terms_file)
        if not p.is_file():
            raise ConfigError(f"harmful_terms_file: {p}: file not found")
        terms += [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()
                  if ln.strip() and not ln.lstrip().startswith("#")]
    return HarmfulMatcher(terms, use_default=cfg.use_default_harmful)


def _check_config(cfg: CleanConfig) -> None:
    if not 0 < cfg.near_threshold <= 1:
        raise ConfigError(f"near_threshold must be in (0, 1], got {cfg.near_threshold}")
    if cfg.num_perm < 1 or cfg.shingle_size < 1:
        raise ConfigError(f"num_perm and shingle_size must be >= 1, got {cfg.num_perm} and {cfg.shingle_size}")
    if cfg.dedup_backend not in ("auto", "builtin", "datasketch"):
        raise ConfigError(f"dedup_backend: unknown near-dedup backend {cfg.dedup_backend!r}; "
                          "use auto, builtin or datasketch")
    if cfg.workers < 1 or cfg.chunk_docs < 1 or cfg.checkpoint_docs < 1:
        raise ConfigError("workers, chunk_docs and checkpoint_docs must be >= 1")
    for key in ("quality_threshold", "harm_classifier_threshold"):
        if not 0 <= getattr(cfg, key) <= 1:
            raise ConfigError(f"{key} must be a probability in [0, 1], got {getattr(cfg, key)}")
    if not 0 < cfg.classifier_holdout < 1:
        raise ConfigError(f"classifier_holdout must be in (0, 1), got {cfg.classifier_holdout}")
    if cfg.pack_to and not cfg.pack_tokenizer:
        raise ConfigError(f"pack_to={cfg.pack_to}: set pack_tokenizer to the folder holding tokenizer.json")
    if cfg.pack_tokenizer and not cfg.pack_to:
        raise ConfigError("pack_tokenizer is set but pack_to is not: set pack_to to the shard folder to write")
    if not 0 <= cfg.pack_val_fraction < 1:
        raise ConfigError(f"pack_val_fraction must be in [0, 1), got {cfg.pack_val_fraction}")


# ---- learned filters -------------------------------------------------------------------------------------------

def _baselines(cfg: CleanConfig) -> dict:
    """The heuristics each classifier complements: every junk rule (no vocabulary), and the blocklist."""
    harmful, none = _harmful_matcher(cfg), HarmfulMatcher(use_default=False)
    return {"quality": lambda t: reject_reason(t, cfg, none) is not None,
            "harm": lambda t: harmful.score(t) >= cfg.harmful_threshold}


_RUNTIME_FIELDS = ("workers", "chunk_docs", "progress", "resume", "checkpoint_docs", "skip_bad", "text_field",
                   "id_field", "dedup_exact", "dedup_near", "dedup_backend", "pack_to", "pack_tokenizer",
                   "pack_val_fraction")
_WORLD_FILTERS: dict[str, tuple] = {}


@lru_cache(maxsize=2)
def _world_rows(seed: int) -> tuple[tuple[str, str], ...]:
    """Labelled rows of a generated tiny world (cached: tests and benchmarks train on it many times)."""
    from genforge.world import generate_world

    with tempfile.TemporaryDirectory(prefix="gf-clf-world-") as tmp:
        generate_world(tmp, seed=seed, size="tiny")
        return tuple(load_labelled(Path(tmp, "corpus_labels.jsonl"), iter_documents(Path(tmp, "corpus.jsonl"))))


def prepare_filters(cfg: CleanConfig, inputs: list[Path], folder: Path) -> dict:
    """Train (or load) the classifiers cfg.classifier asks for into `folder`; return the training report ({} if off)."""
    if cfg.classifier == "off":
        return {}
    src = Path(cfg.classifier)
    if cfg.classifier != "world" and src.is_dir():
        for name in ("quality", "harm"):
            TextClassifier.load(src / f"{name}.pkl")  # a clear error now rather than in a worker
        if src.resolve() != folder.resolve():
            folder.mkdir(parents=True, exist_ok=True)
            for f in ("quality.pkl", "harm.pkl", "training_report.json", "heldout_outcomes.json"):
                if (src / f).exists():
                    shutil.copyfile(src / f, folder / f)
        rep = folder / "training_report.json"
        return json.loads(rep.read_text()) if rep.exists() else {"source": str(src)}
    if cfg.classifier == "world":
        key = json.dumps({k: v for k, v in asdict(cfg).items() if k not in _RUNTIME_FIELDS}, sort_keys=True)
        if key not in _WORLD_FILTERS:  # the same world and settings train the same models: train once a process
            rows = list(_world_rows(cfg.classifier_world_seed))
            _WORLD_FILTERS[key] = train_filters(
                rows, ClassifierConfig(holdout=cfg.classifier_holdout),
                {"quality": cfg.quality_threshold, "harm": cfg.harm_classifier_threshold}, _baselines(cfg), normalize)
            _WORLD_FILTERS[key][1]["source"] = f"generated tiny world, seed {cfg.classifier_world_seed}"
        models, report = _WORLD_FILTERS[key]
        save_filters(models, report, folder)
        return report
    if src.is_file():
        rows, source = load_labelled(src, iter_documents(inputs, cfg.text_field, cfg.id_field)), str(src)
    else:
        raise ConfigError(f'classifier={cfg.classifier!r}: not "world", "off", a labelled .jsonl file '
                          "or a folder with quality.pkl and harm.pkl")
    models, report = train_filters(rows, ClassifierConfig(holdout=cfg.classifier_holdout),
                                   {"quality": cfg.quality_threshold, "harm": cfg.harm_classifier_threshold},
                                   _baselines(cfg), normalize)
    report["source"] = source
    save_filters(models, report, folder)
    return report


# ---- per-chunk work (runs in the pool) --------------------------------------------------------------------------

class _Worker:
    """Everything a chunk needs that does not depend on earlier documents."""

    def __init__(self, cfg: CleanConfig, filters_dir: str | None) -> None:
        self.cfg = cfg
        self.harmful = _harmful_matcher(cfg)
        self.clf: dict[str, TextClassifier] = {}
        if filters_dir:
            self.clf = {"harm": TextClassifier.load(Path(filters_dir, "harm.pkl"), cfg.harm_classifier_threshold),
                        "quality": TextClassifier.load(Path(filters_dir, "quality.pkl"), cfg.quality_threshold)}
        self.minhash = (BatchMinHash(cfg.near_threshold, cfg.num_perm, cfg.shingle_size, cfg.minhash_seed)
                        if cfg.dedup_near and cfg.dedup_backend != "datasketch" else None)
        ccfg = self.clf["harm"].cfg if self.clf else None
        self.packer = _ChunkTokens(cfg) if cfg.pack_to else None
        enc = getattr(self.packer.encode_many, "enc", None) if self.packer is not None else None
        self.rules = ChunkRules(cfg, self.harmful, ccfg.n_features if ccfg is not None and ccfg.ngrams == 1 else None,
                                enc, *(self.packer.bos_eos if self.packer is not None else (0, 0)))

    def run(self, item: list[tuple[str, str, str]] | _RawChunk) -> dict:
        """`process` a chunk of rows, or of undecoded JSONL lines (`_RawChunk`): those are parsed here, so the main
        process only splits lines; the result then also holds the rows' ("rows": (id, "", source)), the malformed
        lines ("bad": (where, message, head of the line), raised as `DataError` without `skip_bad`) and whether any
        text is not blank ("any_text")."""
        if not isinstance(item, _RawChunk):
            return self.process_parts(item)
        rows, bad = [], []
        for lineno, raw in item.lines:
            doc = parse_jsonl_line(raw, item.path, item.name, lineno, self.cfg.text_field, self.cfg.id_field)
            if isinstance(doc, Doc):
                rows.append((doc.id, doc.text, doc.source))
            elif self.cfg.skip_bad:
                bad.append((f"{item.path}:{lineno}", doc, raw[:300]))
            else:
                raise DataError(doc + " (or set skip_bad=true to skip bad lines)")
        res = self.process_parts(rows)
        res.update(rows=[(d, "", src) for d, _, src in rows], bad=bad, any_text=any(t.strip() for _, t, _ in rows))
        return res

    def process_parts(self, chunk: list[tuple[str, str, str]]) -> dict:
        """`process` of `WORKER_PART` rows at a time, as one result: the main process's per-chunk costs want big
        chunks, a worker's peak memory (its numpy temporaries grow with the chunk) small ones; every document's
        result is its own, so the parts join into exactly the result of the whole chunk."""
        if len(chunk) <= WORKER_PART:
            return self.process(chunk)
        parts = [self.process(chunk[lo:lo + WORKER_PART]) for lo in range(0, len(chunk), WORKER_PART)]
        offsets = range(0, len(chunk), WORKER_PART)

        def cat(key: str):
            got = [p[key] for p in parts if p[key] is not None]
            return np.concatenate(got) if got else None

        out = {"why": [w for p in parts for w in p["why"]],
               "keep": [i + off for p, off in zip(parts, offsets) for i in p["keep"]],
               "keys": cat("keys"), "sigs": cat("sigs"), "bands": cat("bands"),
               "lines": [x for p in parts for x in p["lines"]],
               "kept_bytes": [x for p in parts for x in p["kept_bytes"]],
               "in_bytes": sum(p["in_bytes"] for p in parts),
               "heads": {i + off: h for p, off in zip(parts, offsets) for i, h in p["heads"].items()},
               "texts": None if parts[0]["texts"] is None else [t for p in parts for t in p["texts"]],
               "all_texts": None, "tokens": None}
        if parts[0]["tokens"] is not None:
            out["tokens"] = {k: np.concatenate([p["tokens"][k] for p in parts]) for k in ("buf", "lens", "val")}
            out["tokens"]["encoder"] = parts[-1]["tokens"]["encoder"]
        return out

    def process(self, chunk: list[tuple[str, str, str]], all_texts: bool = False) -> dict:
        """chunk: (id, text, source) rows -> rejections; for the rest their output lines, exact keys and signatures.

        Everything that needs a document's text happens here, so only the survivors' encoded output lines
        travel back to the main process (plus the head of each rejected text, for the report's examples).
        The rules, the classifiers' features and MinHash's words come from one pass over the whole chunk
        (`batch.ChunkRules`); `process_plain` is the same one document at a time (the reference it is tested
        against). `all_texts` adds every normalised text ("all_texts"), for callers that keep documents themselves.
        """
        if not chunk:  # a chunk of only malformed lines (`run` with skip_bad): nothing to judge
            sigs = np.zeros((0, self.minhash.num_perm), np.uint32) if self.minhash is not None else None
            return self._result(chunk, [], [], [], np.zeros(0, np.uint64), sigs, all_texts,
                                self.packer.encode([]) if self.packer is not None else None)
        texts = normalize_many([t for _, t, _ in chunk])
        lowers = [t.lower() for t in texts]
        rules = self.rules
        why = rules.judge(texts, lowers)
        if self.clf:
            # The classifiers see what the rules let through; the harm model is asked first (its reason wins).
            idx = [i for i, w in enumerate(why) if w is None]
            if idx:
                from genforge.data.classify import features_from_columns, featurize

                ccfg = self.clf["harm"].cfg
                feats = (features_from_columns(*rules.columns(idx), ccfg) if ccfg.ngrams == 1
                         else featurize([texts[i] for i in idx], ccfg))
                self._classify(why, idx, feats)
        keep = [i for i, w in enumerate(why) if w is None]
        keys = np.array([exact_key64_normalised(texts[i], lowers[i]) for i in keep], dtype=np.uint64)
        sigs = self.minhash.signatures_of_hashes(*rules.word_crcs(keep)) if self.minhash is not None else None
        toks = self.packer.encode([texts[i] for i in keep], rules, keep) if self.packer is not None else None
        return self._result(chunk, texts, why, keep, keys, sigs, all_texts, toks)

    def process_plain(self, chunk: list[tuple[str, str, str]], all_texts: bool = False) -> dict:
        """`process` one document at a time (`clean.reject_reason` per text): the reference for tests."""
        texts = [normalize(t) for _, t, _ in chunk]
        lowers = [t.lower() for t in texts]
        toks = [tokens(low) for low in lowers]
        anchored = boilerplate_anchored(lowers)
        why = [reject_reason(t, self.cfg, self.harmful, low, tk, a)
               for t, low, tk, a in zip(texts, lowers, toks, anchored)]
        if self.clf:
            idx = [i for i, w in enumerate(why) if w is None]
            if idx:
                from genforge.data.classify import featurize, featurize_tokens

                ccfg = self.clf["harm"].cfg
                feats = (featurize_tokens([toks[i] for i in idx], ccfg) if ccfg.ngrams == 1
                         else featurize([texts[i] for i in idx], ccfg))
                self._classify(why, idx, feats)
        keep = [i for i, w in enumerate(why) if w is None]
        keys = np.array([exact_key64(texts[i], lowers[i]) for i in keep], dtype=np.uint64)
        sigs = (self.minhash.signatures_of_words([word_tokens(toks[i]) for i in keep])
                if self.minhash is not None else None)
        ids = self.packer.encode([texts[i] for i in keep]) if self.packer is not None else None
        return self._result(chunk, texts, why, keep, keys, sigs, all_texts, ids)

    def _classify(self, why: list, idx: list[int], feats) -> None:
        for name, reason in (("harm", "harm_classifier"), ("quality", "quality_classifier")):
            p = self.clf[name].proba(idx, features=feats)
            for i, pi in zip(idx, p.tolist()):
                if why[i] is None and pi >= self.clf[name].threshold:
                    why[i] = (reason, f"P({self.clf[name].name}) {pi:.2f}")

    def _result(self, chunk: list[tuple[str, str, str]], texts: list[str], why: list, keep: list[int],
                keys: np.ndarray, sigs: np.ndarray | None, all_texts: bool, tokens: dict | None = None) -> dict:
        kept_text = [texts[i] for i in keep]
        enc = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) writes a str as
        lines = [f'{{"id": {enc(chunk[i][0])}, "text": {enc(texts[i])}}}\n'.encode() if isinstance(chunk[i][0], str)
                 else (json.dumps({"id": chunk[i][0], "text": texts[i]}, ensure_ascii=False) + "\n").encode()
                 for i in keep]
        return {"why": why, "keep": keep, "keys": keys, "sigs": sigs, "lines": lines,
                # LSH band keys here, not in the main process (whose dedup decisions bound the wall clock)
                "bands": self.minhash.band_keys(sigs) if sigs is not None and len(keep) else None,
                # with pack_to, every survivor's tokens (dedup has not run yet: the main process drops the
                # removed ones' tokens, ~8 % of them on the benchmark corpus)
                "tokens": tokens,
                "kept_bytes": [_utf8_len(t) for t in kept_text],
                "in_bytes": sum(_utf8_len(t) for _, t, _ in chunk),
                "heads": {i: texts[i][:300] for i, w in enumerate(why) if w is not None},
                # the datasketch backend indexes texts in the main process
                "texts": kept_text if self.cfg.dedup_near and self.cfg.dedup_backend == "datasketch" else None,
                "all_texts": texts if all_texts else None}


def _json_str(doc_id: str) -> str:
    """`json.dumps(doc_id)` of a str id, without `dumps`'s Python layers (the C encoder it calls; ~4x faster)."""
    return json.encoder.encode_basestring_ascii(doc_id) if isinstance(doc_id, str) else json.dumps(doc_id)


def _utf8_len(text: str) -> int:
    """Bytes of `text` in UTF-8 (lone surrogates as 3 bytes each), without encoding ASCII text (`isascii` is O(1))."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class _ChunkTokens:
    """A worker's tokeniser for `pack_to`: the kept candidates of a chunk as one buffer of <|bos|> ids <|eos|>.

    The tokens are what `shards.pack_shards` makes of the same text (the same `batch_encoder`, dtype and split
    hash), so the main process only appends the ones dedup keeps, in input order, and the shards come out
    byte-identical to cleaning first and packing the output after.
    """

    def __init__(self, cfg: CleanConfig) -> None:
        from genforge.data.fast_tokenize import batch_encoder
        from genforge.data.shards import dtype_for_vocab
        from genforge.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(cfg.pack_tokenizer)
        self.encode_many, self.encoder_name = batch_encoder(tokenizer)  # .enc: the tiktoken encoding, if equal
        self.dtype = dtype_for_vocab(tokenizer.vocab_size)
        self.bos_eos = tokenizer.bos_id, tokenizer.eos_id
        self.bos, self.eos = np.array([tokenizer.bos_id], np.uint32), np.array([tokenizer.eos_id], np.uint32)
        self.val_fraction = cfg.pack_val_fraction

    def encode(self, texts: list[str], rules: ChunkRules | None = None, docs: list[int] | None = None) -> dict:
        """{"buf": all documents' tokens (dtype), "lens": tokens per text (0: blank, not packed), "val": bool per
        text, "encoder": the encoder's name}; texts are the chunk's kept candidates, in order.

        With `rules` (and `docs`, the texts' indices in its last `judge`), the plain texts' ids come from the
        rules' word ids (`ChunkRules.doc_tokens`: ~10x cheaper than a dict lookup per word); the rest, and all
        of them without `rules`, from `batch_encoder` text by text."""
        from genforge.data.shards import is_val

        n = len(texts)
        lens = np.zeros(n, dtype=np.int64)
        plain, buf = np.zeros(n, dtype=bool), np.zeros(0, dtype=np.uint32)
        if rules is not None and n:
            plain, buf, lens[plain] = rules.doc_tokens(docs)
        other = [j for j in np.flatnonzero(~plain).tolist() if texts[j].strip()]  # `pack_shards` skips blanks
        if other:
            ids = iter(self.encode_many([texts[j] for j in other]))
            pieces, pos = [], 0
            for j, is_plain in enumerate(plain.tolist()):
                if is_plain:
                    pieces.append(buf[pos:pos + lens[j]])
                    pos += lens[j]
                elif texts[j].strip():
                    a = next(ids)
                    pieces += [self.bos, a, self.eos]
                    lens[j] = len(a) + 2
            buf = np.concatenate(pieces)
        val = np.zeros(n, dtype=bool)
        val[lens > 0] = [is_val(texts[j], self.val_fraction) for j in np.flatnonzero(lens).tolist()]
        return {"buf": buf.astype(self.dtype), "lens": lens, "val": val, "encoder": self.encoder_name}


def _pack_kept(writer, tokens: dict, kept: list[int], kept_bytes: list[int]) -> None:
    """Append the tokens of the kept candidates `kept` (indices into the chunk's survivors, ascending) to the
    shard writer, each split's documents in input order (one write per split and chunk)."""
    buf, lens, val = tokens["buf"], tokens["lens"], tokens["val"]
    ends = np.cumsum(lens)
    for split, flag in (("train", False), ("val", True)):
        sel = [j for j in kept if lens[j] and val[j] == flag]
        if sel:
            writer.add(split, np.concatenate([buf[ends[j] - lens[j]:ends[j]] for j in sel]), len(sel),
                       sum(kept_bytes[j] for j in sel))


_WORKER: _Worker | None = None


def _init_worker(cfg: CleanConfig, filters_dir: str | None) -> None:
    global _WORKER
    _WORKER = _Worker(cfg, filters_dir)


def _process_in_worker(chunk: list[tuple[str, str, str]] | _RawChunk) -> dict:
    return _WORKER.run(chunk)


def exact_key64_normalised(text: str, lower: str) -> int:
    """`exact_key64(text, lower)` without its split and join where they would change nothing (always, for a
    `normalize`d one-line text): the canonical form is the case-folded text with newlines as spaces when that has
    no other whitespace (`isprintable` is false for every whitespace character but the ASCII space), no double,
    leading or trailing space."""
    folded = lower if text.isascii() else unicodedata.normalize("NFC", text).casefold()
    canon = folded.replace("\n\n", "\n").replace("\n", " ") if "\n" in folded else folded
    if not canon.isprintable() or "  " in canon or canon.startswith(" ") or canon.endswith(" "):
        canon = " ".join(folded.split())
    return int.from_bytes(hashlib.blake2b(canon.encode("utf-8"), digest_size=8).digest(), "little")


def exact_key64(text: str, lower: str | None = None) -> int:
    """64-bit hash of the text with case, spacing and Unicode form normalised away (`dedup.exact_key`'s canon).

    `lower` (text.lower()) saves work on ASCII text, where NFC changes nothing and casefold is lower."""
    if lower is not None and text.isascii():
        canon = " ".join(lower.split())
    else:
        canon = " ".join(unicodedata.normalize("NFC", text).casefold().split())
    return int.from_bytes(hashlib.blake2b(canon.encode("utf-8"), digest_size=8).digest(), "little")


# ---- resumable state -------------------------------------------------------------------------------------------

def _fingerprint(cfg: CleanConfig, files: list[Path]) -> str:
    """What the output depends on: the config (not workers/progress/checkpointing) and the input files."""
    c = asdict(cfg)
    for k in ("workers", "chunk_docs", "progress", "resume", "checkpoint_docs"):
        c.pop(k)
    if cfg.classifier not in ("world", "off") and Path(cfg.classifier).exists():
        p = Path(cfg.classifier)  # a changed labels file or model folder changes the output
        c["classifier_files"] = [(str(f), f.stat().st_size, f.stat().st_mtime_ns)
                                 for f in ([p] if p.is_file() else sorted(p.iterdir()))]
    if cfg.pack_tokenizer and Path(cfg.pack_tokenizer).is_dir():  # a retrained tokenizer changes the shards
        c["tokenizer_files"] = [(f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                for f in sorted(Path(cfg.pack_tokenizer).iterdir()) if f.is_file()]
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    blob = json.dumps({"v": STATE_VERSION, "cfg": c, "files": stats}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Index:
    """The dedup state of the kept documents: exact keys, LSH band keys, signatures (on disk) and ids.

    Append-only files in the work folder hold everything needed to rebuild it after a crash:
    keys.bin (uint64 per kept document), sigs.bin (num_perm x uint32 per kept document), ids.jsonl.
    """

    def __init__(self, work: Path, cfg: CleanConfig, minhash: BatchMinHash | None) -> None:
        from genforge.data.dedup import RunIndex

        self.work, self.cfg, self.minhash = work, cfg, minhash
        # exact keys must not collide (a hit drops a document unchecked): 64 bits; band keys only propose
        # candidates that are then verified against the signature, so 32 bits do (a spurious one costs a read)
        self.exact, self.near = RunIndex(np.uint64), RunIndex(np.uint32, filter_bits=NEAR_FILTER_BITS)
        self.ids: list[str] = []
        # The low byte of the first SKETCH signature values of every kept document, in memory (32 B each): a
        # candidate whose sketch agrees far less than the threshold is dropped without reading its signature.
        # Pages that share a few boilerplate sentences collide in some band often, and reading each one's
        # signature from disk was most of the main process's time.
        self.k = min(SKETCH, cfg.num_perm)
        self.sketch = np.zeros((1024, self.k), dtype=np.uint8)
        self.f_keys = open(work / "keys.bin", "ab")
        self.f_sigs = open(work / "sigs.bin", "ab")
        self.f_ids = open(work / "ids.jsonl", "ab")
        self.sig_bytes = 4 * cfg.num_perm
        # the datasketch backend keeps its own (in-memory) index; on resume it is rebuilt from kept texts
        self.ds = NearDeduper(cfg.near_threshold, cfg.num_perm, cfg.shingle_size, cfg.minhash_seed, "datasketch") \
            if cfg.dedup_near and cfg.dedup_backend == "datasketch" else None

    def restore(self, n_kept: int, kept_path: Path) -> None:
        """Truncate the files to `n_kept` documents and rebuild the in-memory index from them."""
        for f, name, size in ((self.f_keys, "keys.bin", 8 * n_kept),
                              (self.f_sigs, "sigs.bin", self.sig_bytes * n_kept)):
            f.flush()
            os.truncate(self.work / name, size)
        self.f_ids.close()
        lines = (self.work / "ids.jsonl").read_bytes().splitlines()[:n_kept]
        self.ids = [json.loads(x) for x in lines]
        write_text(self.work / "ids.jsonl", "".join(_json_str(i) + "\n" for i in self.ids))
        self.f_ids = open(self.work / "ids.jsonl", "ab")
        if n_kept:
            keys = np.fromfile(self.work / "keys.bin", dtype=np.uint64)
            self.exact.add_run(keys, np.arange(n_kept, dtype=np.int64))
            if self.minhash is not None:
                block = 65_536  # rebuild band keys a block of signatures at a time (bounded memory)
                sigs = np.memmap(self.work / "sigs.bin", dtype=np.uint32, mode="r", shape=(n_kept, self.cfg.num_perm))
                self.sketch = np.zeros((max(1024, 2 * n_kept), self.k), dtype=np.uint8)
                for lo in range(0, n_kept, block):
                    part = np.asarray(sigs[lo:lo + block])
                    self.sketch[lo:lo + len(part)] = part[:, :self.k] & 0xFF
                    bands = self.minhash.band_keys(part)
                    vals = np.repeat(np.arange(lo, lo + len(bands), dtype=np.int64), bands.shape[1])
                    self.near.add_run(bands.reshape(-1), vals)
                del sigs
            if self.ds is not None:
                for _, row in read_jsonl(kept_path):
                    self.ds.check_add(str(row["id"]), row["text"])

    def near_in_chunk(self, sigs: np.ndarray, bands: np.ndarray) -> dict[int, list[tuple[int, float]]] | None:
        """Candidates among earlier rows of the same chunk: for each row j of `sigs` (m, num_perm) the rows r < j
        that share a band key with it (as uint32, as the index stores them) and whose sketch and signature agree at
        least as `best_sealed` asks, as (r, similarity) in ascending r; all pairs of the chunk in a few numpy ops
        (whether r was kept is decided later, in input order). None where `_sharing_pairs` gives up."""
        out: dict[int, list[tuple[int, float]]] = {}
        pairs = _sharing_pairs(bands.astype(np.uint32))
        if pairs is None:
            return None
        js, rs = pairs
        thr = self.cfg.near_threshold
        sk = sigs[:, :self.k] & 0xFF
        block = 1 << 15  # pairs compared at a time: bounded temporaries however many pairs a chunk has
        for lo in range(0, len(js), block):
            j, r = js[lo:lo + block], rs[lo:lo + block]
            agree = np.count_nonzero(sk[j] == sk[r], axis=1) / self.k
            j, r = j[agree >= thr - SKETCH_SLACK], r[agree >= thr - SKETCH_SLACK]
            sims = np.count_nonzero(sigs[j] == sigs[r], axis=1) / sigs.shape[1]
            hit = sims >= thr
            for jj, rr, sim in zip(j[hit].tolist(), r[hit].tolist(), sims[hit].tolist()):
                out.setdefault(jj, []).append((rr, sim))
        return out

    def near_best(self, sig: np.ndarray, cands: dict[int, np.ndarray]) -> tuple[int, float] | None:
        """The most similar of the candidates (kept ordinal -> signature) at or above the threshold (ties: the
        earliest), checking only those whose sketch agrees enough, as `best_sealed` does."""
        best = None
        if cands:
            order = sorted(cands)
            sigs = np.stack([cands[o] for o in order])  # (n_cands, num_perm)
            # the sketch estimates Jaccard from SKETCH values (sd ~0.09 at 0.5); 0.3 below the threshold is >3 sd
            agree = np.count_nonzero((sigs[:, :self.k] & 0xFF) == (sig[:self.k] & 0xFF), axis=1) / self.k
            sims = np.count_nonzero(sigs == sig, axis=1) / len(sig)
            for o, a, sim in zip(order, agree.tolist(), sims.tolist()):
                if (a >= self.cfg.near_threshold - SKETCH_SLACK and sim >= self.cfg.near_threshold
                        and (best is None or sim > best[1])):
                    best = (o, sim)
        return best

    def best_sealed(self, sigs: np.ndarray, rows: np.ndarray, cands: np.ndarray) -> list[tuple[int, float] | None]:
        """`near_best` of every row of `sigs` (m, num_perm) over its candidates among the documents kept in earlier
        chunks (`rows`, `cands`: pairs of a row and a kept ordinal, from `RunIndex.lookup_flat`), all rows at once:
        one gather and compare per chunk instead of a few small numpy calls and a read per document (most of
        the main process's time)."""
        out: list[tuple[int, float] | None] = [None] * len(sigs)
        if not len(rows):
            return out
        rows, cands = rows.astype(np.int64), cands.astype(np.int64)
        # the sketch check first (it drops ~95 % of the pairs), then sort and unique only what is left
        sk = (sigs[:, :self.k] & 0xFF).astype(np.uint8)
        agree = np.count_nonzero(self.sketch[cands] == sk[rows], axis=1) / self.k
        ok = agree >= self.cfg.near_threshold - SKETCH_SLACK
        if not ok.any():
            return out
        pair = np.sort(rows[ok] << 32 | cands[ok])  # by row, then candidate (ascending, so ties go to the earliest)
        pair = pair[np.concatenate([[True], pair[1:] != pair[:-1]])]  # unique (np.unique hashes here: slower)
        rows, cands = pair >> 32, pair & 0xFFFFFFFF
        # sealed signatures are all in sigs.bin (flushed by `seal`); the page cache usually holds them
        stored = np.memmap(self.work / "sigs.bin", dtype=np.uint32, mode="r",
                           shape=(int(cands.max()) + 1, self.cfg.num_perm))
        sims = np.count_nonzero(stored[cands] == sigs[rows], axis=1) / self.cfg.num_perm
        del stored
        hit = sims >= self.cfg.near_threshold  # few: Python only for these (in (row, candidate) order, as before)
        for j, o, sim in zip(rows[hit].tolist(), cands[hit].tolist(), sims[hit].tolist()):
            if out[j] is None or sim > out[j][1]:
                out[j] = (o, sim)
        return out

    def reserve(self, n: int) -> None:
        """Room in the sketch for n more kept documents."""
        while len(self.ids) + n > len(self.sketch):
            self.sketch = np.concatenate([self.sketch, np.zeros_like(self.sketch)])

    def add(self, doc_id: str) -> int:
        """Keep a document; returns its ordinal (it is indexed for later chunks by `seal`)."""
        self.ids.append(doc_id)
        return len(self.ids) - 1

    def seal(self, first: int, keys: np.ndarray, sigs: np.ndarray | None, bands: np.ndarray | None) -> None:
        """Index the documents kept in this chunk (ordinals first, first+1, ...; keys (n,), sigs (n, num_perm),
        bands (n, n_bands) of them) as one sorted run each, and append them to the index files."""
        n = len(self.ids) - first
        if n:
            ordinals = np.arange(first, first + n, dtype=np.int64)
            self.exact.add_run(keys, ordinals)
            self.f_keys.write(keys.astype(np.uint64).tobytes())
            self.f_ids.write("".join(_json_str(i) + "\n" for i in self.ids[first:]).encode())
            if sigs is not None:
                self.near.add_run(bands.reshape(-1), np.repeat(ordinals, bands.shape[1]))
                self.f_sigs.write(np.ascontiguousarray(sigs, dtype=np.uint32).tobytes())
                self.reserve(0)
                self.sketch[first:first + n] = sigs[:, :self.k] & 0xFF
        self.f_sigs.flush()  # sealed signatures are read back through a memmap (`best_sealed`)

    def sync(self) -> None:
        for f in (self.f_keys, self.f_sigs, self.f_ids):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        for f in (self.f_keys, self.f_sigs, self.f_ids):
            f.close()

    @property
    def nbytes(self) -> int:
        return self.exact.nbytes + self.near.nbytes


def _same_key_groups(keys: np.ndarray) -> np.ndarray:
    """Group number of each entry of `keys` (shape (m,)) among the entries with the same key, -1 where the key is
    unique (most of them): one stable sort, no Python per entry."""
    m = len(keys)
    group = np.full(m, -1, dtype=np.int64)
    if m < 2:
        return group
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    same = k[1:] == k[:-1]
    if not same.any():
        return group
    member = np.zeros(m, dtype=bool)
    member[1:] |= same
    member[:-1] |= same
    run = np.cumsum(np.concatenate([[True], ~same]))  # run number of each sorted entry
    group[order[member]] = run[member]
    return group


def _earlier_sharing(keys: np.ndarray) -> tuple[list[list[int]], dict[int, list[int]]]:
    """Rows of `keys` (shape (m, w)) that share a key with another row: the groups of rows under one key
    (each sorted) and, per row, the groups it is in. Most rows share nothing, so this is a few numpy ops."""
    m, w = keys.shape
    flat = keys.reshape(-1)
    rows = np.repeat(np.arange(m), w)
    order = np.lexsort((rows, flat))  # by key, then row
    fk, fr = flat[order], rows[order]
    same = np.flatnonzero(fk[1:] == fk[:-1])
    groups: list[list[int]] = []
    member: dict[int, list[int]] = {}
    if not len(same):
        return groups, member
    # runs of equal keys: a run starts at p where fk[p] == fk[p+1] but fk[p-1] != fk[p]
    starts = same[np.concatenate([[True], same[1:] != same[:-1] + 1])]
    ends = same[np.concatenate([same[1:] != same[:-1] + 1, [True]])] + 2
    for a, b in zip(starts.tolist(), ends.tolist()):
        g = sorted(set(fr[a:b].tolist()))  # a few rows: Python beats a numpy call per group
        if len(g) > 1:
            for r in g:
                member.setdefault(r, []).append(len(groups))
            groups.append(g)
    return groups, member


def _sharing_pairs(keys: np.ndarray, block: int = 1 << 20) -> tuple[np.ndarray, np.ndarray] | None:
    """Every pair of rows (j, r), r < j, of `keys` (shape (m, w)) that share any key, each pair once, sorted by j
    then r: (j, r) as two int64 arrays; None when the runs of equal keys hold more than `IN_CHUNK_PAIRS` pairs
    (many copies in one chunk: the caller then looks at the kept rows only). All pairs generated with numpy."""
    m, w = keys.shape
    flat = keys.reshape(-1)
    rows = np.repeat(np.arange(m, dtype=np.int64), w)
    order = np.lexsort((rows, flat))  # by key, then row
    fk, fr = flat[order], rows[order]
    n = len(fk)
    if n < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    new = np.concatenate([[True], fk[1:] != fk[:-1]])
    start = np.maximum.accumulate(np.where(new, np.arange(n), 0))  # first position of each entry's run
    cnt = np.arange(n) - start  # entries before this one in its run
    if not cnt.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Rows that share many keys (copies share every band) repeat a pair once per key: generate the pairs a block
    # of about `block` at a time and drop the repeats per block, so memory stays bounded even for a chunk of copies.
    ends = np.cumsum(cnt)
    if ends[-1] > IN_CHUNK_PAIRS:
        return None
    cuts = np.searchsorted(ends, np.arange(block, int(ends[-1]), block), "left").tolist()
    codes = []
    for a, b in zip([0, *cuts], [*cuts, n]):
        c = cnt[a:b]
        pos = np.repeat(np.arange(a, b), c)
        earlier = np.repeat(start[a:b], c) + (np.arange(len(pos)) - np.repeat(np.cumsum(c) - c, c))
        j, r = fr[pos], fr[earlier]
        ok = r < j  # (one document can hold a key twice)
        codes.append(np.unique(j[ok] << 32 | r[ok]))
    code = np.unique(np.concatenate(codes)) if len(codes) > 1 else codes[0]  # sorted by j, then r
    return code >> 32, code & 0xFFFFFFFF


@dataclass
class _RawChunk:
    """Up to `chunk_docs` non-blank lines of one JSONL file, undecoded: the workers parse them (`_Worker.run`), so
    the main process (whose dedup decisions bound the wall clock) only reads and splits lines."""

    path: str
    name: str
    lines: list[tuple[int, bytes]]


def _raw_chunks(files: list[Path], cfg: CleanConfig, skip: int, on_bad: Callable | None,
                seen: dict) -> Iterator[_RawChunk]:
    """The JSONL inputs as `_RawChunk`s, after the first `skip` documents (parsed here, as `iter_documents` would:
    a resumed run reports the same malformed lines and notes whether any text was seen, in seen["text"])."""
    from genforge.data.readers import _guarded

    for path in files:
        buf: list[tuple[int, bytes]] = []
        for lineno, raw in _guarded(path, iter_raw_lines(path)):
            if skip:
                doc = parse_jsonl_line(raw, str(path), path.name, lineno, cfg.text_field, cfg.id_field)
                if isinstance(doc, Doc):
                    skip -= 1
                    seen["text"] = seen["text"] or bool(doc.text.strip())
                elif on_bad is None:
                    raise DataError(doc + " (or set skip_bad=true to skip bad lines)")
                else:
                    on_bad(f"{path}:{lineno}", doc, raw[:300])
                continue
            buf.append((lineno, raw))
            if len(buf) >= cfg.chunk_docs:
                yield _RawChunk(str(path), path.name, buf)
                buf = []
        if buf:
            yield _RawChunk(str(path), path.name, buf)


def _chunks(docs: Iterator[Doc], n: int) -> Iterator[list[tuple[str, str, str]]]:
    while True:
        chunk = [(d.id, d.text, d.source) for d in itertools.islice(docs, n)]
        if not chunk:
            return
        yield chunk


def _ordered_results(chunks: Iterator[list], cfg: CleanConfig, filters_dir: str | None) -> Iterator[tuple[list, dict]]:
    """(chunk, result) in input order; with workers > 1 at most 2 x workers chunks are in flight."""
    if cfg.workers == 1:
        w = _Worker(cfg, filters_dir)
        for chunk in chunks:
            yield chunk, w.run(chunk)
        return
    import multiprocessing as mp

    # fork: workers start in milliseconds and need no `if __name__ == "__main__"` guard in the caller's script
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(cfg, filters_dir)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(_process_in_worker, chunk)))
            if len(pending) >= 2 * cfg.workers:
                c, fut = pending.popleft()
                yield c, fut.result()
        while pending:
            c, fut = pending.popleft()
            yield c, fut.result()


def _decide_chunk(chunk: list[tuple[str, str, str]], res: dict, index: _Index, minhash: BatchMinHash | None,
                  cfg: CleanConfig, drop: Callable) -> tuple[list[bytes], int, list[int]]:
    """Every decision that depends on earlier documents, for one chunk in input order: exact and near dedup.

    Hits among documents kept in earlier chunks come from the sorted index runs in one batched lookup per
    chunk; hits within this chunk from the rows that share a key (`_same_key_groups`, `_Index.near_in_chunk`:
    all pairs compared at once), so no per-document index update or comparison happens in Python. Calls `drop`
    for each removed document; returns the
    output lines of the kept ones, their text bytes and their positions among the chunk's survivors (ascending).
    """
    why, keep, keys, sigs, lines = res["why"], res["keep"], res["keys"], res["sigs"], res["lines"]
    keep_pos = {i: j for j, i in enumerate(keep)}
    ex_sealed: dict[int, int] = {}  # row -> the earliest kept ordinal with its exact key, if any
    if cfg.dedup_exact and keep:
        for r, o in zip(*(a.tolist() for a in index.exact.lookup_flat(keys.reshape(-1, 1)))):
            ex_sealed[r] = min(o, ex_sealed[r]) if r in ex_sealed else o
    # within the chunk: the rows with the same exact key (group numbers) and the near candidates among earlier rows
    ex_group = _same_key_groups(keys).tolist() if cfg.dedup_exact and keep else []
    group_kept: dict[int, int] = {}  # exact-key group -> the ordinal of its member kept in this chunk
    bands = (res["bands"] if res.get("bands") is not None else minhash.band_keys(sigs)) \
        if minhash is not None and keep else None
    sealed_best: list = []
    # Candidates among earlier chunks, `SEALED_ROWS` rows at a time: a band key that many kept pages share (a
    # common sentence) matches thousands of entries, and the (row, candidate) pairs of a whole chunk of 1,024 rows
    # at once were most of the main process's peak memory on 1 GB of input.
    for lo in range(0, len(keep) if bands is not None else 0, SEALED_ROWS):
        rows, cands = index.near.lookup_flat(bands[lo:lo + SEALED_ROWS])
        sealed_best += index.best_sealed(sigs[lo:lo + SEALED_ROWS], rows, cands)
    near_here = index.near_in_chunk(sigs, bands) if bands is not None else {}
    # a chunk of many copies: per row, only the kept earlier rows that share a key (`_earlier_sharing`)
    near_groups = _earlier_sharing(bands.astype(np.uint32)) if near_here is None else None
    ordinal: dict[int, int] = {}  # candidate j kept in this chunk -> its ordinal in the index
    first_new = len(index.ids)
    kept_lines: list[bytes] = []
    kept_bytes = 0

    def head(i: int) -> Callable[[], str]:  # a text for the report's examples, decoded only while they are wanted
        if i in res["heads"]:
            return lambda: res["heads"][i]
        return lambda: json.loads(lines[keep_pos[i]])["text"][:300]

    for i, (doc_id, _, source) in enumerate(chunk):
        if why[i] is not None:
            drop(doc_id, source, *why[i], head(i))
            continue
        j = keep_pos[i]
        if cfg.dedup_exact:
            # the earliest kept document with this key: one kept earlier in this chunk, at most one a group
            hit_ex = ex_sealed.get(j, group_kept.get(ex_group[j]) if ex_group[j] >= 0 else None)
            if hit_ex is not None:
                drop(doc_id, source, "exact_dup", f"same as {index.ids[hit_ex]}", head(i))
                continue
        if bands is not None:
            hit = sealed_best[j]  # the best among documents kept in earlier chunks (lower ordinals)
            new = None
            if near_here is not None:
                for r, sim in near_here.get(j, ()):  # kept earlier in this very chunk: ascending ordinals
                    if r in ordinal and (new is None or sim > new[1]):
                        new = (ordinal[r], sim)
            elif here := [r for g in near_groups[1].get(j, ()) for r in near_groups[0][g] if r < j and r in ordinal]:
                new = index.near_best(sigs[j], {ordinal[r]: sigs[r] for r in here})
            if new is not None and (hit is None or new[1] > hit[1]):
                hit = new  # ties go to the earliest document, which is the sealed one
            if hit is not None:
                drop(doc_id, source, "near_dup", f"similar to {index.ids[hit[0]]} (Jaccard ~{hit[1]:.2f})", head(i))
                continue
        if index.ds is not None and (hit := index.ds.check_add(doc_id, res["texts"][j])) is not None:
            drop(doc_id, source, "near_dup", f"similar to {hit[0]} (Jaccard ~{hit[1]:.2f})", head(i))
            continue
        ordinal[j] = index.add(doc_id)
        if cfg.dedup_exact and ex_group[j] >= 0:
            group_kept.setdefault(ex_group[j], ordinal[j])
        kept_lines.append(lines[j])
        kept_bytes += res["kept_bytes"][j]
    kept_j = sorted(ordinal, key=ordinal.__getitem__)
    index.seal(first_new, keys[kept_j], sigs[kept_j] if bands is not None else None,
               bands[kept_j] if bands is not None else None)
    return kept_lines, kept_bytes, kept_j


# ---- the pipeline ----------------------------------------------------------------------------------------------

def clean_corpus(inputs: str | os.PathLike | Iterable[str | os.PathLike], out_path: str | os.PathLike,
                 cfg: CleanConfig | None = None) -> CleanReport:
    """Clean and deduplicate documents from `inputs` (files or folders) into `out_path` (JSONL).

    Also writes `clean_report.json`, `data_report.md`, a `<stem>.removed.jsonl` sidecar and the learned
    filters in `<stem>.filters/` beside `out_path`. Raises `DataError` for unreadable or empty input (or a
    malformed line, unless `skip_bad`). An interrupted run leaves `<out>.work/`, from which the next
    run with the same inputs and config resumes.
    """
    cfg = cfg or CleanConfig()
    if cfg.classifier == "auto":
        cfg = dataclasses.replace(cfg, classifier="world" if importlib.util.find_spec("sklearn") else "off")
    _check_config(cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    stem = out_path.name.removesuffix(".jsonl")
    report_path = out_path.with_name("clean_report.json")
    removed_path = out_path.with_name(stem + ".removed.jsonl")
    data_report_path = out_path.with_name("data_report.md")
    filters_dir = out_path.with_name(stem + ".filters")
    work = out_path.with_name(out_path.name + ".work")
    files = expand_paths(inputs)
    total_bytes = sum(f.stat().st_size for f in files)
    show = cfg.progress if cfg.progress is not None else total_bytes > 20e6
    if cfg.dedup_near and cfg.dedup_backend == "datasketch":
        try:
            NearDeduper(cfg.near_threshold, 8, cfg.shingle_size, cfg.minhash_seed, "datasketch")
        except (ValueError, ImportError) as e:
            raise ConfigError(f"dedup_backend: {e}") from None
    _harmful_matcher(cfg)  # a missing terms file is a config error before any work
    pack_to = None
    if cfg.pack_to:
        from genforge.data.shards import check_shard_target

        pack_to = check_shard_target(cfg.pack_to)
        if not (Path(cfg.pack_tokenizer) / "tokenizer.json").is_file():
            raise ConfigError(f"pack_tokenizer={cfg.pack_tokenizer}: no tokenizer.json there; train one with "
                              "`genforge tokenizer train` or point it at a shard folder")

    fp = _fingerprint(cfg, files)
    state = _load_state(work, fp) if cfg.resume else None
    if state is None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        state = {"fingerprint": fp, "docs_done": 0, "n_kept": 0, "kept_size": 0, "removed_size": 0,
                 "bytes_in": 0, "bytes_kept": 0, "removed": {}, "examples": {}, "seconds": 0.0, "cpu_seconds": 0.0,
                 "pack": None, "encoder": None}
        filters = prepare_filters(cfg, files, filters_dir)
        write_json(work / "filters.json", filters)
        t0, c0 = time.perf_counter(), time.process_time()  # throughput counts cleaning, not classifier training
    else:
        filters = json.loads((work / "filters.json").read_text())
    resumed_from = state["docs_done"]
    has_clf = cfg.classifier != "off"

    kept_path, rem_path = work / "kept.jsonl", work / "removed.jsonl"
    for p, size in ((kept_path, state["kept_size"]), (rem_path, state["removed_size"])):
        p.touch()
        os.truncate(p, size)
    minhash = (BatchMinHash(cfg.near_threshold, cfg.num_perm, cfg.shingle_size, cfg.minhash_seed)
               if cfg.dedup_near and cfg.dedup_backend != "datasketch" else None)
    index = _Index(work, cfg, minhash)
    index.restore(state["n_kept"], kept_path)
    writer = None
    if pack_to is not None:
        # the shards grow in the work folder beside the outputs and are checkpointed with them (truncated back
        # to the last checkpoint on resume), then move into pack_to when the clean is done
        from genforge.data.shards import ShardWriter, dtype_for_vocab
        from genforge.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(cfg.pack_tokenizer)
        (work / "shards").mkdir(exist_ok=True)
        writer = ShardWriter(work / "shards", dtype_for_vocab(tokenizer.vocab_size), state.get("pack"))

    bad: list[dict] = []
    bad_count = 0

    def on_bad(where: str, msg: str, raw: bytes) -> None:
        nonlocal bad_count
        bad_count += 1
        if len(bad) < N_BAD_SAMPLES:
            bad.append({"where": where, "error": msg, "line": raw.decode("utf-8", "replace")})

    # JSONL inputs travel to the workers as undecoded lines (parsed there); other formats as parsed documents
    raw = all(f.name.lower().endswith((".jsonl", ".jsonl.gz")) for f in files)
    seen = {"text": False}
    if raw:
        chunks = _raw_chunks(files, cfg, resumed_from, on_bad if cfg.skip_bad else None, seen)
    else:
        docs = iter_documents(files, cfg.text_field, cfg.id_field, on_bad=on_bad if cfg.skip_bad else None)
        chunks = _chunks(itertools.islice(docs, resumed_from, None), cfg.chunk_docs)
    removed, examples = dict(state["removed"]), {k: list(v) for k, v in state["examples"].items()}
    s = dict(state)
    bar = Progress(None, desc="clean", unit="doc", initial=resumed_from) if show else None
    last_ckpt = s["docs_done"]
    try:
        with open(kept_path, "ab") as out, open(rem_path, "ab") as rem:
            def checkpoint() -> None:
                out.flush()
                rem.flush()
                for f in (out, rem):
                    os.fsync(f.fileno())
                index.sync()
                if writer is not None:
                    writer.sync()
                    s["pack"] = writer.state()
                s.update(kept_size=out.tell(), removed_size=rem.tell(), n_kept=len(index.ids), removed=removed,
                         examples=examples, seconds=s["seconds"] + time.perf_counter() - t_seg[0],
                         cpu_seconds=s["cpu_seconds"] + time.process_time() - t_seg[1])
                t_seg[:] = [time.perf_counter(), time.process_time()]
                write_json(work / "state.json", s)

            t_seg = [t0, c0]

            def drop(doc_id: str, source: str, reason: str, detail: str, head: Callable[[], str]) -> None:
                removed[reason] = removed.get(reason, 0) + 1
                ex = examples.setdefault(reason, [])
                if len(ex) < N_EXAMPLES:
                    ex.append({"id": doc_id, "detail": detail, "text": head()})
                rem.write((json.dumps({"id": doc_id, "reason": reason, "detail": detail, "source": source},
                                      ensure_ascii=False) + "\n").encode("utf-8"))

            results = _ordered_results(chunks, cfg, str(filters_dir) if has_clf else None)
            for chunk, res in results:
                if "rows" in res:  # parsed in the worker
                    for b in res["bad"]:
                        on_bad(*b)
                    seen["text"] = seen["text"] or res["any_text"]
                    chunk = res["rows"]
                s["bytes_in"] += res["in_bytes"]
                s["docs_done"] += len(chunk)
                kept_lines, kept_bytes, kept_rows = _decide_chunk(chunk, res, index, minhash, cfg, drop)
                s["bytes_kept"] += kept_bytes
                out.write(b"".join(kept_lines))
                if writer is not None:
                    _pack_kept(writer, res["tokens"], kept_rows, res["kept_bytes"])
                    s["encoder"] = res["tokens"]["encoder"]
                if bar is not None:
                    bar.update(len(chunk))
                if s["docs_done"] - last_ckpt >= cfg.checkpoint_docs:
                    checkpoint()
                    last_ckpt = s["docs_done"]
            if raw and not seen["text"]:  # as `iter_documents` says it
                raise DataError(f"empty corpus: no text in {', '.join(map(str, files))}")
            checkpoint()
    finally:
        index.close()
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
    if s["docs_done"] == 0 and not bad_count:
        raise DataError(f"empty corpus: no documents in {', '.join(map(str, files))}")
    if s["docs_done"] == 0:
        raise DataError(f"no readable documents: all {bad_count} lines of {', '.join(map(str, files))} are "
                        f"malformed (first: {bad[0]['error']})")
    manifest = None
    if writer is not None:  # before anything moves: an empty train split is an error with the clean resumable
        manifest = writer.manifest(tokenizer, cfg.pack_val_fraction, s["encoder"])
    # from here the work folder no longer describes a resumable state (outputs move out of it)
    write_json(work / "state.json", {**s, "finished": True})
    os.replace(kept_path, out_path)
    os.replace(rem_path, removed_path)
    if manifest is not None:
        from genforge.data.shards import warn_if_no_val
        from genforge.io import atomic_dir

        with atomic_dir(pack_to) as tmp:
            for f in (work / "shards").iterdir():
                shutil.move(f, tmp / f.name)
            tokenizer.save(tmp)  # the shards and their tokenizer travel together, as `pack_shards` writes them
            write_json(tmp / "manifest.json", manifest)
        warn_if_no_val(pack_to, manifest)
    kept_ids, removed_ids = [], {}
    if s["docs_done"] <= 1_000_000:  # per-document lists for callers that score small runs in memory
        kept_ids = list(index.ids)
        for _, row in read_jsonl(removed_path):
            removed_ids[str(row["id"])] = row["reason"]
    report = CleanReport(
        docs_in=s["docs_done"], docs_kept=len(index.ids), bytes_in=s["bytes_in"], bytes_kept=s["bytes_kept"],
        removed=dict(sorted(removed.items(), key=lambda kv: -kv[1])), seconds=round(s["seconds"], 3),
        cpu_seconds=round(s["cpu_seconds"], 3), out_path=str(out_path), report_path=str(report_path),
        removed_path=str(removed_path), bad_lines=bad_count, bad_samples=bad, resumed_from=resumed_from,
        data_report_path=str(data_report_path), filters=_slim(filters), kept_ids=kept_ids, removed_ids=removed_ids,
        shards=str(pack_to) if pack_to is not None else "",
        tokens={k: v["n_tokens"] for k, v in manifest["splits"].items()} if manifest is not None else {})
    write_json(report_path, {**report.summary(), "inputs": [str(f) for f in files], "config": asdict(cfg),
                             "index_bytes": index.nbytes, "examples": examples})
    from genforge.data.report import render_data_report

    write_text(data_report_path, render_data_report(report.summary(), examples, cfg, [str(f) for f in files]))
    shutil.rmtree(work, ignore_errors=True)
    return report


def _slim(filters: dict) -> dict:
    out = json.loads(json.dumps(filters))
    for f in out.get("filters", {}).values():
        f.pop("outcomes", None)
    return out


def _load_state(work: Path, fp: str) -> dict | None:
    p = work / "state.json"
    if not p.is_file():
        return None
    try:
        state = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if state.get("finished"):
        return None  # killed while moving finished outputs into place: redo it cleanly
    if state.get("fingerprint") != fp:
        print(f"{work}: inputs or config changed since the interrupted run; starting over")
        return None
    print(f"resuming from {work} at document {state['docs_done']:,}")
    return state


def score_against_labels(kept: CleanReport | str | os.PathLike | Iterable[str],
                         labels_path: str | os.PathLike) -> dict:
    """Score a cleaning run against `{"id", "label"}` rows: recall per planted label and the clean-keep rate.

    `kept` is a `CleanReport`, the path of the cleaned JSONL, or an iterable of kept ids. A planted
    document counts as caught when it was removed for any reason.
    """
    if isinstance(kept, CleanReport):
        kept_ids = set(kept.kept_ids) if kept.kept_ids or not kept.docs_kept else \
            {str(obj["id"]) for _, obj in read_jsonl(kept.out_path, required=("id",))}
    elif isinstance(kept, (str, os.PathLike)):
        kept_ids = {str(obj["id"]) for _, obj in read_jsonl(kept, required=("id",))}
    else:
        kept_ids = set(kept)
    total: dict[str, int] = {}
    removed: dict[str, int] = {}
    missed: dict[str, list[str]] = {}
    for _, row in read_jsonl(labels_path, required=("id", "label")):
        label, did = row["label"], str(row["id"])
        total[label] = total.get(label, 0) + 1
        if did in kept_ids:
            if label != "clean" and label not in CLEAN_ALIASES:
                missed.setdefault(label, []).append(did)
        else:
            removed[label] = removed.get(label, 0) + 1
    if not total:
        raise DataError(f"{labels_path}: no labels")
    n_removed = sum(removed.values())
    n_judged = n_removed - sum(removed.get(k, 0) for k in CLEAN_ALIASES)
    return {
        # planted to be removed: junk, harmful, duplicates; the safety plants (canary, bias) are text to keep
        "recall": {k: removed.get(k, 0) / total[k] for k in total if k != "clean" and k not in CLEAN_ALIASES},
        "clean_keep_rate": 1 - removed.get("clean", 0) / total["clean"] if "clean" in total else None,
        "plant_keep_rate": {k: 1 - removed.get(k, 0) / total[k] for k in total if k in CLEAN_ALIASES},
        # of the removals the labels judge (a canary's identical copies are fair dedup removals: not judged)
        "precision": (n_judged - removed.get("clean", 0)) / n_judged if n_judged else None,
        "counts": total,
        "missed": {k: v[:10] for k, v in missed.items()},
    }


def per_filter_scores(removed_path: str | os.PathLike, labels_path: str | os.PathLike) -> dict[str, dict]:
    """Precision and recall of each removal reason against planted labels.

    precision: share of the documents a reason removed that carry a planted (non-clean) label;
    recall: share of the documents with the label that reason targets that it removed (a document counts
    for the first reason that fired, so a later filter's recall is what the earlier ones left it).
    Also returns per-document 0/1 outcomes ("hits", "caught") for bootstrap intervals.
    """
    labels = {str(row["id"]): row["label"] for _, row in read_jsonl(labels_path, required=("id", "label"))}
    by_reason: dict[str, list[str]] = {}
    for _, row in read_jsonl(removed_path, required=("id", "reason")):
        by_reason.setdefault(row["reason"], []).append(labels.get(str(row["id"]), "unlabelled"))
    totals: dict[str, int] = {}
    for lab in labels.values():
        totals[lab] = totals.get(lab, 0) + 1
    out = {}
    for reason, labs in by_reason.items():
        target = REASON_TARGET.get(reason, "junk")
        # a removal is right when the document was planted to go; a canary's identical copy is a fair dedup
        hits = [int(lab not in ("clean", "unlabelled") and (lab not in CLEAN_ALIASES or
                                                             (lab == "canary" and reason in ("exact_dup", "near_dup"))))
                for lab in labs]
        n_t = totals.get(target, 0)
        caught = [1] * sum(lab == target for lab in labs)
        caught += [0] * (n_t - len(caught))
        out[reason] = {"n": len(labs), "target": target, "precision": float(np.mean(hits)) if hits else 0.0,
                       "recall": float(np.mean(caught)) if caught else 0.0, "hits": hits, "caught": caught}
    return out


REASON_TARGET = {"harmful": "harmful", "harm_classifier": "harmful", "exact_dup": "exact_dup",
                 "near_dup": "near_dup"}
"""The planted label each removal reason is meant to catch (every other reason targets "junk")."""
