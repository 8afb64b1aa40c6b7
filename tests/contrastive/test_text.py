"""Report text handling: sections, placeholders, sentences, sub-captions, truncation, duplicates, prompts."""

from __future__ import annotations

import re

import open_clip
import pytest
import torch

from workbench.data.phantoms_cxr import FINDINGS, make_cxr_study
from workbench.errors import DataError
from workbench.text_tower import bundled_minilm_path
from workbench_plugins.contrastive.text import (
    PLACEHOLDER,
    TruncationCounter,
    duplicate_groups,
    extract_sections,
    negation_prompts,
    normalise_text,
    sample_subcaption,
    split_sentences,
    token_lengths,
    usable_report,
)

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // eval for pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ____

 FINDINGS:

 There is a 1.5 cm nodule in the right upper lobe,
 approx. 2 cm from the hilum.  No pleural effusion.
 Dr. ___ was notified at 10:30 a.m. on ___.

 IMPRESSION:

 1. Right upper lobe nodule.
 2. No pneumothorax.
"""
IU_REPORT = "FINDINGS: The heart is normal in size. XXXX opacity in the left base. IMPRESSION: No acute disease."


def test_mimic_sections_with_headers_on_their_own_lines():
    sections = extract_sections(MIMIC_REPORT, style="mimic")
    assert sections == {
        "findings": "There is a 1.5 cm nodule in the right upper lobe, approx. 2 cm from the hilum. No pleural effusion. "
                    "Dr. ___ was notified at 10:30 a.m. on ___.",
        "impression": "1. Right upper lobe nodule. 2. No pneumothorax.",
    }
    assert extract_sections(MIMIC_REPORT) == sections  # "auto" reads it the same way


def test_mixed_case_headers_and_other_sections_end_findings():
    report = "Indication: cough.\nFindings:\nclear lungs\nRecommendation: follow-up CT\nImpression: normal"
    assert extract_sections(report) == {"findings": "clear lungs", "impression": "normal"}
    assert usable_report(report) == "clear lungs. normal."


def test_capitals_sub_headings_stay_inside_findings():
    report = "CLINICAL INDICATION: dyspnea\nFINDINGS:\nLUNGS: Clear.\nHEART: Normal size.\nNOTIFICATION: called ___\nIMPRESSION: Normal."
    assert extract_sections(report) == {"findings": "LUNGS: Clear. HEART: Normal size.", "impression": "Normal."}
    with pytest.raises(DataError, match="headers found: LUNGS, HEART"):
        usable_report("LUNGS: Clear.\nHEART: Normal size.")


def test_iu_style_sections_on_one_line_with_xxxx_placeholder():
    assert extract_sections(IU_REPORT, style="iu") == {
        "findings": f"The heart is normal in size. {PLACEHOLDER} opacity in the left base.",
        "impression": "No acute disease.",
    }
    assert usable_report(IU_REPORT) == f"The heart is normal in size. {PLACEHOLDER} opacity in the left base. No acute disease."


def test_mimic_style_ignores_a_mid_line_header_word():
    # In MIMIC style a header starts a line; "IMPRESSION:" inside a sentence is text.
    report = "FINDINGS: Lungs clear, see IMPRESSION: below."
    assert extract_sections(report, style="mimic") == {"findings": "Lungs clear, see IMPRESSION: below."}
    assert extract_sections(report, style="iu") == {"findings": "Lungs clear, see", "impression": "below."}


def test_usable_report_of_mimic_keeps_one_placeholder_token():
    text = usable_report(MIMIC_REPORT)
    assert text.startswith("There is a 1.5 cm nodule")
    assert text.endswith("1. Right upper lobe nodule. 2. No pneumothorax.")
    assert "INDICATION" not in text and "cough" not in text
    assert text.count(PLACEHOLDER) == 2 and "____" not in text
    assert "\n" not in text and "  " not in text


def test_plain_paragraph_is_used_whole():
    report = "  The lungs are clear.\n  No effusion or pneumothorax.  "
    assert extract_sections(report) == {}
    assert usable_report(report) == "The lungs are clear. No effusion or pneumothorax."
    assert usable_report("FINAL REPORT\nHeart size normal. Lungs clear.") == "Heart size normal. Lungs clear."
    assert extract_sections(report, style="plain") == {"findings": "The lungs are clear. No effusion or pneumothorax."}


@pytest.mark.parametrize(("report", "reason"), [
    ("", "empty report"),
    (" \n\t ", "empty report"),
    ("...", "empty report"),
    ("EXAMINATION: chest\nINDICATION: cough", "no FINDINGS or IMPRESSION section (headers found: EXAMINATION, INDICATION)"),
    ("FINDINGS:\n\nIMPRESSION:\n", "no FINDINGS or IMPRESSION section"),
    ("___ ____. ___", "only de-identification placeholders"),
    ("XXXX. XXXX XXXX.", "only de-identification placeholders"),
    ("INDICATION: cough.\nFINDINGS: ___\nIMPRESSION: XXXX.", "only de-identification placeholders"),
])
def test_unusable_reports_raise_data_error_with_reason(report, reason):
    with pytest.raises(DataError) as caught:
        usable_report(report)
    assert caught.value.path is None
    assert reason in caught.value.reason


def test_placeholder_runs_become_one_token():
    assert normalise_text("seen on ____ by  ___\nand XXXX-XXXX", style="auto") == "seen on ___ by ___ and ___-___"
    assert normalise_text("XXXX", style="mimic") == "XXXX"  # MIMIC has no XXXX placeholder
    assert normalise_text("x-ray ___", style="iu") == "x-ray ___"


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="style"):
        extract_sections("FINDINGS: x", style="chexpert")


def test_sentences_survive_abbreviations_decimals_and_numbered_lists():
    text = ("There is a 1.5 cm nodule, approx. 2 cm from the hilum, e.g. in the apex. Dr. ___ was notified at 10:30 a.m. on ___. "
            "Compare with prior, i.e. ___. 3 small nodules are seen! Is there an effusion? IMPRESSION 1. Right nodule. 2. No pneumothorax.")
    assert split_sentences(text) == [
        "There is a 1.5 cm nodule, approx. 2 cm from the hilum, e.g. in the apex.",
        "Dr. ___ was notified at 10:30 a.m. on ___.",
        "Compare with prior, i.e. ___.",
        "3 small nodules are seen!",
        "Is there an effusion?",
        "IMPRESSION",
        "Right nodule.",
        "No pneumothorax.",
    ]


def test_sentences_have_no_empty_or_wordless_items():
    assert split_sentences("  ") == []
    assert split_sentences("No effusion.  .  ___. Lungs clear.\n\n") == ["No effusion.", "Lungs clear."]
    assert split_sentences("Level of T12. No fracture.") == ["Level of T12.", "No fracture."]


def test_phantom_reports_split_into_their_sentences():
    report = make_cxr_study(3, seed=0, size=256).report
    sentences = split_sentences(usable_report(report))
    assert len(sentences) >= 3
    assert all(sentence[-1] in ".!?" for sentence in sentences)
    # every word of the report is in exactly one sentence, list markers ("1. ") aside
    assert " ".join(sentences) == re.sub(r"(?<![\w.])\d\. ", "", usable_report(report))


def test_subcaption_is_deterministic_and_within_bounds():
    sentences = ["S0.", "S1.", "S2.", "S3.", "S4."]
    generator_a, generator_b = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    draws_a = [sample_subcaption(sentences, 3, generator_a) for _ in range(300)]
    draws_b = [sample_subcaption(sentences, 3, generator_b) for _ in range(300)]
    assert draws_a == draws_b
    counts = set()
    for caption in draws_a:
        chosen = caption.split(" ")
        assert 1 <= len(chosen) <= 3
        assert chosen == sorted(chosen, key=sentences.index)  # report order kept
        assert len(set(chosen)) == len(chosen)
        counts.add(len(chosen))
    assert counts == {1, 2, 3}
    assert len(set(draws_a)) > 15  # many subsets drawn, not a fixed one
    assert sample_subcaption(["Only."], 4, torch.Generator().manual_seed(0)) == "Only."


def test_subcaption_uses_only_the_given_generator():
    sentences = [f"S{i}." for i in range(8)]
    torch.manual_seed(0)
    first = sample_subcaption(sentences, 4, torch.Generator().manual_seed(5))
    torch.manual_seed(123)
    assert sample_subcaption(sentences, 4, torch.Generator().manual_seed(5)) == first


def test_subcaption_refuses_bad_input():
    with pytest.raises(ValueError):
        sample_subcaption([], 2, torch.Generator())
    with pytest.raises(ValueError):
        sample_subcaption(["A."], 0, torch.Generator())


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return open_clip.tokenizer.HFTokenizer(str(bundled_minilm_path()), context_length=16)


TEXTS = [
    "No acute cardiopulmonary process.",
    "There is a small right-sided pneumothorax. There is no consolidation. No acute osseous abnormality. Heart size is normal.",
    "The lungs are clear.",
]


def test_token_lengths_of_minilm_match_its_untruncated_tokenization(minilm_tokenizer):
    lengths = token_lengths(minilm_tokenizer, TEXTS)
    assert lengths.tolist() == [12, 34, 7]
    wide = open_clip.tokenizer.HFTokenizer(str(bundled_minilm_path()), context_length=64)(TEXTS)
    assert (wide != 0).sum(dim=1).tolist() == lengths.tolist()


def test_token_lengths_of_simple_tokenizer_match_its_untruncated_tokenization():
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    lengths = token_lengths(tokenizer, TEXTS)
    assert lengths.tolist() == [10, 33, 7]
    wide = open_clip.tokenizer.SimpleTokenizer(context_length=77)(TEXTS)
    assert (wide != 0).sum(dim=1).tolist() == lengths.tolist()


def test_truncation_counter_counts_reports_over_the_context(minilm_tokenizer):
    counter = TruncationCounter(minilm_tokenizer)
    assert counter.context_length == 16
    assert counter.update(TEXTS).tolist() == [False, True, False]
    assert counter.update(TEXTS[:1]).tolist() == [False]
    assert counter.summary() == "1 of 4 reports truncated to 16 tokens"
    assert counter.as_dict() == {"truncated_reports": 1, "reports": 4, "context_length": 16}
    tight = TruncationCounter(open_clip.tokenizer.SimpleTokenizer(context_length=77), context_length=10)
    assert tight.update(TEXTS).tolist() == [False, True, False]  # exactly 10 tokens fits a context of 10
    tight.reset()
    assert tight.summary() == "0 of 0 reports truncated to 10 tokens"


def test_token_lengths_refuses_an_unknown_tokenizer():
    with pytest.raises(TypeError, match="SimpleTokenizer or HFTokenizer"):
        token_lengths(str.split, ["a b"])


def test_duplicate_groups_share_ids_for_identical_normalised_reports():
    groups = duplicate_groups(["No acute process.", "no acute  process.", "Small effusion.", "No acute process.", "Seen by ___.", "Seen by XXXX."])
    assert groups.dtype == torch.int64
    assert groups.tolist() == [0, 0, 1, 0, 2, 2]
    assert duplicate_groups([]).shape == (0,)


def test_duplicate_groups_on_phantom_reports_find_the_stock_normal_reports():
    texts = [usable_report(make_cxr_study(index, seed=0, size=256).report) for index in range(60)]
    groups = duplicate_groups(texts)
    assert groups.shape == (60,)
    for i in range(60):
        for j in range(60):
            assert (groups[i] == groups[j]) == (" ".join(texts[i].lower().split()) == " ".join(texts[j].lower().split()))
    assert len(set(groups.tolist())) < 60  # the phantoms' stock normal reports repeat


@pytest.mark.parametrize("finding", FINDINGS)
def test_negation_prompts_for_every_phantom_finding(finding):
    positives, negatives = negation_prompts(finding)
    assert len(positives) >= 3 and len(negatives) >= 3
    assert all(prompt[0].isupper() and prompt.endswith(".") for prompt in positives + negatives)
    assert not set(positives) & set(negatives)
    assert any(prompt.lower().startswith("no ") for prompt in negatives)
    assert not any(prompt.lower().startswith("no ") for prompt in positives)


def test_negation_prompts_wording():
    positives, negatives = negation_prompts("Pleural Effusion")
    assert "There is a pleural effusion." in positives and "Left pleural effusion." in positives
    assert negatives[:2] == ["No pleural effusion.", "There is no pleural effusion."]
    positives, negatives = negation_prompts("cardiomegaly")
    assert "The heart is enlarged." in positives and "Heart size is normal." in negatives
    assert negation_prompts("granuloma") == (
        ["There is granuloma.", "Granuloma is present.", "Findings consistent with granuloma.", "Mild granuloma.", "Extensive granuloma."],
        ["No granuloma.", "There is no granuloma.", "No evidence of granuloma."],
    )
    with pytest.raises(ValueError):
        negation_prompts("  ")
