"""Byte-level BPE tokenizer (trained with HF `tokenizers`), special tokens and the chat template.

Byte-level means every string round-trips exactly (ASCII, accents, emoji, Chinese): the base
alphabet is the 256 bytes, so nothing is ever out of vocabulary. Digits are split one per token
before BPE (as Llama does) so arithmetic sees place value instead of arbitrary digit chunks.

Saved as `tokenizer.json` + `tokenizer_config.json`, which `transformers.AutoTokenizer` loads;
the chat template is a Jinja string stored there, so HF's `apply_chat_template` renders exactly
what `Tokenizer.render_chat` renders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from genforge.errors import CheckpointError, ConfigError, DataError
from genforge.io import write_json, write_text

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, SYSTEM, USER, ASSISTANT, END]  # ids 0..6, in this order
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")

# One turn renders as "<|role|>content<|end|>\n"; the whole chat starts with <|bos|>. The
# generation prompt is "<|assistant|>"; the model ends its turn with <|end|>.
# Function calling (OpenAI's `tools` / `tool_calls` / role "tool") is plain text inside those turns, in the
# Hermes/Qwen shape, so no new special token (and no new id) is needed: `tools` become one system turn listing
# each tool as JSON; an assistant's call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` after its
# content; a tool's result is a user turn `<tool_response>...</tool_response>`.
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
TOOLS_INTRO = "You may call these tools:\n"
TOOLS_OUTRO = 'To call one, reply <tool_call>{"name": NAME, "arguments": {...}}</tool_call>'
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}{{ '<|system|>' + '" + TOOLS_INTRO.replace("\n", "\\n") + "' }}"
    "{% for tool in tools %}{{ tool | tojson }}{{ '\\n' }}{% endfor %}"
    "{{ '" + TOOLS_OUTRO + "' + '<|end|>' + '\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|user|>" + TOOL_RESPONSE_OPEN + "' + message['content'] + '" + TOOL_RESPONSE_CLOSE + "<|end|>' + '\\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>' + (message['content'] or '') }}"
    "{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "{% set f = call['function'] if call['function'] is defined else call %}"
    "{{ '" + TOOL_CALL_OPEN + "{\"name\": \"' + f['name'] + '\", \"arguments\": ' }}"
    "{% if f['arguments'] is string %}{{ f['arguments'] }}{% else %}{{ f['arguments'] | tojson }}{% endif %}"
    "{{ '}" + TOOL_CALL_CLOSE + "' }}"
    "{% endfor %}{% endif %}"
    "{{ '<|end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def format_tool_call(name: str, arguments: str | dict) -> str:
    """One call as the assistant writes it; `arguments` is OpenAI's JSON text (kept verbatim) or a dict."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'{TOOL_CALL_OPEN}{{"name": "{name}", "arguments": {args}}}{TOOL_CALL_CLOSE}'


def tools_turn(tools: list[dict]) -> str:
    """The system turn's content that lists `tools` (OpenAI's tool objects, one JSON line each)."""
    return TOOLS_INTRO + "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tools) + TOOLS_OUTRO


def plain_turn(m: dict, i: int = 0) -> tuple[str, str]:
    """(role token's role, text content) of one message, tool calls and tool results rendered as text."""
    role = m.get("role")
    if role == "tool":
        return "user", f"{TOOL_RESPONSE_OPEN}{m.get('content') or ''}{TOOL_RESPONSE_CLOSE}"
    if role not in ROLE_TOKENS:
        raise DataError(f"message {i}: role must be one of {sorted(ROLE_TOKENS) + ['tool']}, got {role!r}")
    text = m.get("content") or ""
    for call in m.get("tool_calls") or ():
        f = call.get("function", call)
        text += format_tool_call(f["name"], f["arguments"])
    return role, text


def _with_tools(messages: list[dict], tools: list[dict] | None) -> list[tuple[str, str]]:
    turns = [("system", tools_turn(tools))] if tools else []
    return turns + [plain_turn(m, i) for i, m in enumerate(messages)]


@dataclass
class TokenizerConfig:
    """How to train the tokenizer."""

    vocab_size: int = 1024  # total, including the 256 byte symbols and the special tokens
    min_frequency: int = 2  # a pair must occur this often to become a merge
    split_digits: bool = True  # one token per digit (helps arithmetic)


class Tokenizer:
    """Thin wrapper over a `tokenizers.Tokenizer` with genforge's special tokens."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        ids = {t: hf.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise CheckpointError(f"tokenizer lacks the special tokens {missing}; "
                                  "retrain it with `genforge tokenizer train`")
        self.pad_id, self.bos_id, self.eos_id = ids[PAD], ids[BOS], ids[EOS]
        self.end_id, self.assistant_id = ids[END], ids[ASSISTANT]
        self.special_ids = set(ids.values())

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False, allow_special: bool = True) -> list[int]:
        """Token ids for text.

        allow_special=True recognises special-token strings inside text ("<|end|>" -> one control
        token). Untrusted text (a user's chat message) must use allow_special=False, or a user could
        forge role turns: the strings are then encoded as ordinary bytes.
        """
        if allow_special or not any(t in text for t in SPECIAL_TOKENS):
            ids = self.hf.encode(text, add_special_tokens=False).ids
        else:
            ids = []
            for piece in _SPECIAL_RE.split(text):
                if piece in SPECIAL_TOKENS:  # "<|end|>" as plain bytes: encode "<|" and "end|>" apart
                    ids += self.hf.encode(piece[:2], add_special_tokens=False).ids
                    ids += self.hf.encode(piece[2:], add_special_tokens=False).ids
                elif piece:
                    ids += self.hf.encode(piece, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False,
                    tools: list[dict] | None = None) -> str:
        """The chat template applied to messages [{'role','content'}] (same text as HF's, `tools=` too).

        Messages may carry OpenAI's `tool_calls` (assistant) or have role "tool"; see CHAT_TEMPLATE.
        """
        out = [BOS] + [f"{ROLE_TOKENS[role]}{text}{END}\n" for role, text in _with_tools(messages, tools)]
        if add_generation_prompt:
            out.append(ASSISTANT)
        return "".join(out)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = False,
                    tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
        """(ids, assistant_mask): mask is 1 on the tokens the assistant wrote (content + <|end|>).

        Each turn is encoded separately and concatenated, so the mask is exact; the template text
        is such that this equals encoding the whole rendered string (tested). Message content is
        encoded with allow_special=False: special-token strings a user types stay plain text.
        An assistant's tool calls are part of what it wrote (mask 1); tool results are not.
        """
        ids, mask = [self.bos_id], [0]
        for role, text in _with_tools(messages, tools):
            head = self.encode(ROLE_TOKENS[role])
            body = self.encode(text, allow_special=False) + [self.end_id]
            nl = self.encode("\n")
            learn = 1 if role == "assistant" else 0
            ids += head + body + nl
            mask += [0] * len(head) + [learn] * len(body) + [0] * len(nl)
        if add_generation_prompt:
            ids.append(self.assistant_id)
            mask.append(0)
        return ids, mask

    def save(self, out_dir: str | Path, model_max_length: int = 512) -> None:
        """Write tokenizer.json + tokenizer_config.json (+ special_tokens_map.json) atomically."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "tokenizer.json", self.with_bos_template().to_str())
        specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
        write_json(out_dir / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **specials,
            "additional_special_tokens": [SYSTEM, USER, ASSISTANT, END],
            "chat_template": CHAT_TEMPLATE,
            "model_max_length": model_max_length,
            "clean_up_tokenization_spaces": False,
        })
        write_json(out_dir / "special_tokens_map.json", specials)

    def with_bos_template(self) -> HFTokenizer:
        """A copy whose post-processor prepends <|bos|> as genforge does for plain text, so that
        `AutoTokenizer(...)(text)` in transformers gives `encode(text, add_bos=True)` (no EOS). genforge itself
        always encodes with add_special_tokens=False, and chat templates render their own <|bos|> (transformers'
        apply_chat_template tokenizes without special tokens), so neither adds it twice."""
        hf = HFTokenizer.from_str(self.hf.to_str())
        hf.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1", special_tokens=[(BOS, self.bos_id)])
        return hf

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load from a folder holding tokenizer.json (or the file itself)."""
        path = Path(path)
        f = path / "tokenizer.json" if path.is_dir() else path
        if not f.exists():
            raise CheckpointError(f"{f}: tokenizer not found; train one with `genforge tokenizer train`")
        try:
            return cls(HFTokenizer.from_file(str(f)))
        except Exception as e:  # tokenizers raises a bare Exception on corrupt files
            raise CheckpointError(f"{f}: cannot read tokenizer ({e})") from None


def build_untrained(cfg: TokenizerConfig) -> tuple[HFTokenizer, trainers.BpeTrainer]:
    """An empty byte-level BPE tokenizer and its trainer."""
    if cfg.vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ConfigError(f"tokenizer.vocab_size={cfg.vocab_size} is too small: byte-level BPE needs 256 byte "
                          f"symbols + {len(SPECIAL_TOKENS)} special tokens = {256 + len(SPECIAL_TOKENS)} at least")
    tok = HFTokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if cfg.split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    return tok, trainer


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig | None = None) -> Tokenizer:
    """Train byte-level BPE on an iterable of documents."""
    cfg = cfg or TokenizerConfig()
    tok, trainer = build_untrained(cfg)
    n = 0

    def counted() -> Iterator[str]:
        nonlocal n
        for t in texts:
            n += 1
            yield t

    tok.train_from_iterator(counted(), trainer=trainer)
    if n == 0:
        raise DataError("tokenizer training corpus is empty: give it at least one non-empty document")
    return Tokenizer(tok)


def hf_tokenizer_json(path: str | Path) -> dict:
    """The raw tokenizer.json dict (for inspection/tests)."""
    return json.loads(Path(path, "tokenizer.json").read_text())


def ordinary_ids(tokenizer: Tokenizer, limit: int | None = None, words: bool = True) -> list[int]:
    """Token ids of the tokenizer that are not special tokens (optionally the first `limit`); `words` keeps only
    tokens that decode to letters or digits (two or more characters), so the random sequences are made of text
    pieces the model has seen, not stray bytes."""
    special = set(getattr(tokenizer, "special_ids", ()) or ())
    ids = [i for i in range(tokenizer.vocab_size) if i not in special and not tokenizer.decode([i]).startswith("<|")]
    if words:
        ids = [i for i in ids if len(tokenizer.decode([i]).strip()) >= 2 and tokenizer.decode([i]).strip().isalnum()]
    return ids[:limit] if limit else ids
