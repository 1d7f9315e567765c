"""The CLIP byte-pair-encoding tokenizer that ImageBind's text tower was trained with.

Gives the same token ids as the upstream `SimpleTokenizer` (ImageBind, itself from OpenAI CLIP):
text is repaired with ftfy, HTML-unescaped twice, whitespace-collapsed and lower-cased; split by
CLIP's regular expression; each piece is mapped byte-wise to printable characters and merged by
the ranked BPE merges of `bpe_simple_vocab_16e6.txt.gz`. A row is `<|startoftext|>`, the tokens,
`<|endoftext|>`, then zeros up to 77. A text longer than 75 tokens keeps its first 75 and still
ends in `<|endoftext|>` (upstream cuts to 76 and appends the end token), which matters because
the text tower reads its output at the position of the largest id, the end token.

Like upstream, a literal `<|startoftext|>` or `<|endoftext|>` inside a text becomes that special
token.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
from collections.abc import Iterator, Sequence
from pathlib import Path

import ftfy
import regex
import torch

CONTEXT_LENGTH = 77
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
_END_OF_WORD = "</w>"
# The vocabulary file holds more merges than CLIP used; CLIP keeps 49152 - 256 - 2 of them.
_MERGE_COUNT = 49152 - 256 - 2
_PIECE_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"""
    r"""|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
_BPE_CACHE_SIZE = 65536


def _byte_to_char() -> dict[int, str]:
    """CLIP's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the others (controls, space, ...) map to the
    characters from U+0100 on, in byte order.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    printable_set = set(printable)
    others = [b for b in range(256) if b not in printable_set]
    mapping = {b: chr(b) for b in printable}
    mapping.update({b: chr(256 + i) for i, b in enumerate(others)})
    return mapping


def _read_merges(path: Path | None) -> list[tuple[str, str]]:
    if path is None:
        resource = importlib.resources.files("core.imagebind").joinpath(
            "assets", "bpe_simple_vocab_16e6.txt.gz"
        )
        raw = resource.read_bytes()
    else:
        raw = Path(path).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    # The first line is a version header.
    merges = []
    for line in lines[1 : _MERGE_COUNT + 1]:
        first, second = line.split()
        merges.append((first, second))
    return merges


def _clean(text: str) -> str:
    """Repair mojibake, unescape HTML, collapse whitespace and lower-case, as CLIP does."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class ClipTokenizer:
    """Turns texts into `[batch, 77]` token ids for ImageBind's text tower.

    The vocabulary is read once per instance; use `default_tokenizer()` to share one. Instances
    are safe to use from several threads (the only mutable part is an `lru_cache`).
    """

    def __init__(self, vocab_path: Path | None = None, context_length: int = CONTEXT_LENGTH):
        if context_length < 2:
            raise ValueError("context_length must leave room for the start and end tokens")
        merges = _read_merges(vocab_path)
        self._byte_to_char = _byte_to_char()
        base = list(self._byte_to_char.values())
        vocab = [
            *base,
            *(c + _END_OF_WORD for c in base),
            *(a + b for a, b in merges),
            START_TOKEN,
            END_TOKEN,
        ]
        self._ids: dict[str, int] = {piece: i for i, piece in enumerate(vocab)}
        self._ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self._pattern = regex.compile(_PIECE_PATTERN, regex.IGNORECASE)
        self.context_length = context_length
        self.start_id = self._ids[START_TOKEN]
        self.end_id = self._ids[END_TOKEN]
        self.vocab_size = len(vocab)
        self._merge_piece = functools.lru_cache(maxsize=_BPE_CACHE_SIZE)(self._merge_piece_uncached)

    def __call__(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Token ids, `LongTensor[len(texts), context_length]`; a lone string is one text."""
        if isinstance(texts, str):
            texts = [texts]
        result = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.token_row(text)
            result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return result

    def token_row(self, text: str) -> list[int]:
        """Start token, at most `context_length - 2` text tokens, end token (no padding)."""
        budget = self.context_length - 2
        ids = [self.start_id]
        for token_id in self._iter_ids(text):
            if len(ids) > budget:
                break
            ids.append(token_id)
        ids.append(self.end_id)
        return ids

    def encode(self, text: str) -> list[int]:
        """All token ids of `text`, without start/end tokens and without truncation."""
        return list(self._iter_ids(text))

    def _iter_ids(self, text: str) -> Iterator[int]:
        for match in self._pattern.finditer(_clean(text)):
            piece = match.group()
            if piece in (START_TOKEN, END_TOKEN):
                yield self._ids[piece]
                continue
            chars = "".join(self._byte_to_char[b] for b in piece.encode("utf-8"))
            for symbol in self._merge_piece(chars):
                yield self._ids[symbol]

    def _merge_piece_uncached(self, chars: str) -> tuple[str, ...]:
        """Apply the ranked merges to one piece until no known pair is left."""
        symbols = [*chars[:-1], chars[-1] + _END_OF_WORD]
        while len(symbols) > 1:
            best = min(
                zip(symbols, symbols[1:]),
                key=lambda pair: self._ranks.get(pair, len(self._ranks)),
            )
            if best not in self._ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)


@functools.cache
def default_tokenizer() -> ClipTokenizer:
    """One shared tokenizer with the packaged vocabulary, built on first use."""
    return ClipTokenizer()
