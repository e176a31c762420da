"""The distill stage records in slm_meta.json what its training layout put after the prompt."""

from __future__ import annotations

from chat_helpers import CHATML, chat_bpe

from slm_toolkit.demo.tokenizer import build_demo_tokenizer
from slm_toolkit.distill.stage import reasoning_marker


def test_marker_follows_the_training_layout():
    assert reasoning_marker(build_demo_tokenizer()) == "<think>"  # plain layout: <bos> P <think> CoT
    chat = chat_bpe(["a b c 1 2 3"])
    assert reasoning_marker(chat) is None  # ChatML without think markers: CoT, "\n#### ", answer
    chat.chat_template = CHATML + "{% if add_generation_prompt %}<think>{% endif %}"  # R1 style
    assert reasoning_marker(chat) == "<think>"
