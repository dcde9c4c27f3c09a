"""Tokenizers: SmolLM2's GGUF BPE against a Hugging Face `tokenizers` oracle, plus tiny sentencepiece,
tiktoken and GGUF tokenizers built in the test."""
import base64
import warnings

import gguf
import pytest

from tokenizer import (GGUFTokenizer, SentencePieceTokenizer, TiktokenTokenizer, gpt2_unicode_to_byte,
                       load_tokenizer)

EDGE_CASES = [
    "", " ", "a", "Hello, world!", "  leading and trailing  ", "tabs\tand\t\ttabs", "\n", "\n\n\n", "a\n\nb\r\nc",
    "x    y", "     ", "12345678901234567890", "pi = 3.14159, 2025-11-25, 1,000,000", "a1b22c333",
    "I'm sure you'll see they've done it, don't we'd", "IT'S SHOUTING'LL", "naïve café résumé Ærøskøbing",
    "Ελληνικά русский עברית العربية", "東京は日本の首都です。中文字符测试", "한국어 텍스트", "emoji 🙂👍🏽🇫🇷👨‍👩‍👧",
    "math ∑∫√∞ ≠ ≤", "mixed  \n  \t whitespace\u00a0nbsp\u3000ideographic", "<|im_start|>user\nhi<|im_end|>\n",
    "text<|endoftext|>more", "<|im_end|><|im_start|><filename>", "<|im_start", "code: def f(x):\n    return x**2\n",
    "\u200bzero width\ufeffbom", "\x00\x01\x7f controls", "£€¥", "ﬁ ligature ① ½",
]


@pytest.fixture(scope="module")
def smol_reader(smollm2_gguf):
    return gguf.GGUFReader(smollm2_gguf)


@pytest.fixture(scope="module")
def smol(smol_reader):
    return GGUFTokenizer(smol_reader)


@pytest.fixture(scope="module")
def oracle(smol_reader):
    """SmolLM2's tokenizer rebuilt with HF `tokenizers` from the same vocabulary and merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizer import _gguf_value
    tokens = _gguf_value(smol_reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in _gguf_value(smol_reader, "tokenizer.ggml.merges")]
    hf = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True) for t in tokens[:17]])
    return hf


def test_smollm2_ids(smol):
    assert smol.vocab_size == 49152
    assert (smol.bos_id, smol.pad_id, smol.eos_ids) == (1, 2, frozenset({0, 2}))
    assert smol.encode("<|im_start|><|im_end|><|endoftext|>") == [1, 2, 0]
    assert smol.encode("Hi", bos=True)[0] == 1 and smol.encode("Hi")[0] != 1


def test_smollm2_matches_hf_on_wikitext(smol, oracle, wikitext):
    text = wikitext[:100_000]
    ids = smol.encode(text)
    assert ids == oracle.encode(text).ids
    assert smol.decode(ids) == text


@pytest.mark.parametrize("text", EDGE_CASES)
def test_smollm2_matches_hf_on_edge_cases(smol, oracle, text):
    ids = smol.encode(text)
    assert ids == oracle.encode(text).ids
    assert smol.decode(ids) == text


def test_smollm2_missing_bytes_fall_back(smol):
    with pytest.warns(UserWarning, match="no token"):
        ids = smol.encode("a\x04b")
    assert smol.decode(ids) == "a\ufffdb"
    # Every byte SmolLM2 lacks (ASCII controls, and lead bytes 0xf1/0xf2 of planes 4-11), one warning per call.
    text = "\x04\x06\x13\x14\x16\x1d" + chr(0x40000) + chr(0x80000) + "ok\x04"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = smol.encode(text)
    assert len(caught) == 1
    assert smol.decode(ids) == "\ufffd" * 8 + "ok\ufffd"


def test_smollm2_partial_utf8_decodes_with_replacement(smol):
    ids = smol.encode("🙂")
    assert len(ids) > 1  # split into byte-level tokens
    assert "\ufffd" in smol.decode(ids[:1])
    assert smol.decode(ids) == "🙂"


def test_smollm2_chat_prompt(smol):
    default = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert smol.chat_prompt("What is 2+2?") == default
    prompt = smol.chat_prompt("Hi", system="Be brief.")
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = smol.encode(prompt)
    assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 2
    assert smol.decode(ids) == prompt


# --- a tiny GGUF vocabulary written in the test: the llama-bpe pre-tokenizer and the errors ---

def write_tiny_gguf(path, model="gpt2", pre="llama-bpe", template="{{ '<|start_header_id|>' }}"):
    byte_to_unicode = {b: c for c, b in gpt2_unicode_to_byte().items()}
    tokens = [byte_to_unicode[b] for b in range(256)] + ["he", "ll", "hell", "12", "123"]
    merges = ["h e", "l l", "he ll", "1 2", "12 3"]
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens + specials)
    writer.add_token_types([1] * len(tokens) + [3] * len(specials))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(len(tokens))
    writer.add_eos_token_id(len(tokens) + 1)
    writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_llama_bpe(tmp_path):
    tok = load_tokenizer(write_tiny_gguf(tmp_path / "tiny.gguf"))
    assert isinstance(tok, GGUFTokenizer)
    assert (tok.vocab_size, tok.bos_id) == (266, 261)
    assert tok.eos_ids == {262, 265}  # eos_token_id and <|eot_id|>
    assert tok.encode("hello") == [258, ord("o")]
    # Llama-3 splits digits in groups of three, not one by one as SmolLM does.
    assert tok.encode("12312") == [260, 259]
    for text in EDGE_CASES:
        assert tok.decode(tok.encode(text)) == text
    prompt = tok.chat_prompt("hi", system="sys")
    assert prompt == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok.encode(prompt)[:2] == [261, 263]


def test_gguf_unsupported(tmp_path):
    with pytest.raises(NotImplementedError, match="'qwen2'"):
        load_tokenizer(write_tiny_gguf(tmp_path / "a.gguf", pre="qwen2"))
    with pytest.raises(NotImplementedError, match="'llama'"):
        load_tokenizer(write_tiny_gguf(tmp_path / "b.gguf", model="llama"))
    tok = load_tokenizer(write_tiny_gguf(tmp_path / "c.gguf", template="{{ messages }}"))
    with pytest.raises(ValueError, match="chat template"):
        tok.chat_prompt("hi")


# --- tiktoken (Llama-3 layout) ---

def write_tiktoken_file(path):
    tokens = [bytes([b]) for b in range(256)] + [b"he", b"ll", b"hell", b" w"]
    lines = [f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(tokens)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tiktoken(tmp_path):
    tok = load_tokenizer(write_tiktoken_file(tmp_path / "tokenizer.model"))
    assert isinstance(tok, TiktokenTokenizer)
    n = 260  # base vocabulary; Meta's 256 special tokens follow
    assert (tok.vocab_size, tok.bos_id, tok.pad_id) == (n + 256, n, n + 1)
    assert tok.eos_ids == {n + 1, n + 9}
    assert tok.encode("hello world", bos=True) == [n, 258, ord("o"), 259, *b"orld"]
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                "<|reserved_special_token_0|>", "<|reserved_special_token_4|>", "<|reserved_special_token_250|>"]
    assert [tok.encode(s) for s in specials] == [[n], [n + 1], [n + 6], [n + 7], [n + 9], [n + 2], [n + 8], [n + 255]]
    for text in EDGE_CASES + ["a\x04b"]:
        assert tok.decode(tok.encode(text)) == text
    prompt = tok.chat_prompt("hi")
    assert prompt == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.encode(prompt)
    assert ids[:2] == [n, n + 6] and tok.decode(ids) == prompt
    (tmp_path / "llama" / "original").mkdir(parents=True)
    write_tiktoken_file(tmp_path / "llama" / "original" / "tokenizer.model")
    assert isinstance(load_tokenizer(tmp_path / "llama"), TiktokenTokenizer)


# --- sentencepiece (Llama-2 layout) ---

@pytest.fixture(scope="module")
def sp_model(tmp_path_factory, wikitext):
    import sentencepiece
    folder = tmp_path_factory.mktemp("sp")
    corpus = folder / "corpus.txt"
    corpus.write_text(wikitext[:20_000], encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=400, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        character_coverage=1.0, minloglevel=2)
    return folder / "tokenizer.model"


def test_sentencepiece(sp_model, wikitext):
    tok = load_tokenizer(sp_model)
    assert isinstance(tok, SentencePieceTokenizer)
    assert load_tokenizer(sp_model.parent).vocab_size == tok.vocab_size == 400
    assert (tok.bos_id, tok.eos_ids, tok.pad_id) == (1, {2}, 2)
    ids = tok.encode("Hello world", bos=True)
    assert ids[0] == 1 and 1 not in ids[1:]
    for text in [wikitext[:5000]] + EDGE_CASES[1:]:
        assert tok.decode(tok.encode(text)) == text
    assert "\ufffd" in tok.decode(tok.encode("🙂")[1:3])  # byte-fallback pieces cut mid-character
    prompt = tok.chat_prompt("hi", system="sys")
    assert prompt == "<s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nhi [/INST]"
    assert tok.encode(prompt)[0] == 1 and tok.encode(prompt).count(1) == 1
    assert tok.encode("a</s>")[-1] == 2


# --- errors ---

def test_load_tokenizer_errors(tmp_path):
    garbage = tmp_path / "tokenizer.model"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="tokenizer.model"):
        load_tokenizer(garbage)
    fake = tmp_path / "weights.gguf"
    fake.write_bytes(b"not a gguf")
    with pytest.raises(ValueError, match="weights.gguf"):
        load_tokenizer(fake)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00\xff")
    with pytest.raises(ValueError, match="truncated.gguf"):
        load_tokenizer(truncated)
    writer = gguf.GGUFWriter(str(tmp_path / "no_vocab.gguf"), "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(ValueError, match="no embedded tokenizer"):
        load_tokenizer(tmp_path / "no_vocab.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_tokenizer(tmp_path / "empty")
