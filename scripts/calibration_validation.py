"""Choose the q4 calibration's knobs on held-out calibration text, never on the test text.

calibration.txt's first 4,096 tokens calibrate; the rest (1,205 tokens, the weather questions
and answers) are held out and scored by the numpy forward of the calibrated weights. With fold=2
the last 4,096 calibrate and the first 1,205 are scored (a second opinion on the same knobs). The build
then calibrates on the whole text with the knobs chosen here (calibrated.py's DAMP, SEQ_LEN,
ACT_ORDER). tests/data/perplexity_text.txt, the quality gate's text, is not read.

    nice -n 19 python scripts/calibration_validation.py damp=0.03 seq_len=1024 act_order=1 [fold=2]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from llm_deploy.models import load_model
from llm_deploy.quantization.calibrate import Forward, calibration_ids
from llm_deploy.quantization.calibrated import calibrate_model
from llm_deploy.quantization.formats import GroupPacking
from llm_deploy.quantization.gptq import dequantize
from llm_deploy.quantization.perplexity import log_softmax

CALIBRATE = 4096  # tokens; the rest of calibration.txt is the validation text


def numpy_perplexity(config, weights: dict[str, np.ndarray], ids: list[int]) -> float:
    """exp(mean NLL) of `ids` after the first, one sequence."""
    lp = log_softmax(Forward(config, weights, len(ids)).logits(ids)[:-1])  # (T - 1, vocab)
    return float(np.exp(-lp[np.arange(len(ids) - 1), ids[1:]].mean()))


def main(argv: list[str]) -> None:
    knobs = {k: float(v) for k, v in (a.split("=") for a in argv)}
    knobs = {k: int(v) if k in ("seq_len", "act_order", "fold") else v for k, v in knobs.items()}
    fold = knobs.pop("fold", 1)
    m = load_model("llama")
    ids = calibration_ids(m.tokenizer)
    if fold == 1:
        calib, held_out = ids[:CALIBRATE], ids[CALIBRATE:]
    else:  # the other fold: calibrate on the last tokens, score the first
        calib, held_out = ids[-CALIBRATE:], ids[: len(ids) - CALIBRATE]
    w = {n: np.asarray(m.weights[n], np.float32) for n in m.weights}
    names = {n for n, a in w.items() if a.ndim == 2}
    print(f"float32: {numpy_perplexity(m.config, w, held_out):.3f} on {len(held_out)} held-out tokens")
    t = time.time()
    codes, floats = calibrate_model(m.config, m.weights, calib, GroupPacking(4, 32), names, **knobs)
    for dtype in ("float32", "float16"):
        p = GroupPacking(4, 32, dtype)
        q4 = w | floats | {n: dequantize(q, s[dtype], p) for n, (q, s) in codes.items()}
        ppl = numpy_perplexity(m.config, q4, held_out)
        print(f"{knobs or 'calibrated.py knobs'}, {dtype} scales: {ppl:.3f}")
    print(f"calibration took {time.time() - t:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
