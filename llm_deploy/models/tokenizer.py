"""Tokenizers and chat templates, from a `tokenizer.json`, from GGUF metadata, or built in.

Every tokenizer is a `tokenizers.Tokenizer` underneath, so a GGUF's vocabulary, once rebuilt here,
behaves like the `tokenizer.json` it was converted from and can be saved as one. Chat templates
are rendered with Jinja under the sandbox, options and helpers transformers uses, so a prompt
renders to the same text, and so to the same tokens.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import cache, partial
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from .config import LlamaConfig, gguf_metadata, gguf_path_of, open_gguf


class TokenizerError(ValueError):
    """A tokenizer or chat template cannot be built from the files given; the message says why."""


Message = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------
# Chat templates


@cache
def _compile_template(source: str) -> Any:
    """Jinja as transformers sets it up: sandboxed, trim/lstrip blocks, loop controls, a `tojson`
    that leaves non-ASCII alone, `raise_exception`, `strftime_now`, and the `{% generation %}` tag
    (rendered as its body: we do not track assistant masks)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys=False
    ):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise TokenizerError(f"chat template does not parse: {e.message} (line {e.lineno})") from None


# ---------------------------------------------------------------------------------------------
# The tokenizer


class Tokenizer:
    """Text <-> token ids, plus the model's chat template and stop tokens.

    `special_tokens` holds the named ones (`bos_token`, `eos_token`, `unk_token`, `pad_token`):
    chat templates read them as variables, as they do under transformers.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        special_tokens: Mapping[str, str] | None = None,
        chat_template: str | None = None,
        stop_token_ids: Sequence[int] = (),
        source: str = "",
    ) -> None:
        self.backend = backend
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self.chat_template = chat_template
        self.stop_token_ids = tuple(stop_token_ids)
        self.source = source

    def __repr__(self) -> str:
        return f"Tokenizer({self.vocab_size} tokens from {self.source})"

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids; `add_special_tokens` adds what the tokenizer adds around text (e.g. BOS)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def render_chat(
        self, messages: Sequence[Message], add_generation_prompt: bool = True, **variables: Any
    ) -> str:
        """The prompt text for a conversation; extra `variables` reach the template (e.g. `tools`)."""
        if self.chat_template is None:
            raise TokenizerError(f"{self.source} has no chat template")
        context = {
            **self.special_tokens,
            "tools": None,
            "documents": None,
            **variables,
            "messages": [dict(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
        }
        return _compile_template(self.chat_template).render(**context)

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True, **variables: Any
    ) -> list[int]:
        """Prompt token ids: the template writes its own special tokens, so none are added."""
        return self.encode(
            self.render_chat(messages, add_generation_prompt, **variables), add_special_tokens=False
        )

    def save(self, folder: str | os.PathLike) -> None:
        """`tokenizer.json` and `tokenizer_config.json`, loadable here and by transformers."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.special_tokens}
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    # --- sources ---------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, config: LlamaConfig | None = None) -> Tokenizer:
        """A Hugging Face folder: `tokenizer.json`, with special tokens and the chat template from
        `tokenizer_config.json`, or from `chat_template.jinja` / `chat_template.json` when present."""
        folder = Path(folder)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise TokenizerError(
                f"{folder} has no tokenizer.json (a sentencepiece-only tokenizer.model is not supported)"
            )
        backend = tokenizers.Tokenizer.from_file(str(file))
        tok_config = (
            _read_json(folder / "tokenizer_config.json")
            if (folder / "tokenizer_config.json").is_file()
            else {}
        )
        special = {
            k: _token_text(tok_config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        template = _folder_chat_template(folder, tok_config)
        stops = _stop_ids(config, backend, special)
        return cls(
            backend, special_tokens=special, chat_template=template, stop_token_ids=stops, source=str(folder)
        )

    @classmethod
    def from_gguf(cls, source: str | os.PathLike | Any, config: LlamaConfig | None = None) -> Tokenizer:
        """The tokenizer a GGUF describes in its metadata (llama.cpp's `tokenizer.ggml.*` keys)."""
        reader = open_gguf(source)
        path = gguf_path_of(reader)
        meta = gguf_metadata(reader)
        kind = meta.get("tokenizer.ggml.model")
        builders = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}
        if kind not in builders:
            raise TokenizerError(
                f"{path}: tokenizer.ggml.model is {kind!r}; supported: {sorted(builders)} "
                "(byte-level BPE and sentencepiece BPE)"
            )
        tokens = meta.get("tokenizer.ggml.tokens")
        if not tokens:
            raise TokenizerError(f"{path}: no tokenizer.ggml.tokens in the metadata")
        backend = builders[kind](meta, path)
        _add_gguf_special_tokens(backend, tokens, meta.get("tokenizer.ggml.token_type") or [], kind == "gpt2")
        ids = {name: meta.get(f"tokenizer.ggml.{key}_token_id") for name, key in _GGUF_SPECIAL_IDS.items()}
        special = {name: tokens[i] if i is not None and i < len(tokens) else None for name, i in ids.items()}
        # llama.cpp adds BOS to sentencepiece vocabularies unless told otherwise, never to byte-level ones.
        if meta.get("tokenizer.ggml.add_bos_token", kind == "llama") and special["bos_token"]:
            bos = special["bos_token"]
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, ids["bos_token"])]
            )
        template = meta.get("tokenizer.chat_template")
        stops = _stop_ids(config, backend, special)
        return cls(backend, special_tokens=special, chat_template=template, stop_token_ids=stops, source=path)

    @classmethod
    def byte_level(cls, config: LlamaConfig | None = None) -> Tokenizer:
        """The `llama-tiny` tokenizer: three ChatML special tokens, then one token per byte
        (id = 3 + byte), so any text encodes, and ids are easy to read in test failures."""
        spelling = _bytes_to_unicode()
        vocab = {t: i for i, t in enumerate(TINY_SPECIAL_TOKENS)}
        vocab |= {spelling[b]: len(TINY_SPECIAL_TOKENS) + b for b in range(256)}
        backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in TINY_SPECIAL_TOKENS]
        )
        special = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        stops = _stop_ids(config, backend, special)
        return cls(
            backend,
            special_tokens=special,
            chat_template=CHATML_TEMPLATE,
            stop_token_ids=stops,
            source="byte level",
        )


_GGUF_SPECIAL_IDS = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown", "pad_token": "padding"}
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def load_tokenizer(path: str | os.PathLike, config: LlamaConfig | None = None) -> Tokenizer:
    """The tokenizer of a GGUF file or a Hugging Face folder."""
    path = Path(path)
    if path.is_dir():
        return Tokenizer.from_folder(path, config)
    if path.is_file():
        return Tokenizer.from_gguf(path, config)
    raise FileNotFoundError(f"no model at {path}: expected a GGUF file or a folder with tokenizer.json")


# ---------------------------------------------------------------------------------------------
# GGUF vocabularies


def _gpt2() -> Any:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2() -> Any:
    """llama.cpp's `\\p{N}` pass isolates every numeric character before GPT-2's pattern runs
    (the same as a Digits pre-tokenizer ahead of the byte-level one in a tokenizer.json)."""
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()])


def _split_then_bytes(pattern: str) -> Any:
    """One pattern does all the splitting; the byte-level step only spells the bytes."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# How each `tokenizer.ggml.pre` splits text before BPE, as llama.cpp does (llama-vocab.cpp).
GGUF_PRE_TOKENIZERS: dict[str, Callable[[], Any]] = {
    "default": _gpt2,
    "gpt2": _gpt2,
    "gpt-2": _gpt2,
    "smollm": _digits_then_gpt2,
    "starcoder": _digits_then_gpt2,
    "refact": _digits_then_gpt2,
    "codeshell": _digits_then_gpt2,
    "llama3": partial(_split_then_bytes, _LLAMA3_SPLIT),
    "llama-v3": partial(_split_then_bytes, _LLAMA3_SPLIT),
    "llama-bpe": partial(_split_then_bytes, _LLAMA3_SPLIT),
    "smaug-bpe": partial(_split_then_bytes, _LLAMA3_SPLIT),
    "qwen2": partial(_split_then_bytes, _QWEN2_SPLIT),
}


def _byte_level_bpe(meta: Mapping[str, Any], path: str) -> tokenizers.Tokenizer:
    """GPT-2 style: every token spelled in the 256-character byte alphabet, merges from the file."""
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {}
    for i, token in enumerate(meta["tokenizer.ggml.tokens"]):
        # A token outside the alphabet (a user-defined "<think>" is inside; " " is not) is respelled.
        vocab[token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode())] = i
    merges = meta.get("tokenizer.ggml.merges")
    if merges is not None:
        pairs = [tuple(m.split(" ", 1)) for m in merges]
    else:  # as transformers does: every split into two tokens, earlier tokens merging first
        pairs = _merges_from_scores(list(vocab), [-i for i in vocab.values()])
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_TOKENIZERS:
        warnings.warn(
            f"{path}: unknown tokenizer.ggml.pre {pre!r}; splitting text as GPT-2 does", stacklevel=3
        )
    backend.pre_tokenizer = GGUF_PRE_TOKENIZERS.get(pre, _gpt2)()
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_bpe(meta: Mapping[str, Any], path: str) -> tokenizers.Tokenizer:
    """Sentencepiece BPE (Llama 1/2, TinyLlama): `▁` for spaces, unknown bytes as <0xXX> tokens;
    merges from the file or, as llama.cpp does, ranked by the scores of the merged tokens."""
    tokens = meta["tokenizer.ggml.tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = meta.get("tokenizer.ggml.merges")
    if merges is not None:
        pairs = [tuple(m.split(" ", 1)) for m in merges]
    else:
        scores = meta.get("tokenizer.ggml.scores")
        if scores is None:
            raise TokenizerError(f"{path}: a sentencepiece vocabulary needs tokenizer.ggml.merges or .scores")
        pairs = _merges_from_scores(tokens, scores)
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    backend = tokenizers.Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=pairs,
            unk_token=tokens[unk] if unk is not None else None,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    prepend = "first" if meta.get("tokenizer.ggml.add_space_prefix", True) else "never"
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=False)
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return backend


def _merges_from_scores(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """Every split of a token into two vocabulary tokens is a merge; better-scored results merge
    first (ties: shorter left piece first), which is sentencepiece BPE's order."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for token, score in zip(tokens, scores):
        local = [
            (token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab
        ]
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        merges += [(score, left, right) for left, right in local]
    merges.sort(key=lambda m: (m[0], len(m[1]), len(m[2])), reverse=True)
    return [(left, right) for _, left, right in merges]


def _add_gguf_special_tokens(
    backend: tokenizers.Tokenizer, tokens: Sequence[str], types: Sequence[int], byte_level: bool
) -> None:
    """Control tokens (type 3) match whole as special tokens; user-defined ones (type 4) match whole
    as plain tokens. In a byte-level vocabulary a control token spelled outside the byte alphabet is
    a llama.cpp mislabel and is skipped, as transformers does."""
    alphabet = set(_bytes_to_unicode().values())
    control = [
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(tokens, types)
        if kind == 3 and (not byte_level or set(t) <= alphabet)
    ]
    user = [AddedToken(t, special=False, normalized=False) for t, kind in zip(tokens, types) if kind == 4]
    if control:
        backend.add_special_tokens(control)
    if user:
        backend.add_tokens(user)


@cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: printable bytes stand for themselves, the rest shift past 255."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, shift = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + shift)
            shift += 1
    return chars


# ---------------------------------------------------------------------------------------------
# helpers


def _stop_ids(
    config: LlamaConfig | None, backend: tokenizers.Tokenizer, special: Mapping[str, Any]
) -> tuple[int, ...]:
    """The model's end-of-sequence ids from its config; the tokenizer's EOS only when there is no config."""
    if config is not None and config.eos_token_ids:
        return config.eos_token_ids
    eos = special.get("eos_token")
    eos_id = backend.token_to_id(eos) if eos else None
    return () if eos_id is None else (eos_id,)


def _folder_chat_template(folder: Path, tok_config: Mapping[str, Any]) -> str | None:
    """transformers' precedence: chat_template.jinja, then chat_template.json, then tokenizer_config.json."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        template = _read_json(folder / "chat_template.json").get("chat_template")
    else:
        template = tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t["name"]: t["template"] for t in template}
        template = named.get("default")
    return template


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes a special token as a string or as a serialized AddedToken."""
    return value.get("content") if isinstance(value, dict) else value


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from None
