"""Incremental detokenization: token ids in, text deltas out, never a broken character.

Decoding the whole sequence at every step is O(length) per token, and decoding each token alone is
wrong twice over: a byte-level token may hold part of a UTF-8 character (an emoji is often 4
tokens of one byte), and SentencePiece-style decoders (Metaspace, "▁Hello" -> "Hello") drop the
leading space of the *first* token they see, so " world" decoded alone loses its space.

The approach of TGI and vLLM (and `tokenizers.decoders.DecodeStream`): decode a short window of
tokens, `ids[prefix:]`, whose first tokens are context already emitted. The window's text minus the
context's text is the new text; because both decodes start at the same token, a decoder's
first-token quirks cancel out. A window whose text ends in U+FFFD (the replacement character a
decoder puts for an incomplete UTF-8 sequence) means "wait for more bytes". Once the window decodes
cleanly, it slides: the tokens since the last clean point become the next context. Each step
decodes a few tokens, so the cost per token does not grow with the sequence.

One refinement over TGI/vLLM: while waiting, the text before the trailing U+FFFD run is already
safe and is emitted, so a run of tokens that each split a character (CJK under byte-level BPE)
streams without stalling until the run ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

REPLACEMENT = "\ufffd"

# How many prompt tokens give the first generated token its context (vLLM uses 5).
PROMPT_CONTEXT = 5


class Decoder(Protocol):
    def decode(self, ids: list[int]) -> str: ...


class Detokenizer:
    """Text deltas for one sequence. `step(id)` returns the new safe text (maybe ""); `finish()`
    returns what is still held back (an incomplete character, as U+FFFD) when the sequence ends.

    `tokenizer` is anything with `decode(ids) -> str` (a `tokenizers.Tokenizer`, a transformers
    tokenizer, `llm_deploy.models.tokenizer.Tokenizer`) or such a function itself; it decides
    whether special tokens are skipped. With `prompt_ids`, the first token is decoded in the
    context of the prompt's last tokens, so `prompt_text + "".join(deltas) == decode(prompt + ids)`;
    without, `"".join(deltas) + finish() == decode(ids)`.
    """

    def __init__(
        self, tokenizer: Decoder | Callable[[list[int]], str], prompt_ids: Sequence[int] = ()
    ) -> None:
        self._decode: Callable[[list[int]], str] = getattr(tokenizer, "decode", tokenizer)  # type: ignore[assignment]
        context = [int(t) for t in prompt_ids[len(prompt_ids) - PROMPT_CONTEXT :]] if prompt_ids else []
        self._ids = context  # the window: context tokens, then tokens not yet cleanly decoded
        self._read = len(context)  # window index of the first token after the last clean point
        # Text of the window already accounted for. A prompt tail cut inside a character counts only
        # up to it: when generation completes the character, the character is new text.
        self._text = self._decode(context).rstrip(REPLACEMENT) if context else ""

    def step(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        text = self._decode(self._ids)
        safe = text.rstrip(REPLACEMENT)
        delta = safe[len(self._text) :] if len(safe) > len(self._text) else ""
        if safe == text:  # clean: slide the window so its cost stays bounded
            self._ids = self._ids[self._read :]
            self._read = len(self._ids)
            self._text = self._decode(self._ids)
        else:
            self._text = max(safe, self._text, key=len)
        return delta

    def finish(self) -> str:
        """Whatever is held back, replacement characters included; the stream is over."""
        text = self._decode(self._ids)
        delta = text[len(self._text) :] if len(text) > len(self._text) else ""
        self._text = text
        return delta
