"""Sentence verdicts: labels from known errors and from aligned priors, token spans, reconciling the decoder's edit, the head learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench_plugins.reporting.corrupt import Corruption, corrupt_report
from workbench_plugins.reporting.datasets import EditDataset, EditPair
from workbench_plugins.reporting.findings import Sentence, join_report, report_sentences
from workbench_plugins.reporting.generate import edit_reports
from workbench_plugins.reporting.models import ReportDecoder, verdict_loss
from workbench_plugins.reporting.verdicts import (
    DELETE, IGNORE, KEEP, REWRITE, draft_verdicts, reconcile, sentence_spans, sentence_verdicts, token_verdict_labels,
)
from workbench_plugins.reporting.vocab import ReportVocabulary

TRUTH = ("FINDINGS: There is a small left pneumothorax. The lungs are otherwise clear. No pleural effusion.\n\n"
         "IMPRESSION: Small left pneumothorax.")
LABELS = {"pneumothorax": 1, "pleural_effusion": 0, "cardiomegaly": 0, "nodule": 0, "consolidation": 0}
FINDINGS = list(LABELS)


def _vocab() -> ReportVocabulary:
    return ReportVocabulary.from_texts([TRUTH, "There is a large right pleural effusion. moderate cardiomegaly"])


@pytest.mark.parametrize("kind, expected", [("laterality", REWRITE), ("size", REWRITE), ("invent", DELETE)])
def test_known_corruptions_mark_exactly_the_touched_sentence(kind, expected):
    corruption = corrupt_report(TRUTH, LABELS, FINDINGS, np.random.default_rng(3), kinds=(kind,))
    assert corruption.kind == kind
    verdicts = draft_verdicts(corruption)
    sentences = report_sentences(corruption.draft)
    touched = [i for i, s in enumerate(sentences) if s.text == corruption.draft_sentence]
    assert [i for i, v in enumerate(verdicts) if v != KEEP] == touched[:1]
    assert verdicts[touched[0]] == expected


def test_a_drop_or_an_intact_draft_keeps_every_sentence():
    dropped = corrupt_report(TRUTH, LABELS, FINDINGS, np.random.default_rng(0), kinds=("drop",))
    assert set(draft_verdicts(dropped)) == {KEEP}
    assert set(draft_verdicts(Corruption("none", TRUTH, TRUTH))) == {KEEP}


def test_prior_drafts_are_labelled_by_aligning_them_with_the_truth():
    prior = ("FINDINGS: There is a large left pneumothorax. The lungs are otherwise clear. Moderate cardiomegaly is present.\n\n"
             "IMPRESSION: Small left pneumothorax.")
    verdicts = draft_verdicts(Corruption("prior", prior, TRUTH))
    # size changed -> rewrite; copied sentences -> keep; a finding the truth lacks -> delete
    assert verdicts == [REWRITE, KEEP, DELETE, KEEP]


def test_token_labels_cover_each_sentence_span_and_ignore_headers_and_specials():
    vocab = _vocab()
    corruption = corrupt_report(TRUTH, LABELS, FINDINGS, np.random.default_rng(1), kinds=("laterality",))
    encoded = vocab.encode(corruption.draft, bos=True, eos=True)
    labels = token_verdict_labels(vocab, corruption, len(encoded.ids))
    sentences = report_sentences(corruption.draft)
    spans = sentence_spans(vocab, corruption.draft, sentences)
    assert all(span is not None for span in spans)
    for span, sentence in zip(spans, sentences):  # each span decodes back to its sentence
        assert vocab.decode(encoded.extended[span[0]: span[1]], encoded.oov) == vocab.normalise(sentence.text)
    assert labels[0] == IGNORE and labels[-1] == IGNORE  # [CLS], [SEP]
    header = vocab.wordpieces("FINDINGS:")
    assert labels[1: 1 + len(header)] == [IGNORE] * len(header)
    rewritten = [i for i, label in enumerate(labels) if label == REWRITE]
    assert vocab.decode([encoded.extended[i] for i in rewritten]) == vocab.normalise(corruption.draft_sentence)
    cut = sentence_spans(vocab, corruption.draft, sentences, max_tokens=spans[0][1] + 1)  # room for the first sentence
    assert cut[0] == spans[0] and cut[1:] == [None] * (len(spans) - 1)  # sentences past the token limit have no span


def test_sentence_verdict_is_the_best_mean_log_probability_over_its_span():
    log_probs = torch.log(torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.1, 0.7], [0.3, 0.1, 0.6], [0.1, 0.8, 0.1]]))
    verdicts, keep = sentence_verdicts(log_probs, [(0, 1), (1, 3), (3, 4), None, (3, 9)])
    assert verdicts == [KEEP, REWRITE, DELETE, KEEP, KEEP]
    means = torch.log(torch.tensor([[0.2, 0.1, 0.7], [0.3, 0.1, 0.6]])).mean(0)
    assert keep[0] == pytest.approx(0.9 / (0.9 + 0.05 + 0.05)) and keep[1] == pytest.approx(float(means.softmax(-1)[0]))
    assert keep[3] == keep[4] == 1.0


def _sentences(*texts: str, impression: str = "Small left pneumothorax.") -> list[Sentence]:
    return [Sentence("findings", t) for t in texts] + [Sentence("impression", impression)]


def test_reconcile_keeps_deletes_rewrites_and_adds_as_the_verdicts_say():
    draft = _sentences("There is a small right pneumothorax.", "The lungs are otherwise clear.",
                       "There is a large left pleural effusion.")
    # the decoder fixed the side, but also garbled a correct sentence and the impression, and kept the invented effusion
    decoded = _sentences("There is a small left pneumothorax.", "The lungs are clear.", "There is a large left pleural effusion.",
                         impression="Small right pneumothorax.")
    edited = reconcile(draft, [REWRITE, KEEP, DELETE, KEEP], decoded)
    assert [s.text for s in edited] == ["There is a small left pneumothorax.", "The lungs are otherwise clear.", "Small left pneumothorax."]
    # all kept: the decoder's changes are all refused
    assert reconcile(draft, [KEEP] * 4, decoded) == draft
    # a rewrite the decoder did not make leaves the sentence as it was
    assert reconcile(draft, [REWRITE, KEEP, KEEP, KEEP], draft) == draft
    # a doubtful keep (p below the threshold) follows the decoder where it changed the sentence, a confident one does not
    followed = reconcile(draft, [KEEP] * 4, decoded, keep_probabilities=[0.4, 0.95, 0.4, 0.4], follow_below=0.5)
    assert [s.text for s in followed] == ["There is a small left pneumothorax.", "The lungs are otherwise clear.",
                                          "There is a large left pleural effusion.", "Small right pneumothorax."]
    dropped = _sentences("There is a small right pneumothorax.", "The lungs are clear.")
    assert [s.text for s in reconcile(draft, [KEEP] * 4, dropped, keep_probabilities=[1.0, 1.0, 0.3, 1.0])] == [
        "There is a small right pneumothorax.", "The lungs are otherwise clear.", "Small left pneumothorax."]


def test_reconcile_adds_a_missing_positive_finding_at_the_end_of_findings_once():
    draft = _sentences("The lungs are otherwise clear.", impression="Moderate cardiomegaly.")
    decoded = _sentences("Moderate cardiomegaly is present.", "The lungs are otherwise clear.", "No pleural effusion.",
                         "Moderate cardiomegaly is present.", impression="Moderate cardiomegaly.")
    edited = reconcile(draft, [KEEP, KEEP], decoded)
    assert [(s.section, s.text) for s in edited] == [("findings", "The lungs are otherwise clear."),
                                                     ("findings", "Moderate cardiomegaly is present."),
                                                     ("impression", "Moderate cardiomegaly.")]
    # a finding whose sentence was deleted as invented is not added back in another wording
    invented = _sentences("The lungs are otherwise clear.", "There is a small left pneumothorax.", impression="No acute process.")
    decoded = _sentences("The lungs are otherwise clear.", "There is a large left pneumothorax.", impression="No acute process.")
    assert [s.text for s in reconcile(invented, [KEEP, DELETE, KEEP], decoded)] == ["The lungs are otherwise clear.", "No acute process."]
    assert reconcile([], [], decoded) == decoded  # an empty draft: the decoder's report


def test_a_verdict_head_learns_to_tell_the_corrupted_sentence_and_the_editor_keeps_the_rest():
    torch.manual_seed(0)
    vocab = _vocab()
    rng = np.random.default_rng(0)
    pairs = [EditPair(0, corrupt_report(TRUTH, LABELS, FINDINGS, rng, kinds=("laterality", "invent"))) for _ in range(24)]
    pairs += [EditPair(0, Corruption("none", join_report(report_sentences(TRUTH)), join_report(report_sentences(TRUTH))))] * 8
    tokens, pooled = torch.randn(1, 4, 8), torch.randn(1, 6)
    dataset = EditDataset(pairs, tokens, pooled, vocab, 64, 64, verdicts=True)
    assert dataset[0]["verdict_labels"].shape == dataset[0]["draft_ids"].shape
    model = ReportDecoder(vocab.wordpiece_ids, token_dim=8, pooled_dim=6, image_tokens=4, width=32, layers=1, heads=2, ffn=2,
                          dropout=0.0, max_length=64, copy=True, draft_layers=1, verdict=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = {key: torch.stack([dataset[i][key] for i in range(len(dataset))]) for key in dataset[0]}
    first = None
    for _ in range(120):
        memory = model.encode(batch["tokens"], batch["pooled"], batch["draft_ids"], batch["draft_extended"])
        loss = verdict_loss(model.verdict_logits(memory), batch["verdict_labels"])
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.1 * first
    model.eval()
    drafts = [pair.corruption.draft for pair in pairs]
    edits = edit_reports(model, vocab, tokens.expand(len(pairs), -1, -1), pooled.expand(len(pairs), -1), drafts, max_new_tokens=8,
                         follow_below=0.0)  # the verdicts alone: no "keep" sentence follows the decoder
    for pair, edit in zip(pairs, edits):
        expected = ["delete" if pair.corruption.kind == "invent" and s.text == pair.corruption.draft_sentence else
                    "rewrite" if pair.corruption.kind == "laterality" and s.text == pair.corruption.draft_sentence else "keep"
                    for s in report_sentences(pair.corruption.draft)]
        assert list(edit.verdicts) == expected
        # the untrained decoder writes rubbish, yet every sentence judged correct is in the edit unchanged
        kept = [s.text for s, v in zip(report_sentences(pair.corruption.draft), edit.verdicts) if v == "keep"]
        assert all(text in [s.text for s in report_sentences(edit.text)] for text in kept)
        if pair.corruption.kind == "invent":
            assert pair.corruption.draft_sentence not in edit.text
    with pytest.raises(Exception, match="editor only"):
        ReportDecoder(vocab.wordpiece_ids, token_dim=8, pooled_dim=6, image_tokens=4, width=32, copy=False, verdict=True)



def test_verdict_loss_weights_the_rare_classes_and_ignores_unlabelled_tokens():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[KEEP, DELETE, KEEP, IGNORE]])
    nll = -torch.log_softmax(logits[0, :3], -1)[torch.arange(3), labels[0, :3]]
    assert float(verdict_loss(logits, labels)) == pytest.approx(float(nll.mean()))
    weights = torch.tensor([1.0, 3.0, 1.0])  # keep, delete, keep
    assert float(verdict_loss(logits, labels, [1.0, 3.0, 2.0])) == pytest.approx(float((nll * weights).sum() / weights.sum()))
    assert float(verdict_loss(logits, torch.full_like(labels, IGNORE))) == 0.0
