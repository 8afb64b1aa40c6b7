"""Radiology reports as text for a text tower.

Sections (FINDINGS / IMPRESSION) are cut out of MIMIC-CXR free text and IU
X-ray style reports; de-identification placeholders (``___`` in MIMIC-CXR,
``XXXX`` in IU X-ray, runs of either) become the one token :data:`PLACEHOLDER`,
so the text tower sees a single consistent "redacted" word instead of a
tokenizer-dependent run of fragments. Reports are split into sentences for
FLAIR-style sub-captions, grouped when identical (normal chest reports repeat
word for word), and counted when the tower's context truncates them.
Zero-shot classification gets positive and negated prompts worded like reports.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Sequence

import torch

from workbench.errors import DataError

__all__ = [
    "PLACEHOLDER", "TruncationCounter", "duplicate_groups", "extract_sections", "negation_prompts", "normalise_text",
    "sample_subcaption", "split_sentences", "token_lengths", "usable_report",
]

PLACEHOLDER = "___"
STYLES = ("auto", "mimic", "iu", "plain")

# Header names that open the two sections we keep; these and the other known headers close a section.
_SECTION_NAMES = {
    "findings": ("FINDINGS", "FINDING", "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION"),
    "impression": ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS"),
}
_OTHER_HEADERS = (
    "EXAMINATION", "EXAM", "TYPE OF EXAMINATION", "INDICATION", "INDICATIONS", "HISTORY", "CLINICAL HISTORY",
    "CLINICAL INFORMATION", "CLINICAL INDICATION", "REASON FOR EXAM", "REASON FOR STUDY", "REASON FOR EXAMINATION",
    "TECHNIQUE", "COMPARISON", "COMPARISONS", "PROCEDURE", "NOTIFICATION", "RECOMMENDATION", "RECOMMENDATIONS", "RECOMMENDATION(S)", "WET READ", "ADDENDUM",
)
_KNOWN_HEADER_TO_SECTION = {name: section for section, names in _SECTION_NAMES.items() for name in names}
_KNOWN_HEADER_SET = frozenset({*_KNOWN_HEADER_TO_SECTION, *_OTHER_HEADERS})
_KNOWN_HEADERS = sorted(_KNOWN_HEADER_SET, key=len, reverse=True)
_KNOWN_ALTERNATION = "|".join(re.escape(name) for name in _KNOWN_HEADERS)
# A known header in any case at a line start, or an all-capitals header of several words at a line start.
_LINE_HEADER = re.compile(rf"^[ \t]*(?:(?P<name>(?i:{_KNOWN_ALTERNATION}))|(?P<caps>[A-Z][A-Z /&()-]{{1,40}}[A-Z)]))[ \t]*:", re.MULTILINE)
# IU X-ray fields joined on one line ("FINDINGS: ... IMPRESSION: ..."): a capitalised section header mid-line.
_SECTION_ALTERNATION = "|".join(re.escape(name) for name in sorted(_KNOWN_HEADER_TO_SECTION, key=len, reverse=True))
_INLINE_HEADER = re.compile(rf"(?<![^\s.;,])(?P<name>{_SECTION_ALTERNATION})[ \t]*:")
# "FINAL REPORT" (MIMIC-CXR's banner line) opens no section; it is dropped, not treated as a header.
_BANNER_LINE = re.compile(r"(?im)^[ \t]*(?:FINAL REPORT|PRELIMINARY REPORT|WET READ VERSION #\d+)[ \t]*$")
_RULE_LINE = re.compile(r"(?m)^[ \t]*[_=\-*]{10,}[ \t]*$")
_PLACEHOLDERS = {
    "mimic": re.compile(r"_{2,}"),
    "iu": re.compile(r"(?<![A-Za-z])X{3,}(?![A-Za-z])"),
}
_PLACEHOLDERS["auto"] = re.compile(f"{_PLACEHOLDERS['mimic'].pattern}|{_PLACEHOLDERS['iu'].pattern}")
_PLACEHOLDERS["plain"] = _PLACEHOLDERS["auto"]
_LETTER = re.compile(r"[^\W\d_]")


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}; got {style!r}")


def normalise_text(text: str, style: str = "auto") -> str:
    """Collapse whitespace and replace every run of placeholder characters by :data:`PLACEHOLDER`.

    Args:
        text: any report text.
        style: which placeholders to recognise: ``"mimic"`` (``__``, ``___``, ...),
            ``"iu"`` (``XXX``, ``XXXX``, ...), ``"auto"``/``"plain"`` both.

    Returns:
        The text on one line, single-spaced, stripped.
    """
    _check_style(style)
    return " ".join(_PLACEHOLDERS[style].sub(PLACEHOLDER, text).split())


def _has_words(text: str) -> bool:
    """Whether any letter is left once placeholders are removed (``___`` is made of underscores, not letters)."""
    return bool(_LETTER.search(text.replace(PLACEHOLDER, " ")))


class _Header(NamedTuple):
    start: int
    end: int
    name: str
    section: str | None  # "findings", "impression", or None for any other header
    known: bool  # a known header closes the section before it; an unknown capitals one ("LUNGS:") is a sub-heading


def _headers(report: str, style: str) -> list[_Header]:
    """Every header of ``report``, in text order."""
    found: dict[int, _Header] = {}
    if style in ("auto", "mimic", "iu"):
        for match in _LINE_HEADER.finditer(report):
            name = " ".join((match.group("name") or match.group("caps")).upper().split())
            found[match.start()] = _Header(match.start(), match.end(), name, _KNOWN_HEADER_TO_SECTION.get(name), name in _KNOWN_HEADER_SET)
    if style in ("auto", "iu"):
        for match in _INLINE_HEADER.finditer(report):
            if not any(header.start <= match.start() < header.end for header in found.values()):
                name = match.group("name")
                found[match.start()] = _Header(match.start(), match.end(), name, _KNOWN_HEADER_TO_SECTION[name], True)
    return [found[start] for start in sorted(found)]


def _strip_banners(report: str) -> str:
    return _RULE_LINE.sub(" ", _BANNER_LINE.sub(" ", report))


def extract_sections(report: str, style: str = "auto") -> dict[str, str]:
    """The FINDINGS and IMPRESSION sections of a report.

    MIMIC-CXR free text has headers (``EXAMINATION:``, ``INDICATION:``,
    ``COMPARISON:``, ``FINDINGS:``, ``IMPRESSION:``, ...) at line starts, in
    capitals or mixed case, with the text on the same line or the lines that
    follow; an all-capitals ``NAME:`` at a line start is also a header. IU X-ray
    reports (and the phantoms) give the fields one after another, possibly on
    one line (``FINDINGS: ... IMPRESSION: ...``), so in ``"iu"`` and ``"auto"``
    style a capitalised FINDINGS/IMPRESSION header also counts mid-line. A
    section runs to the next known header (an unknown capitals sub-heading
    such as ``LUNGS:`` stays in it as text); repeated sections are joined.
    ``CONCLUSION`` counts as the impression.

    Args:
        report: the report text.
        style: ``"auto"``, ``"mimic"``, ``"iu"``, or ``"plain"`` (no headers:
            the whole text is the findings).

    Returns:
        ``{"findings": str, "impression": str}`` with only the sections that
        have text, whitespace normalised and placeholders as :data:`PLACEHOLDER`.
    """
    _check_style(style)
    if style == "plain":
        text = normalise_text(report, style)
        return {"findings": text} if text else {}
    cleaned = _strip_banners(report)
    headers = _headers(cleaned, style)
    closers = [header.start for header in headers if header.known] + [len(cleaned)]
    parts: dict[str, list[str]] = {}
    for header in headers:
        if header.section is None:
            continue
        stop = min(start for start in closers if start > header.start)
        text = normalise_text(cleaned[header.end:stop], style)
        if text:
            parts.setdefault(header.section, []).append(text)
    return {section: " ".join(parts[section]) for section in ("findings", "impression") if section in parts}


def _with_full_stop(text: str) -> str:
    # A section without a final full stop would run into the next one as a single sentence.
    return text if text[-1:] in ".!?" else f"{text}."


def usable_report(report: str, style: str = "auto") -> str:
    """The text a text tower is trained on: FINDINGS then IMPRESSION.

    A report with no headers at all (a plain paragraph, after dropping a
    ``FINAL REPORT`` banner) is used whole.

    Args:
        report: the report text.
        style: see :func:`extract_sections`.

    Returns:
        The sections joined with a space, whitespace normalised, each ending in
        a full stop, placeholders kept as :data:`PLACEHOLDER`.

    Raises:
        DataError: (with no path) ``"empty report"``; ``"only de-identification
            placeholders"``; or ``"no FINDINGS or IMPRESSION section"`` (naming
            the headers found) for a report with headers but no text under
            FINDINGS or IMPRESSION.
    """
    _check_style(style)
    whole = normalise_text(report or "", style)
    if not _has_words(whole):
        raise DataError(None, "only de-identification placeholders" if PLACEHOLDER in whole else "empty report")
    sections = extract_sections(whole if style == "plain" else report, style)
    if sections:
        text = " ".join(_with_full_stop(sections[name]) for name in ("findings", "impression") if name in sections)
        if not _has_words(text):
            raise DataError(None, "only de-identification placeholders in FINDINGS and IMPRESSION")
        return text
    cleaned = _strip_banners(report)
    headers = _headers(cleaned, style)
    if headers:
        names = ", ".join(dict.fromkeys(header.name for header in headers))
        raise DataError(None, f"no FINDINGS or IMPRESSION section (headers found: {names})")
    text = normalise_text(cleaned, style)
    if not _has_words(text):
        raise DataError(None, "empty report")
    return text


# Words after which a full stop does not end a sentence ("Dr. ___", "approx. 2 cm", "e.g. ...").
_ABBREVIATIONS = frozenset({
    "dr", "drs", "mr", "mrs", "ms", "prof", "vs", "approx", "appr", "e.g", "i.e", "eg", "ie", "cf", "fig", "no",
    "resp", "incl", "st", "sr", "jr",
})
# A list marker ("1. ", "2) ") at the text start or after whitespace, before a capital, a digit or a placeholder.
_LIST_MARKER = re.compile(r"(?:^|(?<=\s))\(?\d{1,2}[.)]\s+(?=[A-Z_(\"'])")
_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*\s+")
_SENTENCE_START = re.compile(r"[A-Z0-9_(\"'\[]")
# Stray punctuation after a sentence's end (". ." left where a phrase was redacted) belongs to no sentence.
_STRAY_PUNCTUATION = re.compile(r"(?<=[.!?])(?:\s+[.!?,;:]+)+(?=\s|$)")


def _split_on_full_stops(text: str) -> list[str]:
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        following = text[match.end():match.end() + 1]
        words_before = text[start:match.start()].split()
        last_word = words_before[-1].lower().lstrip("(\"'") if words_before else ""
        if not _SENTENCE_START.match(following) or last_word in _ABBREVIATIONS:
            continue
        if len(last_word) == 1 and last_word.isalpha() and text[match.start()] == ".":
            continue  # an initial ("J. Smith") or the "e" of a spaced "e. g."
        sentences.append(text[start:match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return sentences


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences.

    A full stop ends a sentence when whitespace and a capital letter, a digit
    or a placeholder follow it, unless it ends an abbreviation (``Dr.``,
    ``approx.``, ``e.g.``, ...) or an initial; decimals (``1.5 cm``) never
    split. Numbered-list markers (``1. ... 2. ...``) start a new sentence and
    are dropped, so a sub-caption is not prefixed with a stray number.

    Args:
        text: report text (usually :func:`usable_report`'s output).

    Returns:
        Sentences in order, stripped; none without a word.
    """
    text = _STRAY_PUNCTUATION.sub("", " ".join(text.split()))
    sentences: list[str] = []
    for item in _LIST_MARKER.split(text):
        sentences.extend(_split_on_full_stops(item))
    return [sentence for sentence in sentences if _has_words(sentence)]


def sample_subcaption_sentences(sentences: Sequence[str], max_sentences: int, generator: torch.Generator) -> list[str]:
    """A FLAIR-style sub-caption as its sentences: 1..min(k, n) of them drawn at random, in report order.

    Args:
        sentences: the report's sentences (n >= 1).
        max_sentences: k, the most sentences to keep (>= 1).
        generator: the only source of randomness, so a resumed run draws the same captions.

    Returns:
        The chosen sentences (1..k of them).

    Raises:
        ValueError: no sentences, or ``max_sentences < 1``.
    """
    if not sentences:
        raise ValueError("cannot sample a sub-caption from a report with no sentences")
    if max_sentences < 1:
        raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
    most = min(max_sentences, len(sentences))
    count = int(torch.randint(1, most + 1, (1,), generator=generator))
    chosen = torch.randperm(len(sentences), generator=generator)[:count].sort().values
    return [sentences[int(index)] for index in chosen]


def sample_subcaption(sentences: Sequence[str], max_sentences: int, generator: torch.Generator) -> str:
    """:func:`sample_subcaption_sentences` joined with single spaces (the same draws for the same generator state)."""
    return " ".join(sample_subcaption_sentences(sentences, max_sentences, generator))


def duplicate_groups(texts: Sequence[str]) -> torch.Tensor:
    """Group ids under which identical reports share one id.

    Texts are compared after whitespace normalisation, placeholder
    normalisation and case folding ("No acute process." and
    "no acute  process." are the same report).

    Args:
        texts: N report texts.

    Returns:
        ``(N,)`` int64 ids, numbered 0, 1, ... in order of first appearance.
    """
    ids: dict[str, int] = {}
    groups = [ids.setdefault(normalise_text(text).casefold(), len(ids)) for text in texts]
    return torch.tensor(groups, dtype=torch.int64)


def _hf_backend(tokenizer: Any) -> Any | None:
    """The Hugging Face tokenizer inside an open_clip ``HFTokenizer``/``SigLipTokenizer`` (or a bare one)."""
    inner = getattr(tokenizer, "tokenizer", tokenizer)
    return inner if callable(inner) and hasattr(inner, "convert_ids_to_tokens") else None


def token_lengths(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Untruncated token counts of ``texts``, special tokens included, as the tokenizer would make them.

    Works with open_clip's ``SimpleTokenizer`` (BPE via ``.encode`` plus start
    and end tokens) and with the Hugging Face tokenizers that open_clip's
    ``HFTokenizer`` and ``SigLipTokenizer`` wrap at ``.tokenizer`` (their
    special tokens; ``HFTokenizer``'s ``clips`` mode adds three).

    Args:
        tokenizer: an open_clip tokenizer (or a Hugging Face tokenizer).
        texts: N texts.

    Returns:
        ``(N,)`` int64 token counts before any truncation.

    Raises:
        TypeError: a tokenizer of neither kind.
    """
    texts = [str(text) for text in texts]
    clean: Callable[[str], str] = getattr(tokenizer, "clean_fn", None) or (lambda text: text)
    backend = _hf_backend(tokenizer)
    if backend is not None:
        if getattr(tokenizer, "tokenizer_mode", "") == "clips":
            encoded = backend([clean(text) for text in texts], add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
            return torch.tensor([len(ids) + 3 for ids in encoded], dtype=torch.int64)
        encoded = backend([clean(text) for text in texts], add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return torch.tensor([len(ids) for ids in encoded], dtype=torch.int64)
    if callable(getattr(tokenizer, "encode", None)) and hasattr(tokenizer, "sot_token_id"):
        # SimpleTokenizer.encode cleans the text itself and adds no start/end tokens.
        return torch.tensor([len(tokenizer.encode(text)) + 2 for text in texts], dtype=torch.int64)
    raise TypeError(f"cannot count tokens with a {type(tokenizer).__name__}: expected open_clip's SimpleTokenizer or HFTokenizer")


class TruncationCounter:
    """Counts reports longer than a text tower's context, for "N of M reports truncated to L tokens".

    Args:
        tokenizer: the tower's open_clip tokenizer (see :func:`token_lengths`).
        context_length: L; default the tokenizer's own ``context_length``.

    Raises:
        ValueError: no context length given and the tokenizer has none.
    """

    def __init__(self, tokenizer: Any, context_length: int | None = None):
        context_length = context_length or getattr(tokenizer, "context_length", None)
        if not context_length:
            raise ValueError("a context length is needed: pass context_length or use a tokenizer that has one")
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        self.truncated = 0
        self.total = 0

    def update(self, texts: Sequence[str]) -> torch.Tensor:
        """Count a batch of texts.

        Args:
            texts: N texts as they are given to the tokenizer.

        Returns:
            ``(N,)`` bool, True where the text does not fit the context.
        """
        over = token_lengths(self.tokenizer, texts) > self.context_length
        self.truncated += int(over.sum())
        self.total += len(over)
        return over

    def reset(self) -> None:
        """Forget every count."""
        self.truncated = 0
        self.total = 0

    def as_dict(self) -> dict[str, int]:
        """The counts for metrics.json.

        Returns:
            ``{"truncated_reports": int, "reports": int, "context_length": int}``.
        """
        return {"truncated_reports": self.truncated, "reports": self.total, "context_length": self.context_length}

    def summary(self) -> str:
        """The sentence for the run log.

        Returns:
            e.g. ``"3 of 120 reports truncated to 77 tokens"``.
        """
        return f"{self.truncated} of {self.total} reports truncated to {self.context_length} tokens"


# How a finding is named in running text: (noun phrase, "count" | "mass" | "plural", has a side).
_FINDING_NOUNS: dict[str, tuple[str, str, bool]] = {
    "nodule": ("pulmonary nodule", "count", True),
    "mass": ("mass", "count", True),
    "lung_lesion": ("lung lesion", "count", True),
    "consolidation": ("consolidation", "mass", True),
    "lung_opacity": ("opacity", "count", True),
    "opacity": ("opacity", "count", True),
    "pleural_effusion": ("pleural effusion", "count", True),
    "effusion": ("pleural effusion", "count", True),
    "pneumothorax": ("pneumothorax", "count", True),
    "atelectasis": ("atelectasis", "mass", True),
    "pneumonia": ("pneumonia", "mass", True),
    "edema": ("pulmonary edema", "mass", False),
    "fracture": ("rib fracture", "count", True),
    "pleural_other": ("pleural thickening", "mass", True),
    "support_devices": ("support devices", "plural", False),
}
# Findings a radiologist words as a statement about an organ rather than "there is X" / "no X".
_STATEMENT_PROMPTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cardiomegaly": (
        ("There is cardiomegaly.", "The heart is enlarged.", "Enlarged cardiac silhouette.", "Mild cardiomegaly.", "Moderate cardiomegaly."),
        ("No cardiomegaly.", "Heart size is normal.", "The cardiac silhouette is normal in size.", "Normal heart size."),
    ),
    "enlarged_cardiomediastinum": (
        ("The cardiomediastinal silhouette is enlarged.", "Widened mediastinum.", "Enlarged cardiomediastinal contours."),
        ("The cardiomediastinal silhouette is normal.", "Normal cardiomediastinal contours.", "No mediastinal widening."),
    ),
    "no_finding": (
        ("No acute cardiopulmonary abnormality.", "Normal chest radiograph.", "The lungs are clear.", "No acute disease."),
        ("Acute cardiopulmonary abnormality.", "Abnormal chest radiograph.", "There is an acute abnormality."),
    ),
}
_STATEMENT_PROMPTS["normal"] = _STATEMENT_PROMPTS["no_finding"]
_PROMPT_TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "count": (("There is {a} {n}.", "{A} {n} is seen.", "Findings consistent with {a} {n}.", "Small {n}.", "Large {n}."),
              ("No {n}.", "There is no {n}.", "No evidence of {n}.", "No {n} is seen.")),
    "mass": (("There is {n}.", "{N} is present.", "Findings consistent with {n}.", "Mild {n}.", "Extensive {n}."),
             ("No {n}.", "There is no {n}.", "No evidence of {n}.")),
    "plural": (("There are {n}.", "{N} are present.", "{N} are in place."),
               ("No {n}.", "There are no {n}.", "No {n} are seen.")),
}


def negation_prompts(finding: str) -> tuple[list[str], list[str]]:
    """Positive and negated prompts for zero-shot classification of one finding.

    The prompts are short report sentences ("There is a pleural effusion.",
    "Left pleural effusion." / "No pleural effusion.", "There is no pleural
    effusion."), since the text tower was trained on report text, not on
    "a photo of" captions. Known chest findings (the phantoms' and CheXpert's
    names, any case, spaces or underscores) get their usual wording; another
    name is used as an uncountable noun phrase.

    Args:
        finding: e.g. ``"pleural_effusion"``, ``"Pleural Effusion"``, ``"nodule"``.

    Returns:
        ``(positive_prompts, negative_prompts)``, each a non-empty list of str.

    Raises:
        ValueError: an empty finding name.
    """
    key = "_".join(finding.strip().lower().replace("-", " ").split())
    if not key:
        raise ValueError("a finding name is needed for zero-shot prompts")
    if key in _STATEMENT_PROMPTS:
        positives, negatives = _STATEMENT_PROMPTS[key]
        return list(positives), list(negatives)
    noun, kind, lateral = _FINDING_NOUNS.get(key, (key.replace("_", " "), "mass", False))
    article = "an" if noun[0] in "aeiou" else "a"
    fields = {"n": noun, "N": noun[:1].upper() + noun[1:], "a": article, "A": article.capitalize()}
    positive_templates, negative_templates = _PROMPT_TEMPLATES[kind]
    positives = [template.format(**fields) for template in positive_templates]
    if lateral:
        positives += [f"Right {noun}.", f"Left {noun}."]
    return positives, [template.format(**fields) for template in negative_templates]
