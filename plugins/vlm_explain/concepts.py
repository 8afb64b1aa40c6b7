"""The concept bank: short textual concepts mined from a report corpus, kept in a file the user edits.

A concept is a short phrase a radiologist writes ("pleural effusion",
"costophrenic angle", "enlarged cardiac silhouette", "lungs are clear"). The
bank is mined from the positive statements of reports: sections headers and
list numbers are dropped, sentences with a negation cue ("no", "without",
"not") are dropped (a text tower embeds "no effusion" close to "effusion", so a
negated concept would explain the wrong way), existence wrappers ("there is a",
"is present") are stripped, and the word n-grams of what is left that occur in
at least ``min_count`` reports become candidates. An n-gram is kept when it
does not start or end on a function word, holds a word that is not a mere
modifier (size, side, zone words alone name no finding), has at most
``max_modifiers`` of them, and is not always
seen inside one longer kept n-gram (the longer one says more). The counting is
a few lines over ``collections.Counter``: scikit-learn's ``CountVectorizer``
would count n-grams across sentence boundaries and cannot apply these rules.

The file is plain text: one concept per line, ``#`` starts a comment.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from workbench.errors import ConfigError
from workbench.fsutil import atomic_write_text

NEGATION_CUES = re.compile(r"\b(no|not|without|negative|free of|absent|resolved|unremarkable)\b", re.IGNORECASE)
_SECTION_HEADER = re.compile(r"\b[A-Z][A-Z /-]{2,}:\s*")
_SENTENCE_SPLIT = re.compile(r"(?<!\d)[.;:!?\n]+|\b\d+\.\s")
_WORD = re.compile(r"[a-z][a-z'-]*")
_LEADING_WRAPPERS = re.compile(r"^(there (is|are) (a |an )?|(a|an|the) |findings consistent with (a |an )?)")
_TRAILING_WRAPPERS = re.compile(r"\s+(is|are) (present|seen|noted|identified|demonstrated)$")
FUNCTION_WORDS = frozenset(
    "a an the of in on at to and or with is are was were be been there this that these those its it by for as from into".split()
)
MODIFIER_WORDS = frozenset(
    "small moderate moderate-sized large mild mildly marked markedly severe severely minimal tiny big "
    "right left bilateral upper middle lower mid basal apical zone zones side sided right-sided left-sided lung lungs".split()
)

# Adjectives a concept may not end on ("nodule in the left middle" is a cut-off "... middle zone").
_DANGLING_WORDS = MODIFIER_WORDS - {"zone", "zones", "side", "lung", "lungs"} | {"costophrenic", "cardiac", "pulmonary", "airspace"}


def positive_statements(report: str) -> list[str]:
    """The report's statements that assert something, lower-case, wrappers stripped.

    Args:
        report: free report text (``FINDINGS: ... IMPRESSION: ...``).

    Returns:
        e.g. ``["small right pleural effusion", "lungs are clear"]`` for
        ``"FINDINGS: There is a small right pleural effusion. The lungs are clear. No pneumothorax."``.
    """
    text = _SECTION_HEADER.sub(". ", report)
    statements = []
    for sentence in _SENTENCE_SPLIT.split(text):
        sentence = " ".join(sentence.split()).strip(" ,").lower()
        if not sentence or sentence.isdigit() or NEGATION_CUES.search(sentence):
            continue
        sentence = _TRAILING_WRAPPERS.sub("", _LEADING_WRAPPERS.sub("", sentence))
        if _WORD.search(sentence):
            statements.append(sentence)
    return statements


def _ngrams(words: Sequence[str], max_words: int) -> Iterable[tuple[str, ...]]:
    for size in range(1, max_words + 1):
        for start in range(len(words) - size + 1):
            yield tuple(words[start:start + size])


def _acceptable(gram: tuple[str, ...], max_modifiers: int) -> bool:
    if gram[0] in FUNCTION_WORDS or gram[-1] in FUNCTION_WORDS or gram[-1] in _DANGLING_WORDS:
        return False
    if sum(word in MODIFIER_WORDS for word in gram) > max_modifiers:
        return False
    return any(word not in FUNCTION_WORDS and word not in MODIFIER_WORDS and len(word) > 2 for word in gram)


def _contains(longer: tuple[str, ...], shorter: tuple[str, ...]) -> bool:
    size = len(shorter)
    return any(longer[start:start + size] == shorter for start in range(len(longer) - size + 1))


def mine_concepts(reports: Iterable[str], min_count: int = 5, max_words: int = 6, max_modifiers: int = 2,
                  max_concepts: int = 200) -> list[tuple[str, int]]:
    """Mine a concept bank from report texts.

    Args:
        reports: report texts (a corpus; the phantoms' 3000 reports take about a second).
        min_count: an n-gram must occur in at least this many reports.
        max_words: the longest concept, in words.
        max_modifiers: the most size/side/zone words in one concept ("small right pleural effusion" has two);
            without a cap every size x side x zone combination of a finding becomes a concept.
        max_concepts: keep at most this many, the most frequent first.

    Returns:
        ``[(concept, report count)]`` sorted by count (descending), then alphabetically.

    Raises:
        ConfigError: no concept reaches ``min_count`` (too few reports, or only negated statements).
    """
    counts: Counter[tuple[str, ...]] = Counter()
    for report in reports:
        seen: set[tuple[str, ...]] = set()
        for statement in positive_statements(str(report or "")):
            seen.update(gram for gram in _ngrams(_WORD.findall(statement), max_words) if _acceptable(gram, max_modifiers))
        counts.update(seen)
    frequent = {gram: count for gram, count in counts.items() if count >= min_count}
    # Drop an n-gram that (almost) never occurs outside one longer frequent n-gram: the longer one is the concept.
    kept = {gram: count for gram, count in frequent.items()
            if not any(len(other) > len(gram) and other_count >= 0.9 * count and _contains(other, gram)
                       for other, other_count in frequent.items())}
    if not kept:
        raise ConfigError(f"no concept occurs in {min_count} or more reports; lower min_count or give more reports")
    ranked = sorted(kept.items(), key=lambda item: (-item[1], " ".join(item[0])))
    return [(" ".join(gram), count) for gram, count in ranked[:max_concepts]]


def check_concepts(concepts: Sequence[str], source: str | Path | None = None) -> list[str]:
    """Clean a concept list: whitespace collapsed, duplicates (any case) dropped, order kept.

    Raises:
        ConfigError: the list is empty (naming ``source``), so there is nothing to explain with.
    """
    cleaned, seen = [], set()
    for concept in concepts:
        text = " ".join(str(concept).split())
        if text and text.lower() not in seen:
            seen.add(text.lower())
            cleaned.append(text)
    if not cleaned:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}the concept bank is empty; write one concept per line, or build one with "
                          "`workbench explain-vlm concepts --manifest REPORTS --out FILE`")
    return cleaned


def read_concept_bank(path: str | Path) -> list[str]:
    """Read a concept bank file: one concept per line, ``#`` comments and blank lines ignored.

    Raises:
        ConfigError: a missing file, or a bank with no concept (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: concept bank file not found")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return check_concepts([line for line in lines if line], path)


def write_concept_bank(path: str | Path, concepts: Sequence[tuple[str, int]] | Sequence[str], header: str = "") -> Path:
    """Write a concept bank file atomically (``concept  # count`` lines when counts are given).

    Args:
        path: the file to write.
        concepts: concepts, or ``(concept, report count)`` pairs from :func:`mine_concepts`.
        header: comment lines put at the top (each prefixed with ``# ``).

    Returns:
        The path written.
    """
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for item in concepts:
        if isinstance(item, str):
            lines.append(item)
        else:
            concept, count = item
            lines.append(f"{concept:<48}  # in {count} reports")
    return atomic_write_text(path, "\n".join(lines) + "\n")
