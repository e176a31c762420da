"""Request validation (strict, clear messages), stop-string detokenization and server settings."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from slm_toolkit.serving.config import ServeConfig, load_serve_config
from slm_toolkit.serving.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
    ScoreRequest,
    parse_request,
)
from slm_toolkit.serving.text import TextAssembler


def parse(model, body) -> object:
    return parse_request(model, body if isinstance(body, bytes) else json.dumps(body).encode())


def test_valid_requests_and_defaults():
    r = parse(
        CompletionRequest, {"prompt": "hi", "stop": "\n", "stream": True, "stream_options": {"include_usage": True}}
    )
    assert r.max_tokens == 16 and r.temperature == 1.0 and r.stop_list() == ["\n"] and r.include_usage()
    c = parse(ChatCompletionRequest, {"messages": [{"role": "user", "content": "x"}], "temperature": 0})
    assert c.max_tokens is None and c.temperature == 0.0 and not c.include_usage()
    assert parse(CompletionRequest, {"prompt": [1, 2, 3]}).prompt == [1, 2, 3]
    assert parse(ScoreRequest, {"prompt": "a", "candidates": ["b", "c"]}).candidates == ["b", "c"]


@pytest.mark.parametrize(
    "body, param, words",
    [
        (b"{", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        ({"prompt": "a", "max_tokens": "3"}, "max_tokens", "valid integer"),
        ({"prompt": "a", "temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"prompt": "a", "top_p": 0}, "top_p", "greater than 0"),
        ({"prompt": "a", "nonsense": 1}, "nonsense", "unknown or unsupported field"),
        ({"prompt": "a", "stream_options": {"include_usage": True}}, "stream_options", "only allowed when stream"),
        ({"prompt": "a", "max_tokens": 2, "min_tokens": 3}, "min_tokens", "<= max_tokens"),
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": "a", "stop": ["x"] * 17}, "stop", "at most 16"),
    ],
)
def test_bad_requests_name_the_field(body, param, words):
    with pytest.raises(RequestError) as info:
        parse(CompletionRequest, body)
    err = info.value
    assert err.status == 400 and err.param == param and words in err.message, err.message


def test_bad_chat_and_score_requests():
    with pytest.raises(RequestError, match="messages"):
        parse(ChatCompletionRequest, {"messages": []})
    with pytest.raises(RequestError, match="role"):
        parse(ChatCompletionRequest, {"messages": [{"role": "bot", "content": "x"}]})
    with pytest.raises(RequestError, match="candidates"):
        parse(ScoreRequest, {"prompt": "a", "candidates": ["ok", ""]})


def decode_chars(ids):
    return "".join(chr(i) for i in ids)


def feed(asm: TextAssembler, text: str) -> list[str]:
    out = []
    for ch in text:
        out.append(asm.add(ord(ch)))
        if asm.stopped:
            break
    return out


def test_stop_string_is_held_back_and_cut():
    asm = TextAssembler(decode_chars, ["STOP"])
    deltas = feed(asm, "abSTxSTOPzz")
    assert asm.stopped and "".join(deltas) == "abSTx"
    assert deltas[2:4] == ["", ""]  # "S", "ST" might begin the stop string: held back
    assert asm.flush() == ""


def test_no_stop_flushes_everything_and_min_tokens_delays_stops():
    asm = TextAssembler(decode_chars, ["ab"])
    assert "".join(feed(asm, "xya")) + asm.flush() == "xya"
    early = TextAssembler(decode_chars, ["a"], min_tokens=3)
    assert "".join(feed(early, "aaxa")) == "aax" and early.stopped


def test_lazy_assembler_decodes_once():
    calls = []
    asm = TextAssembler(lambda ids: calls.append(1) or decode_chars(ids), [], lazy=True)
    assert feed(asm, "hello") == [""] * 5 and asm.flush() == "hello" and len(calls) == 1
    eager = TextAssembler(decode_chars, ["l"], lazy=True)  # stop strings need incremental text
    assert "".join(feed(eager, "hello")) == "he" and eager.stopped


def test_incomplete_utf8_is_held_back():
    pieces = {1: b"h", 2: b"\xc3", 3: b"\xa9"}

    def decode(ids):
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    asm = TextAssembler(decode, [])
    assert [asm.add(1), asm.add(2), asm.add(3)] == ["h", "", "é"]


def _trained_tokenizers():
    """A byte-level BPE (GPT-2 style) and a Metaspace one (SentencePiece style: decoding drops the
    leading space of a window) trained on a few GSM8K-like lines with non-ASCII text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    lines = [
        "Natalia sold clips to 48 of her friends in April, and then half as many in May.",
        "Weng earns $12 an hour for babysitting — café prices: 5€ each, naïve résumé ✓ 😀.",
        "How many clips did Natalia sell altogether in April and May? #### 72",
    ] * 20
    byte = Tokenizer(models.BPE())
    byte.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    byte.decoder = decoders.ByteLevel()
    byte.train_from_iterator(
        lines, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    meta = Tokenizer(models.BPE(unk_token="<unk>"))
    meta.pre_tokenizer = pre_tokenizers.Metaspace()
    meta.decoder = decoders.Metaspace()
    meta.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"]))
    return {"byte_bpe": byte, "metaspace": meta}


@pytest.mark.parametrize("kind", ["byte_bpe", "metaspace"])
def test_incremental_detokenization_equals_whole_decode(kind):
    tok = _trained_tokenizers()[kind]
    text = "Weng earns $12 an hour — café 5€, naïve ✓ 😀 #### 72 and half as many in May."
    ids = tok.encode(text).ids
    windows = []

    def decode(xs):
        windows.append(len(xs))
        return tok.decode(xs)

    asm = TextAssembler(decode, [])
    deltas = [asm.add(i) for i in ids] + [asm.flush()]
    assert "".join(deltas) == tok.decode(ids)
    assert all("\ufffd" not in d for d in deltas)  # incomplete UTF-8 is never sent
    assert max(windows) <= 8 < len(ids)  # each token decodes a short window, not the whole output


def test_serve_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("max_batch_size: 4\nscheduler: naive\nport: 9000\n")
    cfg = load_serve_config(path, port=8123, host=None)
    assert (cfg.max_batch_size, cfg.scheduler, cfg.port, cfg.host) == (4, "naive", 8123, "127.0.0.1")
    with pytest.raises(ValidationError, match="scheduler"):
        ServeConfig(scheduler="fast")
    with pytest.raises(ValidationError, match="max_batch_sise"):
        load_serve_config(None, max_batch_sise=3)


REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_shipped_server_config_and_k8s_manifest():
    import yaml

    assert load_serve_config(REPO / "serving" / "server.yaml") == ServeConfig()  # the example shows the defaults
    docs = {d["kind"]: d for d in yaml.safe_load_all((REPO / "serving" / "k8s.yaml").read_text())}
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["terminationGracePeriodSeconds"] > ServeConfig().graceful_shutdown_s
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]


def test_default_threads_leave_room_for_the_event_loop():
    from slm_toolkit.serving.config import default_threads

    assert [default_threads(n) for n in (1, 2, 3, 4, 16, 64)] == [1, 1, 1, 2, 8, 8]
    assert 1 <= default_threads() <= 8


def test_new_openai_fields_parse():
    c = parse(
        CompletionRequest,
        {"prompt": ["a", "b"], "n": 2, "logprobs": 3, "echo": True, "frequency_penalty": 0, "presence_penalty": -1},
    )
    assert c.prompts() == ["a", "b"] and c.top_logprobs_count() == 3 and c.presence_penalty == -1.0
    chat = parse(
        ChatCompletionRequest,
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "max_completion_tokens": 5,
            "logprobs": True,
        },
    )
    assert chat.messages[0].text() == "ab" and chat.token_limit() == 5 and chat.top_logprobs_count() == 0
    with pytest.raises(RequestError) as info:
        parse(CompletionRequest, {"prompt": 3})
    assert info.value.param == "prompt" and "list of token ids" in info.value.message
