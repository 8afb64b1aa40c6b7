"""Dataset builder "covid-chestxray": the COVID-19 chest X-ray collection (Cohen et al. 2020) read in place.

Layout: ``metadata.csv`` (one row per image: ``patientid``, ``finding``,
``view``, ``modality``, ``clinical_notes``, ``filename``, ...) and
``images/<filename>``. Its text is not a radiology report but a case
narrative: history, dates and lab values around a sentence or two on the
radiograph. A text tower with a short context (64 or 77 tokens) would see only
the history, so the report-text layer here puts the imaging sentences first
(:func:`imaging_first`) and can cut the text at whole sentences to fit the
tower's context, counting what it cut.

The collection has no split and several images per patient, and a few cases
appear under two patient ids with the same image files; records are split by
patient, with patients that share an image file kept together
(:mod:`workbench.data.splits`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal, Sequence

from workbench.data.skipped import SkippedRecords
from workbench.data.splits import UnionGroups, grouped_splits
from workbench.errors import ConfigError, DataError
from workbench_plugins.contrastive.builders import _read_rows, _skip
from workbench_plugins.contrastive.text import split_sentences, token_lengths

logger = logging.getLogger("workbench.contrastive")

COVID_METADATA = "metadata.csv"
COVID_COLUMNS = ("patientid", "finding", "view", "modality", "clinical_notes", "filename")
COVID_LABEL = "covid_19"
REPORT_TEXT_FORMS = ("imaging-first", "all")
# Words only a sentence about the image uses (a finding or the imaging test itself).
_IMAGING_WORDS = re.compile(
    r"\b(?:x-?rays?|radiograph\w*|radiolog\w*|chest films?|cxr|ct|computed tomography|opacit\w*|consolidat\w*|infiltrat\w*|"
    r"ground[- ]glass|ggos?|effusions?|nodul\w*|atelecta\w*|pneumothora\w*|cardiomegaly|interstitial|reticul\w*|air-?space|"
    r"shadows?|cavit\w*)\b",
    re.IGNORECASE,
)
# Words of anatomy: imaging when the sentence is not a history ("lung cancer" in "a 65-year-old man with ...").
_ANATOMY_WORDS = re.compile(
    r"\b(?:lungs?|lobes?|lobar|pleura\w*|hil(?:ar|um)|perihilar|silhouette|mediastin\w*|zones?|bilateral\w*|fissures?|"
    r"costophrenic|diaphragm\w*|trachea\w*)\b",
    re.IGNORECASE,
)
_HISTORY_WORDS = re.compile(
    r"\b(?:\d+[- ]years?[- ]old|history|admitted|admission|presented|fever|temperature|"
    r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? \d+|\d+ ?(?:mg|mmol|g/dl|u/l|mm ?hg))",
    re.IGNORECASE,
)
# A full stop glued to the next sentence ("bilaterally.Subpleural"), common in these notes.
_GLUED_STOP = re.compile(r"(?<=[a-z]{2})\.(?=[A-Z][a-z])")
# A sentence ending in a number after a word ("since January 17. His CRP ..."): split_sentences would read
# "17." as a list marker and drop it, so the note is cut there first.
_NUMBER_END = re.compile(r"(?:(?<=[a-z] \d\.)|(?<=[a-z] \d\d\.))\s+(?=[A-Z])")


def is_imaging_sentence(sentence: str) -> bool:
    """Whether a sentence speaks about the image: it names a finding or the imaging test, or anatomy outside a history.

    ``"Chest radiograph showed an infiltrate."`` and ``"Both lungs are clear."`` are imaging;
    ``"A 65-year-old man with lung cancer was admitted."`` is not.
    """
    if _IMAGING_WORDS.search(sentence):
        return True
    return bool(_ANATOMY_WORDS.search(sentence)) and not _HISTORY_WORDS.search(sentence)


def note_sentences(notes: str) -> list[str]:
    """The sentences of a clinical note (glued full stops split, whitespace normalised)."""
    return [sentence for part in _NUMBER_END.split(_GLUED_STOP.sub(". ", notes)) for sentence in split_sentences(part)]


def imaging_first(sentences: Sequence[str]) -> list[str]:
    """The imaging sentences in note order, then the others in note order.

    Example: ``["A 65-year-old man with fever.", "Chest radiograph showed a left upper lobe infiltrate."]``
    -> the radiograph sentence first.
    """
    imaging = [sentence for sentence in sentences if is_imaging_sentence(sentence)]
    return imaging + [sentence for sentence in sentences if not is_imaging_sentence(sentence)]


def fit_sentences(sentence_tokens: Sequence[int], special_tokens: int, context_length: int) -> int:
    """How many leading sentences fit ``context_length`` tokens when joined with spaces.

    A WordPiece tokenizer splits at whitespace first, so the joined text's
    length is the sum of the sentences' lengths without their special tokens,
    plus the special tokens once. The first sentence is always kept (the tower
    truncates it if it alone is too long).

    Args:
        sentence_tokens: each sentence's token count, special tokens included, in the order kept.
        special_tokens: the special tokens one text carries (2 for MiniLM: ``[CLS]``, ``[SEP]``).
        context_length: the text tower's context in tokens.

    Returns:
        The number of sentences to keep (>= 1 when there is any sentence).
    """
    total, kept = special_tokens, 0
    for length in sentence_tokens:
        total += int(length) - special_tokens
        if total > context_length:
            break
        kept += 1
    return max(kept, min(1, len(sentence_tokens)))


def _minilm_token_counter(context_length: int) -> tuple[Any, int]:
    """Token counts as the default MiniLM text tower's tokenizer makes them (read offline), and its special-token count."""
    import open_clip

    from workbench.text_tower import bundled_minilm_path

    tokenizer = open_clip.tokenizer.HFTokenizer(str(bundled_minilm_path()), context_length=context_length)
    return (lambda texts: [int(length) for length in token_lengths(tokenizer, texts)]), int(token_lengths(tokenizer, [""])[0])


def _patient_groups(rows: Sequence[tuple[int, dict[str, str]]]) -> dict[str, Any]:
    """patientid -> its group: patients who share an image file are one group."""
    groups = UnionGroups()
    for _, row in rows:
        if row["patientid"]:
            groups.join(f"patient:{row['patientid']}", f"file:{row['filename']}" if row["filename"] else f"patient:{row['patientid']}")
    return {row["patientid"]: groups.find(f"patient:{row['patientid']}") for _, row in rows if row["patientid"]}


def build_covid_chestxray(
    root: Path,
    *,
    report_text: Literal["imaging-first", "all"] = "imaging-first",
    context_length: int | None = None,
    modalities: str | Sequence[str] = ("X-ray",),
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    skipped: SkippedRecords | None = None,
) -> list[dict[str, Any]]:
    """Records of the COVID-19 chest X-ray collection: one per X-ray row of ``metadata.csv``.

    The report is the row's ``clinical_notes``: with ``report_text="imaging-first"``
    the sentences about the image come first, then the rest, in note order;
    ``"all"`` keeps the note's own order. With ``context_length`` the text is
    cut at whole sentences to fit that many tokens of the default MiniLM text
    tower's tokenizer; each record says how many sentences it lost
    (``report_sentences_dropped``) and the total is logged. Without it the
    text is whole (the pretraining job counts what its tower truncates).

    Splits are by patient (patients sharing an image file count as one),
    seeded, about ``val_fraction`` and ``test_fraction`` of the records; they
    are drawn over every row of the chosen modalities before any is skipped,
    so a missing file moves no other patient.

    A row with empty ``clinical_notes``, no ``patientid`` or ``filename``, or
    a missing image file is skipped and listed; rows of other modalities (CT)
    are left out silently.

    Args:
        root: the folder holding ``metadata.csv`` and ``images/``.
        report_text: ``"imaging-first"`` or ``"all"``.
        context_length: the text tower's context in tokens, or ``None`` to keep all text.
        modalities: the ``modality`` values kept.
        val_fraction: share of records (by patient) for ``val``.
        test_fraction: share of records (by patient) for ``test``.
        seed: the split's seed.
        skipped: collects the rows skipped, with their reasons.

    Returns:
        Records ``{"id", "image", "report", "label", "labels", "finding", "view",
        "patientid", "modality", "split", "report_sentences_dropped"}``; ``label``
        is 1 for a COVID-19 finding (``"COVID-19"``, ``"COVID-19, ARDS"``) and 0 for any
        other (other pneumonias, ``"No Finding"``); ``labels`` is ``{"covid_19": label}``.

    Raises:
        DataError: ``metadata.csv`` is missing or lacks its columns.
        ConfigError: an unknown ``report_text``, a ``context_length`` below 8, or bad split shares.
    """
    if report_text not in REPORT_TEXT_FORMS:
        raise ConfigError(f"covid-chestxray report_text must be one of {', '.join(REPORT_TEXT_FORMS)}; got {report_text!r}")
    if context_length is not None and int(context_length) < 8:
        raise ConfigError(f"covid-chestxray context_length must be >= 8 tokens, got {context_length}")
    root = Path(root).absolute()
    metadata = root / COVID_METADATA
    if not metadata.is_file():
        raise DataError(metadata, "missing: the covid-chestxray layout is metadata.csv beside images/")
    keep_modalities = {modalities} if isinstance(modalities, str) else set(modalities)
    rows = [(line, row) for line, row in _read_rows(metadata, COVID_COLUMNS) if row["modality"] in keep_modalities]
    group_of = _patient_groups(rows)
    sizes: dict[Any, int] = {}
    for group in (group_of[row["patientid"]] for _, row in rows if row["patientid"]):
        sizes[group] = sizes.get(group, 0) + 1
    split_of_group = grouped_splits(sizes, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    counter, special_tokens = _minilm_token_counter(int(context_length)) if context_length is not None else (None, 0)

    noted = []
    for line, row in rows:
        patient, filename = row["patientid"], row["filename"]
        record_id = f"p{patient}-{Path(filename).stem}" if patient and filename else f"{metadata.name}-{line}"
        if not patient or not filename:
            _skip(skipped, record_id, metadata, f"line {line}: empty patientid or filename")
            continue
        image = root / "images" / filename
        if not image.is_file():
            _skip(skipped, record_id, image, "image file missing")
            continue
        sentences = note_sentences(row["clinical_notes"])
        if not sentences:
            _skip(skipped, record_id, metadata, f"line {line}: empty clinical_notes")
            continue
        noted.append((record_id, image, row, imaging_first(sentences) if report_text == "imaging-first" else sentences))
    # one tokenizer call for every sentence: a call per note costs more than the tokenizing
    lengths = iter(counter([sentence for *_, sentences in noted for sentence in sentences])) if counter is not None else None
    records, cut_records, dropped_total = [], 0, 0
    for record_id, image, row, sentences in noted:
        dropped = 0
        if lengths is not None:
            kept = fit_sentences([next(lengths) for _ in sentences], special_tokens, int(context_length))
            sentences, dropped = sentences[:kept], len(sentences) - kept
            cut_records += dropped > 0
            dropped_total += dropped
        label = int("covid-19" in {part.strip().lower() for part in row["finding"].split(",")})
        records.append({"id": record_id, "image": str(image), "report": " ".join(sentences), "label": label,
                        "labels": {COVID_LABEL: label}, "finding": row["finding"], "view": row["view"], "patientid": row["patientid"],
                        "modality": row["modality"], "split": split_of_group[group_of[row["patientid"]]], "report_sentences_dropped": dropped})
    if counter is not None:
        logger.info("covid-chestxray: %d of %d notes cut to %d tokens (%d sentences dropped)", cut_records, len(records),
                    int(context_length), dropped_total)
    return records
