"""Exact and near-duplicate detection, streaming and keep-the-first.

* Exact: SHA-1 of the case-folded, whitespace-collapsed NFC text, so copies that differ only in
  spacing or Unicode form count as one.
* Near: MinHash over word n-gram shingles (Broder 1997) with locality-sensitive hashing to find
  candidates, then the candidate's estimated Jaccard similarity is checked against the threshold
  (LSH banding alone lets some pairs below the threshold through). We use `datasketch` when it is
  installed and a small numpy MinHash otherwise; both keep one signature per kept document in
  memory (num_perm x 4 bytes: 512 B at the default 128). Shingles are hashed with CRC-32, a C
  builtin about 4x faster than SHA-1 here; the random permutations supply the MinHash randomness.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
import unicodedata
import warnings
import zlib
from collections.abc import Callable

import numpy as np

from genforge.extras import require

try:
    import datasketch
except ImportError:  # optional: the builtin MinHash below is used instead
    datasketch = None

_WORD_RE = re.compile(r"\w+", re.UNICODE)
_PRIME = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64((1 << 32) - 1)


def exact_key(text: str) -> str:
    """Hash of the text with case, spacing and Unicode form normalised away."""
    canon = " ".join(unicodedata.normalize("NFC", text).casefold().split())
    return hashlib.sha1(canon.encode("utf-8")).hexdigest()


def shingles(text: str, size: int = 3) -> set[str]:
    """Word n-grams of the lower-cased text (all words as one shingle if the text is shorter than n)."""
    ws = _WORD_RE.findall(text.lower())
    if len(ws) <= size:
        return {" ".join(ws)} if ws else set()
    return {" ".join(ws[i:i + size]) for i in range(len(ws) - size + 1)}


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity of two sets (for tests and checks)."""
    return len(a & b) / len(a | b) if a or b else 1.0


class ExactDeduper:
    """Remembers the first id for each exact key."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def check_add(self, doc_id: str, text: str) -> str | None:
        """Return the id of an earlier identical document, or None (and remember this one)."""
        key = exact_key(text)
        first = self._seen.get(key)
        if first is None:
            self._seen[key] = doc_id
        return first


def lsh_params(threshold: float, num_perm: int, min_recall: float = 0.95) -> tuple[int, int]:
    """Bands b and rows r (b*r <= num_perm) for LSH banding, chosen for recall.

    A pair with Jaccard s becomes a candidate with probability 1 - (1 - s^r)^b. We take the largest r
    (fewest spurious candidates) that still gives a pair exactly at the threshold `min_recall`; every
    candidate is then checked against the threshold, so extra candidates cost time, not accuracy.
    """
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if 1 - (1 - threshold**r) ** b >= min_recall:
            best = (b, r)
        else:
            break
    return best


class _BuiltinMinHash:
    """Numpy MinHash + banded LSH, used when datasketch is not installed.

    A signature is (hash values, band keys); each band's rows are folded into one 64-bit key with
    random odd multipliers, one numpy op for all bands (a rare key collision only adds a candidate).
    """

    def __init__(self, threshold: float, num_perm: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 1 << 32, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64)
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.fold = rng.integers(0, 1 << 63, self.rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.tables: list[dict[int, list[str]]] = [{} for _ in range(self.bands)]
        self.sigs: dict[str, np.ndarray] = {}

    def signature(self, sh: set[str]) -> tuple[np.ndarray, list[int]]:
        h = np.fromiter((zlib.crc32(s.encode()) for s in sh), dtype=np.uint64, count=len(sh))
        # (a*h + b) mod p fits in uint64: a, h < 2^32 and b < 2^32.
        sig = (((h[:, None] * self.a + self.b) % _PRIME) & _MASK32).min(axis=0)
        bands = sig[:self.bands * self.rows].reshape(self.bands, self.rows)
        keys = (bands * self.fold).sum(axis=1, dtype=np.uint64)  # wraps mod 2^64, as intended
        return sig.astype(np.uint32), keys.tolist()

    def candidates(self, sig: tuple[np.ndarray, list[int]]) -> set[str]:
        out: set[str] = set()
        for table, key in zip(self.tables, sig[1]):
            out.update(table.get(key, ()))
        return out

    def insert(self, doc_id: str, sig: tuple[np.ndarray, list[int]]) -> None:
        self.sigs[doc_id] = sig[0]
        for table, key in zip(self.tables, sig[1]):
            table.setdefault(key, []).append(doc_id)

    def similarity(self, sig: tuple[np.ndarray, list[int]], doc_id: str) -> float:
        return float(np.count_nonzero(self.sigs[doc_id] == sig[0])) / len(sig[0])


class _DatasketchMinHash:
    """The same interface over datasketch's MinHash and MinHashLSH."""

    def __init__(self, threshold: float, num_perm: int, seed: int) -> None:
        self.template = datasketch.MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)
        # datasketch's own (b, r) choice weighs misses and false candidates equally, which at 0.5 puts the
        # S-curve midpoint above the threshold and misses ~45 % of pairs right at it; use ours.
        self.lsh = datasketch.MinHashLSH(num_perm=num_perm, params=lsh_params(threshold, num_perm))
        self.sigs: dict[str, datasketch.MinHash] = {}

    def signature(self, sh: set[str]):
        m = datasketch.MinHash(num_perm=self.template.num_perm, seed=self.template.seed, hashfunc=zlib.crc32,
                               permutations=self.template.permutations, scheme=self.template.scheme)
        m.update_batch([s.encode("utf-8") for s in sh])
        return m

    def candidates(self, sig) -> set[str]:
        return set(self.lsh.query(sig))

    def insert(self, doc_id: str, sig) -> None:
        self.sigs[doc_id] = sig
        self.lsh.insert(doc_id, sig, check_duplication=False)

    def similarity(self, sig, doc_id: str) -> float:
        return float(sig.jaccard(self.sigs[doc_id]))


class NearDeduper:
    """Streaming near-duplicate filter: `check_add` returns the earlier similar doc's id, or None and indexes this one.

    threshold: estimated Jaccard similarity of word-shingle sets at or above which two texts are duplicates.
    backend: "auto" (datasketch if installed), "datasketch" or "builtin".
    """

    def __init__(self, threshold: float = 0.5, num_perm: int = 128, shingle_size: int = 3, seed: int = 1,
                 backend: str = "auto") -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        if backend == "auto":
            backend = "datasketch" if datasketch is not None else "builtin"
        if backend == "datasketch" and datasketch is None:
            require("datasketch", "data")  # raises MissingExtraError (an ImportError) naming the extra
        if backend not in ("datasketch", "builtin"):
            raise ValueError(f"unknown near-dedup backend {backend!r}; use auto, datasketch or builtin")
        self.backend, self.threshold, self.shingle_size = backend, threshold, shingle_size
        impl = _DatasketchMinHash if backend == "datasketch" else _BuiltinMinHash
        self._impl = impl(threshold, num_perm, seed)

    def check_add(self, doc_id: str, text: str) -> tuple[str, float] | None:
        """Return (earlier id, estimated similarity) for a near duplicate; else index this text and return None."""
        sh = shingles(text, self.shingle_size)
        if not sh:
            return None
        sig = self._impl.signature(sh)
        best: tuple[str, float] | None = None
        for cand in self._impl.candidates(sig):
            sim = self._impl.similarity(sig, cand)
            if sim >= self.threshold and (best is None or sim > best[1]):
                best = (cand, sim)
        if best is None:
            self._impl.insert(doc_id, sig)
        return best


# ---- batch MinHash and a compact index, for corpora that do not fit Python dicts ------------------------------

_SHINGLE_MULT = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1, 0xD3A2646C, 0xFD7046C5,
                          0xB55A4F09], dtype=np.uint64)


class _CrcCache(dict):
    """word -> CRC-32 of its UTF-8, remembered: words repeat, and one dict lookup beats encode + crc32."""

    def __missing__(self, word: str) -> int:
        if len(self) >= 1 << 18:  # bounded: under ~40 MB a worker on any corpus
            self.clear()
        v = self[word] = zlib.crc32(word.encode("utf-8"))
        return v


_CRC = _CrcCache()


def word_hashes(text: str) -> np.ndarray:
    """CRC-32 of each lower-cased word, shape (n_words,) uint64."""
    ws = _WORD_RE.findall(text.lower())
    return np.fromiter(map(_CRC.__getitem__, ws), dtype=np.uint64, count=len(ws))


@functools.lru_cache(maxsize=1)
def _compiled_kernel() -> Callable | None:
    """The fused MinHash loop compiled with numba (the `data` extra), or None when numba is not installed.

    Same arithmetic as `BatchMinHash._fill` (uint64 products wrap mod 2^64, shingle hashes masked to 32 bits,
    the minimum taken before the shift), so the signatures are identical bit for bit; one pass over each
    document's shingles with the 128 running minima in registers instead of a (num_perm, n_shingles) temporary
    (3 ms per MB instead of ~39 here). Compiled once a machine (`cache=True`); after that numba's import and the
    load take ~0.9 CPU-s and ~145 MB RSS once a run (called in the main process, so a forked pool shares them).
    """
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True)
    def kernel(flat, lens, mult, a, b, out):  # pragma: no cover - runs compiled
        n = mult.shape[0]
        perms = a.shape[0]
        mask = np.uint64(0xFFFFFFFF)
        top = np.uint64(0xFFFFFFFFFFFFFFFF)
        shift = np.uint64(32)
        low = np.empty(perms, dtype=np.uint64)
        start = 0
        for d in range(lens.shape[0]):
            size = lens[d]
            if size == 0:
                continue  # no words: the row stays all ones
            low[:] = top
            m = size - n + 1 if size > n else 1
            width = n if size > n else size
            for s in range(m):
                h = np.uint64(0)
                for j in range(width):
                    h += flat[start + s + j] * mult[j]
                h &= mask
                for p in range(perms):  # `min`, not an `if`: LLVM vectorises it (~8x faster here)
                    low[p] = min(low[p], a[p] * h + b[p])
            for p in range(perms):
                out[d, p] = np.uint32(low[p] >> shift)
            start += size

    # load (or compile) the machine code now, once: a process pool forked after this shares it (~0.25 s each)
    one = np.ones(1, dtype=np.uint64)
    try:
        kernel(one, np.ones(1, dtype=np.int64), _SHINGLE_MULT[:1], one, one, np.zeros((1, 1), dtype=np.uint32))
    except Exception as e:  # a numba that cannot compile here: the numpy path gives the same signatures
        warnings.warn(f"numba could not compile the MinHash loop ({type(e).__name__}: {e}); using numpy", stacklevel=2)
        return None
    return kernel


class BatchMinHash:
    """MinHash signatures for many documents in a few numpy ops, and their LSH band keys.

    A shingle's hash is a fixed linear mix of its words' CRC-32s (mod 2^32), so shingles need no Python
    strings; one (n_shingles_in_batch, num_perm) product and `np.minimum.reduceat` give every signature.
    This is a different (equally valid) hash family from `_BuiltinMinHash`, so signatures of the two
    are not comparable; similarities are.
    """

    def __init__(self, threshold: float, num_perm: int = 128, shingle_size: int = 3, seed: int = 1,
                 compiled: bool | None = None) -> None:
        """compiled: use the numba loop (None: when numba is installed; False: numpy only; True: require it)."""
        if compiled and _compiled_kernel() is None:
            require("numba", "data")
        self.kernel = _compiled_kernel() if compiled is None or compiled else None
        if shingle_size > len(_SHINGLE_MULT):
            raise ValueError(f"shingle_size must be <= {len(_SHINGLE_MULT)}, got {shingle_size}")
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
        self.b = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64)
        self.num_perm, self.shingle_size = num_perm, shingle_size
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.fold = rng.integers(0, 1 << 63, self.rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        # the band number is mixed into each key so all bands share one index
        self.band_salt = rng.integers(0, 1 << 63, self.bands, dtype=np.uint64)

    def shingle_hashes(self, wh: np.ndarray) -> np.ndarray:
        """Hashes of the word n-grams (all words as one shingle when there are fewer than n), shape (n_shingles,)."""
        n = self.shingle_size
        if len(wh) == 0:
            return wh
        if len(wh) <= n:
            return ((wh * _SHINGLE_MULT[:len(wh)]).sum(dtype=np.uint64) & _MASK32).reshape(1)
        m = len(wh) - n + 1
        acc = np.zeros(m, dtype=np.uint64)
        for j in range(n):
            acc += wh[j:j + m] * _SHINGLE_MULT[j]
        return acc & _MASK32

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(n_texts, num_perm) uint32 signatures; a text without words gets all-ones (it matches nothing real)."""
        return self._signatures([self.shingle_hashes(word_hashes(t)) for t in texts])

    def signatures_of_words(self, docs: list[list[str]]) -> np.ndarray:
        """`signatures` from each text's lower-cased words (`\\w+` runs, in order), already split by the caller.

        All documents' shingles in one pass: every window of `shingle_size` consecutive words of the concatenated
        word hashes is hashed at once and the windows that lie inside one document are kept (the same hashes as
        `shingle_hashes` per document, without a numpy call per document)."""
        lens = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        flat = np.fromiter(map(_CRC.__getitem__, itertools.chain.from_iterable(docs)), dtype=np.uint64,
                           count=int(lens.sum()))
        return self.signatures_of_hashes(flat, lens)

    def signatures_of_hashes(self, flat: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """`signatures_of_words` from the words' CRC-32s (`flat`, uint64, documents one after another) and the
        words per document (`lens`, shape (n_docs,))."""
        flat = np.ascontiguousarray(flat, dtype=np.uint64)
        lens = np.ascontiguousarray(lens, dtype=np.int64)
        n = self.shingle_size
        if self.kernel is not None:
            out = np.full((len(lens), self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
            self.kernel(flat, lens, _SHINGLE_MULT[:n], self.a, self.b, out)
            return out
        starts = np.cumsum(lens) - lens
        sizes = np.where(lens > n, lens - n + 1, (lens > 0).astype(np.int64))  # shingles per document
        out_start = np.cumsum(sizes) - sizes
        hashes = np.zeros(int(sizes.sum()), dtype=np.uint64)
        long = np.flatnonzero(lens > n)
        if len(long):
            m = len(flat) - n + 1
            acc = np.zeros(m, dtype=np.uint64)  # acc[p]: the shingle of words p .. p+n-1 of the concatenation
            for j in range(n):
                acc += flat[j:j + m] * _SHINGLE_MULT[j]
            acc &= _MASK32
            k = sizes[long]
            offset = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)  # shingle number within its document
            hashes[np.repeat(out_start[long], k) + offset] = acc[np.repeat(starts[long], k) + offset]
        for d in np.flatnonzero((lens > 0) & (lens <= n)).tolist():  # rare: all words form one shingle
            hashes[out_start[d]] = self.shingle_hashes(flat[starts[d]:starts[d] + lens[d]])[0]
        return self._signatures([hashes[a:a + k] for a, k in zip(out_start.tolist(), sizes.tolist())])

    def _signatures(self, sh: list[np.ndarray]) -> np.ndarray:
        out = np.full((len(sh), self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        # Hash about a thousand shingles at a time: the (shingles, num_perm) uint64 temporary (1 MB) then stays in
        # a core's L2 cache; 4096 at a time (4 MB) was ~25 % slower here, one product per chunk ~2x.
        group: list[int] = []
        size = 0
        for i, s in enumerate(sh):
            if len(s):
                group.append(i)
                size += len(s)
            if group and (size >= 1024 or i == len(sh) - 1):
                self._fill(out, group, sh)
                group, size = [], 0
        return out

    def _fill(self, out: np.ndarray, idx: list[int], sh: list[np.ndarray]) -> None:
        h = np.concatenate([sh[i] for i in idx])  # (n_shingles,)
        sizes = np.fromiter((len(sh[i]) for i in idx), dtype=np.int64, count=len(idx))
        # multiply-shift hashing (Dietzfelbinger et al. 1997): the top 32 bits of a*h + b mod 2^64, with a odd;
        # no modulo, about 3x faster than (a*h + b) mod p. In place: one (num_perm, n_shingles) temporary.
        # Permutations along rows, so each document's minimum is a reduction over contiguous memory (4x faster
        # than down columns); x -> x >> 32 never decreases, so the top bits of the minimum are the minimum of the
        # top bits, and only the (num_perm, n_docs) minima are shifted: ~40 % less time than product-major.
        perm = np.multiply(self.a[:, None], h[None, :])  # (num_perm, n_shingles) uint64
        perm += self.b[:, None]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        low = np.minimum.reduceat(perm, starts, axis=1)  # (num_perm, n_docs)
        low >>= np.uint64(32)
        out[idx] = low.T

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """(n, bands) uint64 keys: each band's rows folded into one number, salted by the band index."""
        s = sigs[:, :self.bands * self.rows].astype(np.uint64).reshape(len(sigs), self.bands, self.rows)
        return (s * self.fold).sum(axis=2, dtype=np.uint64) ^ self.band_salt


class RunIndex:
    """A multimap key -> int32 value kept as sorted numpy runs (a small log-structured merge tree).

    8 bytes an entry with uint32 keys (12 with uint64) instead of ~100 for a dict of lists, and lookups of a
    whole batch of keys are a few `np.searchsorted` calls per run. Entries added with `add` are visible to
    `lookup_pending` at once and to `lookup` after `seal()`; a run merges into the previous one when it is at
    least half its size (up to `max_run` entries), so there are O(log n) runs below that size (a merge is one pass of
    timsort over the two runs).
    """

    def __init__(self, key_dtype: type = np.uint64, filter_bits: int = 0, max_run: int = 1 << 23) -> None:
        self.dtype = np.dtype(key_dtype)
        # Runs stop merging at max_run entries: merging a run of n entries briefly needs ~2n entries' worth of
        # temporaries, which at 1 GB of input (28 M band keys) was the main process's peak; a few more runs cost
        # little once the bitmap below leaves only a few queries to search them.
        self.max_run = max_run
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending: dict[int, list[int]] = {}
        # Optional presence bitmap over the top `filter_bits` bits of the sealed keys (2^bits / 8 bytes): a query
        # whose bit is clear is in no run, so only the few others are searched in every run. Most LSH band
        # queries miss, and the binary searches through every run were most of a lookup's time.
        if filter_bits and not 8 <= filter_bits <= 8 * self.dtype.itemsize:
            raise ValueError(f"filter_bits must be 0 or in [8, {8 * self.dtype.itemsize}], got {filter_bits}")
        self.shift = np.uint64(8 * self.dtype.itemsize - filter_bits)
        self.bitmap = np.zeros(1 << max(filter_bits - 3, 0), dtype=np.uint8) if filter_bits else None

    def _bits(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Byte and bit of each key's place in the bitmap."""
        top = keys.astype(np.uint64) >> self.shift
        return (top >> np.uint64(3)).astype(np.int64), np.left_shift(1, (top & np.uint64(7)).astype(np.uint8))

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self.runs) + sum(map(len, self.pending.values()))

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.runs) + (self.bitmap.nbytes if self.bitmap is not None else 0)

    def lookup(self, keys: np.ndarray) -> list[list[int]]:
        """For each row of `keys` (shape (n, k)), the values stored in sealed runs under any of its keys."""
        out: list[list[int]] = [[] for _ in range(len(keys))]
        rows, vals = self.lookup_flat(keys)
        for r, v in zip(rows.tolist(), vals.tolist()):
            out[r].append(v)
        return out

    def lookup_flat(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`lookup` as two arrays: (row of `keys`, value) for every stored entry under any of the row's keys."""
        flat = keys.reshape(-1).astype(self.dtype, copy=False)
        width = keys.shape[1] if keys.ndim == 2 else 1
        # Queries in sorted order: numpy's binary search starts from the previous answer for increasing keys,
        # so a batch walks each run once instead of jumping about it (~3x faster on a large index). Most
        # queries miss, so the "right" bound is searched only for the hits.
        if self.bitmap is not None:
            byte, bit = self._bits(flat)
            maybe = np.flatnonzero(self.bitmap[byte] & bit)  # the rest are in no run
            order = maybe[np.argsort(flat[maybe], kind="stable")]
        else:
            order = np.argsort(flat, kind="stable")
        q = flat[order]
        rows, vals = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int32)]
        for k, v in self.runs:
            lo = np.searchsorted(k, q, "left")
            hit = np.flatnonzero(k[np.minimum(lo, len(k) - 1)] == q)
            if not len(hit):
                continue
            lo = lo[hit]
            cnt = np.searchsorted(k, q[hit], "right") - lo
            # every entry lo .. hi-1 of each hit, in one gather
            pos = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(int(cnt.sum()))
            rows.append(np.repeat(order[hit] // width, cnt))
            vals.append(v[pos])
        return np.concatenate(rows), np.concatenate(vals)

    def lookup_pending(self, keys: np.ndarray) -> list[int]:
        """Values added since the last `seal()` under any of `keys` (one document's keys)."""
        if not self.pending:
            return []
        out: list[int] = []
        for key in keys.astype(self.dtype, copy=False).tolist():
            out.extend(self.pending.get(key, ()))
        return out

    def add(self, keys: np.ndarray, value: int) -> None:
        for key in keys.reshape(-1).astype(self.dtype, copy=False).tolist():
            self.pending.setdefault(key, []).append(value)

    def add_run(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add many entries at once (a sealed batch, or rebuilding an index on resume)."""
        keys = keys.astype(self.dtype, copy=False)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        if self.bitmap is not None and len(keys):
            # sorted keys have sorted bytes: OR the bits of each byte's run together, then one fancy assignment
            # (each byte once), ~10x cheaper than `np.bitwise_or.at` over every key
            byte, bit = self._bits(keys)
            first = np.flatnonzero(np.concatenate([[True], byte[1:] != byte[:-1]]))
            self.bitmap[byte[first]] |= np.bitwise_or.reduceat(bit, first)
        self.runs.append((keys, values.astype(np.int32)[order]))
        self._merge()

    def seal(self) -> None:
        if not self.pending:
            return
        ks = np.fromiter((k for k, vs in self.pending.items() for _ in vs), dtype=self.dtype)
        vs = np.fromiter((v for vals in self.pending.values() for v in vals), dtype=np.int32)
        self.pending = {}
        self.add_run(ks, vs)

    def _merge(self) -> None:
        while (len(self.runs) > 1 and len(self.runs[-1][0]) * 2 >= len(self.runs[-2][0])
               and len(self.runs[-1][0]) + len(self.runs[-2][0]) <= self.max_run):
            (k2, v2), (k1, v1) = self.runs.pop(), self.runs.pop()
            # a stable sort of two sorted runs is one merge pass (timsort finds the runs); equal keys keep the
            # older entries first. ~2x faster than scattering both runs into place by binary search.
            k = np.concatenate([k1, k2])
            v = np.concatenate([v1, v2])
            del k1, k2, v1, v2  # (the popped runs' last references: peak memory stays ~2x the merged run)
            order = np.argsort(k, kind="stable")
            k = k[order]
            v = v[order]
            del order
            self.runs.append((k, v))
