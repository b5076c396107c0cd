"""`python -m minimal.train text-gpt-sink`: the char GPT trained with a dedicated sink token.

StreamingLLM (section 3.3) proposes a learnable sink: one extra token at the start of every training
window, so the model has a fixed place to park attention it does not need. This is text_gpt.py's recipe
with `sink_token=True`, for 1000 steps, recording every 100 steps the mean attention that queries at
positions >= 64 pay to the sink token (`sinks_bench.sink_mass`) in meta["probe_curve"].
"""

from __future__ import annotations

import dataclasses

from .data import CharTokenizer, text_corpus
from .sinks_bench import attention_maps, sink_mass
from .text_gpt import TextGPTRecipe, train_text_gpt, with_sink

RECIPE = TextGPTRecipe(steps=1000, sink_token=True)


def train_sink_gpt(device=None, steps: int | None = None):
    """Train the sink-token GPT -> (model, meta)."""
    recipe = RECIPE if steps is None else dataclasses.replace(RECIPE, steps=steps)
    tok = CharTokenizer.from_text(text_corpus())
    val = tok.encode(text_corpus("val"))[: 16 * 127 + 1]
    probe_x, _ = with_sink(val[:-1].view(16, 127), val[1:].view(16, 127), tok.vocab_size)  # (16, 128)

    def probe(model) -> float:
        model.eval()
        return sink_mass(attention_maps(model, probe_x.to(next(model.parameters()).device))).mean().item()

    return train_text_gpt(recipe, device, probe=probe)
