"""CLIP text tokenizer: OpenAI CLIP byte-level BPE, token-for-token identical to ``open_clip.tokenize``.

Pipeline for one text (same semantics as open_clip's ``SimpleTokenizer`` with ``clean='lower'``):

1. clean: ``ftfy.fix_text``, ``html.unescape`` twice, collapse whitespace (``str.split``), lower-case;
2. split into words with the CLIP pre-tokenization regex;
3. map each word's UTF-8 bytes to the 256 printable "byte symbols" and apply the BPE merges, with the
   ``</w>`` suffix on the last symbol (done by the Rust ``tokenizers`` BPE model, memoised per word);
4. wrap as ``<start_of_text> ids <end_of_text>``, truncate to the context (last position forced to
   ``<end_of_text>``) and zero-pad.

Everything is offline: the vocabulary ships as package data (``tolclip/core/assets``). ``open_clip`` is not
imported here (it is only used by the tests as the reference).
"""

from __future__ import annotations

import functools
import gzip
import html
from collections.abc import Iterable, Sequence
from importlib import resources

import ftfy
import regex
import torch
from tokenizers.models import BPE

__all__ = ["DEFAULT_CONTEXT_LENGTH", "Tokenizer", "clean_text", "get_tokenizer"]

DEFAULT_CONTEXT_LENGTH = 77
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
END_OF_WORD = "</w>"
# CLIP uses the first 49152 - 256 - 2 merges of the file (the vocabulary is 49408 with the specials).
_NUM_MERGES = 49152 - 256 - 2
_WORD_CACHE_MAX = 1 << 18  # words memoised per process before the cache is reset
# CLIP pre-tokenization: special tokens, English contractions, letter runs, single digits, other
# non-space runs. Case-insensitive, as in CLIP (this matters only for exotic case foldings).
_WORD_PATTERN = rf"{SOT_TOKEN}|{EOT_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+"


def _byte_symbols() -> list[tuple[int, str]]:
    """(byte, symbol) pairs in CLIP vocabulary order.

    Printable Latin-1 bytes stand for themselves; the remaining 68 bytes (controls, space, NBSP,
    soft hyphen, ...) get the code points 256, 257, ... in increasing byte order.
    """
    direct = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    direct_set = set(direct)
    remapped = [b for b in range(256) if b not in direct_set]
    return [(b, chr(b)) for b in direct] + [(b, chr(256 + k)) for k, b in enumerate(remapped)]


@functools.lru_cache(maxsize=65536)
def _slow_clean(text: str) -> str:
    return html.unescape(html.unescape(ftfy.fix_text(text)))


def clean_text(text: str) -> str:
    """CLIP text cleaning: ftfy, HTML-unescape twice, collapse whitespace, lower-case."""
    # ftfy and html.unescape leave printable ASCII without '&' unchanged (no mojibake, entities,
    # control characters or line breaks are possible), so skip them for speed.
    if not (text.isascii() and text.isprintable()) or "&" in text:
        text = _slow_clean(text)
    return " ".join(text.split()).lower()


class _Vocab:
    """Process-wide immutable BPE data plus the per-word memo (shared by all Tokenizer instances)."""

    def __init__(self) -> None:
        raw = resources.files("tolclip.core").joinpath("assets", VOCAB_FILE).read_bytes()
        lines = gzip.decompress(raw).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"corrupt BPE vocabulary file {VOCAB_FILE}")

        pairs = _byte_symbols()
        base = [sym for _, sym in pairs]
        tokens = base + [sym + END_OF_WORD for sym in base] + [a + b for a, b in merges]
        tokens += [SOT_TOKEN, EOT_TOKEN]
        self.token_to_id: dict[str, int] = {tok: i for i, tok in enumerate(tokens)}
        if len(self.token_to_id) != len(tokens):
            raise ValueError(f"duplicate tokens in {VOCAB_FILE}")
        self.vocab_size = len(tokens)
        self.sot_token_id = self.token_to_id[SOT_TOKEN]
        self.eot_token_id = self.token_to_id[EOT_TOKEN]

        # bytes -> symbols via Latin-1 decoding then str.translate (fast in C).
        self.byte_table = {b: sym for b, sym in pairs}
        symbol_to_byte = {sym: b for b, sym in pairs}
        # Decoding: each id -> raw bytes, with a trailing space for end-of-word tokens.
        self.id_to_bytes: list[bytes] = []
        for tok in tokens:
            if tok in (SOT_TOKEN, EOT_TOKEN):
                self.id_to_bytes.append(tok.encode("ascii"))
                continue
            eow = tok.endswith(END_OF_WORD)
            body = tok[: -len(END_OF_WORD)] if eow else tok
            self.id_to_bytes.append(bytes(symbol_to_byte[c] for c in body) + (b" " if eow else b""))

        self.model = BPE(
            vocab=self.token_to_id,
            merges=merges,
            end_of_word_suffix=END_OF_WORD,
            cache_capacity=0,  # memoised in Python instead (see ``words``)
            fuse_unk=False,
            ignore_merges=False,
        )
        self.pattern = regex.compile(_WORD_PATTERN, regex.IGNORECASE)
        self.words: dict[str, tuple[int, ...]] = {
            SOT_TOKEN: (self.sot_token_id,),
            EOT_TOKEN: (self.eot_token_id,),
        }

    def bpe(self, word: str) -> tuple[int, ...]:
        """Token ids of one pre-tokenized word (memoised)."""
        symbols = word.encode("utf-8").decode("latin-1").translate(self.byte_table)
        ids = tuple(t.id for t in self.model.tokenize(symbols))
        if len(self.words) >= _WORD_CACHE_MAX:
            self.words.clear()
            self.words[SOT_TOKEN] = (self.sot_token_id,)
            self.words[EOT_TOKEN] = (self.eot_token_id,)
        self.words[word] = ids
        return ids


@functools.lru_cache(maxsize=1)
def _vocab() -> _Vocab:
    return _Vocab()


class Tokenizer:
    """OpenAI CLIP BPE tokenizer (identical ids to ``open_clip.tokenize``); picklable, offline."""

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        self.context_length = context_length
        self._v = _vocab()
        self.vocab_size: int = self._v.vocab_size
        self.sot_token_id: int = self._v.sot_token_id
        self.eot_token_id: int = self._v.eot_token_id
        self.pad_token_id: int = 0

    def __getstate__(self) -> dict[str, int]:
        return {"context_length": self.context_length}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["context_length"])

    def __repr__(self) -> str:
        return f"Tokenizer(context_length={self.context_length}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (cleaned), without start/end tokens and without truncation."""
        v = self._v
        words = v.words
        ids: list[int] = []
        for word in v.pattern.findall(clean_text(text)):
            word_ids = words.get(word)
            if word_ids is None:
                word_ids = v.bpe(word)
            ids += word_ids
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.LongTensor:
        """Tokenize to a LongTensor [N, context_length]: SOT, ids, EOT, zero padding; truncated rows end
        with EOT."""
        if isinstance(texts, str):
            texts = [texts]
        ctx = self.context_length if context_length is None else context_length
        if ctx < 1:
            raise ValueError(f"context_length must be >= 1, got {ctx}")
        sot, eot = self.sot_token_id, self.eot_token_id
        pad = [self.pad_token_id] * ctx
        flat: list[int] = []
        for text in texts:
            row = self.encode(text)
            n = len(row) + 2
            if n > ctx:
                if ctx == 1:
                    flat.append(eot)
                    continue
                del row[ctx - 2 :]
                n = ctx
            flat.append(sot)
            flat += row
            flat.append(eot)
            flat += pad[n:]
        return torch.tensor(flat, dtype=torch.long).view(-1, ctx)

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Best-effort inverse of ``encode`` (text comes back cleaned, i.e. lower-cased).

        With ``skip_special_tokens`` the start token is dropped and decoding stops at the first end token
        (so a padded row from ``__call__`` decodes to its text).
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        id_to_bytes = self._v.id_to_bytes
        parts: list[bytes] = []
        for i in ids:
            i = int(i)
            if skip_special_tokens:
                if i == self.sot_token_id:
                    continue
                if i == self.eot_token_id:
                    break
            parts.append(id_to_bytes[i])
        return b"".join(parts).decode("utf-8", errors="replace").strip()


@functools.lru_cache(maxsize=16)
def _shared_tokenizer(context_length: int) -> Tokenizer:
    return Tokenizer(context_length)


def get_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
    """Shared Tokenizer instance, one per process and context length (cached with ``functools.lru_cache``)."""
    return _shared_tokenizer(int(context_length))
