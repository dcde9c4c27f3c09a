"""Tokenizers behind one small interface: GGUF-embedded byte-level BPE, Llama-3 tiktoken, sentencepiece.

`load_tokenizer(path)` picks the right one. Every tokenizer encodes special tokens written in the
text (e.g. `<|im_start|>`) to their special ids, so a chat prompt is just text passed to `encode`.
"""
import base64
import re
import warnings
from pathlib import Path

import gguf
import tiktoken

# Pre-tokenizer regexes (tiktoken syntax). SmolLM's: single digits, then GPT-2's byte-level split.
SMOLLM_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                  r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
GGUF_PRE_PATTERNS = {"smollm": SMOLLM_PATTERN, "llama-bpe": LLAMA3_PATTERN}

# Tokens that end a turn or the text in the vocabularies we know; generation stops at any of them.
END_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|end_of_text|>", "<|eot_id|>", "</s>")


class Tokenizer:
    """What generation needs from a tokenizer. `chat_prompt` returns the whole prompt text, BOS included
    where the model's template writes it, so encode it with bos=False."""
    vocab_size: int
    bos_id: int | None
    add_bos: bool = True  # whether plain prompts start with BOS (as the model was trained)
    eos_ids: frozenset[int]  # generation stops at any of these
    pad_id: int

    def encode(self, text: str, bos: bool = False) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        raise ValueError(f"{type(self).__name__} has no chat template")


def chatml_prompt(user: str, system: str | None) -> str:
    turns = [("system", system)] if system is not None else []
    turns.append(("user", user))
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"


def llama3_prompt(user: str, system: str | None) -> str:
    turns = [("system", system)] if system is not None else []
    turns.append(("user", user))
    body = "".join(f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>" for role, text in turns)
    return f"<|begin_of_text|>{body}<|start_header_id|>assistant<|end_header_id|>\n\n"


def llama2_prompt(user: str, system: str | None) -> str:
    if system is not None:
        user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}"
    return f"<s>[INST] {user} [/INST]"


class TiktokenBase(Tokenizer):
    """Byte-level BPE run by tiktoken, special tokens allowed anywhere in the text.

    Fallback: some vocabularies (SmolLM2's among them) have no token for a few byte values, on which
    tiktoken would panic. Characters whose UTF-8 bytes include such a byte are replaced by U+FFFD
    before encoding, with one warning per call.
    """

    def __init__(self, name: str, pattern: str, ranks: dict[bytes, int], specials: dict[str, int]):
        self._enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
        self._missing_bytes = frozenset(range(256)) - {b[0] for b in ranks if len(b) == 1}

    def encode(self, text: str, bos: bool = False) -> list[int]:
        if self._missing_bytes:
            # Checking each distinct character once keeps this cheap on long texts.
            bad = {c for c in set(text) if self._missing_bytes.intersection(c.encode("utf-8", "surrogatepass"))}
            if bad:
                warnings.warn(f"characters {sorted(bad)!r} contain bytes with no token; encoded as U+FFFD",
                              stacklevel=2)
                text = text.translate({ord(c): "\ufffd" for c in bad})
        ids = self._enc.encode(text, allowed_special="all")
        return [self.bos_id] + ids if bos and self.bos_id is not None else ids

    def decode(self, ids: list[int]) -> str:
        # A cut inside a multi-byte character (or a lone byte token) decodes to U+FFFD.
        return self._enc.decode(list(ids), errors="replace")


def gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes-to-unicode table: printable Latin-1 bytes stand for themselves,
    the other bytes were shifted to U+0100 onwards, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {chr(b): b for b in printable}
    shifted = (b for b in range(256) if b not in printable)
    table.update((chr(256 + n), b) for n, b in enumerate(shifted))
    return table


def _gguf_value(reader, key: str, default=None):
    """A GGUF metadata value (scalar, string or array) read through `parts`/`data`, which every gguf
    release has (newer ones also offer `field.contents()`)."""
    field = reader.fields.get(key)
    if field is None:
        return default
    is_string = field.types[-1] == gguf.GGUFValueType.STRING
    values = [bytes(field.parts[i]).decode("utf-8") if is_string else field.parts[i].tolist()[0]
              for i in field.data]
    return values if field.types[0] == gguf.GGUFValueType.ARRAY else values[0]


class GGUFTokenizer(TiktokenBase):
    """Byte-level BPE embedded in a GGUF file (`tokenizer.ggml.model` "gpt2"), run by tiktoken with
    rank = token id; control and user-defined tokens are special tokens. Bytes with no token: see
    TiktokenBase (this is the case of SmolLM2)."""
    NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6

    def __init__(self, source: "str | Path | gguf.GGUFReader"):
        reader = source if isinstance(source, gguf.GGUFReader) else gguf.GGUFReader(source)
        model = _gguf_value(reader, "tokenizer.ggml.model")
        if model is None:
            raise ValueError("this GGUF file has no embedded tokenizer (no tokenizer.ggml.model)")
        if model != "gpt2":
            raise NotImplementedError(f"GGUF tokenizer model {model!r} is not supported "
                                      "(only 'gpt2' byte-level BPE)")
        pre = _gguf_value(reader, "tokenizer.ggml.pre", "default")
        if pre not in GGUF_PRE_PATTERNS:
            raise NotImplementedError(f"GGUF pre-tokenizer {pre!r} is not supported "
                                      f"(supported: {', '.join(GGUF_PRE_PATTERNS)})")
        tokens = _gguf_value(reader, "tokenizer.ggml.tokens")
        types = _gguf_value(reader, "tokenizer.ggml.token_type", [self.NORMAL] * len(tokens))

        to_byte = gpt2_unicode_to_byte()
        ranks, specials = {}, {}
        for i, (token, kind) in enumerate(zip(tokens, types)):
            if kind in (self.CONTROL, self.USER_DEFINED):
                specials[token] = i
            elif kind in (self.NORMAL, self.BYTE):
                ranks[bytes(to_byte[c] for c in token)] = i
        super().__init__(f"gguf-{pre}", GGUF_PRE_PATTERNS[pre], ranks, specials)

        self.vocab_size = len(tokens)
        self.bos_id = _gguf_value(reader, "tokenizer.ggml.bos_token_id")
        self.add_bos = bool(_gguf_value(reader, "tokenizer.ggml.add_bos_token", True))  # SmolLM2: False
        eos = _gguf_value(reader, "tokenizer.ggml.eos_token_id")
        eot = _gguf_value(reader, "tokenizer.ggml.eot_token_id")
        ends = {specials[t] for t in END_TOKENS if t in specials}
        self.eos_ids = frozenset({i for i in (eos, eot) if i is not None} | ends)
        self.pad_id = _gguf_value(reader, "tokenizer.ggml.padding_token_id", eos)
        self._template = _gguf_value(reader, "tokenizer.chat_template")

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        template = self._template or ""
        if "<|im_start|>" in template:
            # ChatML; the default system turn, if any, is the literal one written in the template.
            if system is None:
                default = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", template, re.S)
                system = default.group(1) if default else None
            return chatml_prompt(user, system)
        if "<|start_header_id|>" in template:
            return llama3_prompt(user, system)
        raise ValueError("this GGUF has no chat template we know (ChatML or Llama-3)"
                         if template else "this GGUF has no chat template")


class TiktokenTokenizer(TiktokenBase):
    """Llama-3's `tokenizer.model`: tiktoken BPE ranks plus Meta's 256 special tokens after them."""
    NUM_SPECIAL = 256

    def __init__(self, path: "str | Path"):
        ranks = read_tiktoken_ranks(path)
        n = len(ranks)
        names = ["<|begin_of_text|>", "<|end_of_text|>", *(f"<|reserved_special_token_{i}|>" for i in range(4)),
                 "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
        names += [f"<|reserved_special_token_{i}|>" for i in range(5, 5 + self.NUM_SPECIAL - len(names))]
        specials = {name: n + i for i, name in enumerate(names)}
        super().__init__(Path(path).name, LLAMA3_PATTERN, ranks, specials)
        self.vocab_size = n + self.NUM_SPECIAL
        self.bos_id = specials["<|begin_of_text|>"]
        self.eos_ids = frozenset({specials["<|end_of_text|>"], specials["<|eot_id|>"]})
        self.pad_id = specials["<|end_of_text|>"]

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        return llama3_prompt(user, system)


def read_tiktoken_ranks(path: "str | Path") -> dict[bytes, int]:
    """A tiktoken BPE file: one `base64(token) rank` per line. Raises ValueError on anything else."""
    ranks = {}
    for line in Path(path).read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
    if not ranks:
        raise ValueError(f"{path}: empty tiktoken file")
    return ranks


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model (Llama-2, Mistral). Control pieces written in the text (`<s>`, `</s>`)
    encode to their ids; sentencepiece itself would spell them out."""

    def __init__(self, path: "str | Path"):
        import sentencepiece
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        sp = self._sp
        self.vocab_size = sp.vocab_size()
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.eos_ids = frozenset({sp.eos_id()} if sp.eos_id() >= 0 else ())
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else max(sp.eos_id(), 0)
        self._controls = {sp.id_to_piece(i): i for i in range(self.vocab_size) if sp.is_control(i)}
        self._split = re.compile("(" + "|".join(map(re.escape, self._controls)) + ")") if self._controls else None

    def encode(self, text: str, bos: bool = False) -> list[int]:
        ids = [self.bos_id] if bos and self.bos_id is not None else []
        # re.split with a capture group alternates text, control piece, text, ...
        for n, part in enumerate(self._split.split(text) if self._split else [text]):
            if n % 2:
                ids.append(self._controls[part])
            elif part:
                ids += self._sp.encode(part)
        return ids

    def decode(self, ids: list[int]) -> str:
        # sentencepiece turns invalid UTF-8 from byte-fallback pieces into U+FFFD itself.
        return self._sp.decode(list(ids))

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        return llama2_prompt(user, system)


def load_tokenizer(path: "str | Path") -> Tokenizer:
    """A `.gguf` file, a `tokenizer.model` (sentencepiece, else tiktoken) or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in (path / "tokenizer.model", path / "original" / "tokenizer.model") if p.is_file()]
        if not found:
            raise ValueError(f"{path}: no tokenizer.model or original/tokenizer.model in this folder")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such tokenizer file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        try:
            reader = gguf.GGUFReader(path)
        except Exception as e:
            raise ValueError(f"{path}: corrupt GGUF file ({e})") from e
        return GGUFTokenizer(reader)
    if path.suffix == ".gguf":
        raise ValueError(f"{path}: not a GGUF file (bad magic {magic!r})")
    try:
        return SentencePieceTokenizer(path)
    except RuntimeError:  # sentencepiece's error for anything that is not its protobuf
        pass
    try:
        return TiktokenTokenizer(path)
    except ValueError as e:  # also covers binascii.Error and UnicodeDecodeError
        raise ValueError(f"{path}: neither a sentencepiece model nor a tiktoken BPE file") from e

