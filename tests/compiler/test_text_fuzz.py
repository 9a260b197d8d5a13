"""Fuzzing the parser: random mutations of valid texts (characters, tokens and lines deleted,
duplicated, swapped or replaced) raise ParseError or parse; nothing else escapes. What parses
prints, and the printed text reads back to the same module."""

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_deploy.compiler.parser import ParseError, parse
from llm_deploy.compiler.printer import module_to_str
from tests.compiler.ir_examples import EXAMPLES
from tests.compiler.test_parser import BASE, DECODER_LAYER, HAND_WRITTEN, TIR_BASE

# Printed texts (what pass tests compare against) and hand-written ones (what people type).
_SMALL_EXAMPLES = [
    name for name in sorted(EXAMPLES) if name not in ("decoder_layer", "decoder_layer_llama3_rope")
]
CORPUS = (
    [module_to_str(EXAMPLES[name]()) for name in _SMALL_EXAMPLES]
    + [text for text, _ in HAND_WRITTEN.values()]
    + [BASE, TIR_BASE, DECODER_LAYER]
)
_TOKEN = re.compile(r"\w+|\s+|.", re.DOTALL)


def _pieces(text: str, unit: str) -> list[str]:
    if unit == "char":
        return list(text)
    if unit == "token":
        return _TOKEN.findall(text)
    return text.splitlines(keepends=True)


@st.composite
def mutated_texts(draw) -> str:
    text = draw(st.sampled_from(CORPUS))
    for _ in range(draw(st.integers(1, 4))):
        pieces = _pieces(text, draw(st.sampled_from(["char", "token", "line"])))
        if len(pieces) < 2:
            break
        i = draw(st.integers(0, len(pieces) - 1))
        j = draw(st.integers(0, len(pieces) - 1))
        match draw(st.sampled_from(["delete", "duplicate", "swap", "replace"])):
            case "delete":
                del pieces[i]
            case "duplicate":
                pieces.insert(i, pieces[i])
            case "swap":
                pieces[i], pieces[j] = pieces[j], pieces[i]
            case "replace":
                pieces[i] = pieces[j]
        text = "".join(pieces)
    return text


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_texts())
def test_mutated_text_parses_or_raises_parse_error(text):
    try:
        mod = parse(text)
    except ParseError as e:
        assert 1 <= e.line <= text.count("\n") + 2 and e.col >= 1, (e.line, e.col)
        assert e.message
        return
    printed = module_to_str(mod)
    assert parse(printed) == mod, printed


def test_the_corpus_itself_parses():
    for text in CORPUS:
        parse(text)
