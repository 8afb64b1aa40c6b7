"""Decoding and the copy mechanism: beam search finds the best sequence, the editor copies a word its generator lacks, a tiny model learns."""

from __future__ import annotations

import itertools

import pytest
import torch

from workbench_plugins.reporting.datasets import ExplainDataset, drop_images
from workbench_plugins.reporting.decoding import beam_search, decoder_step, greedy_decode, uncached_step
from workbench_plugins.reporting.generate import edit_reports, explain
from workbench_plugins.reporting.models import ReportDecoder, sequence_loss, weighted_sequence_loss
from workbench_plugins.reporting.questions import QuestionItem
from workbench_plugins.reporting.vocab import ReportVocabulary

EOS = 3


def _table_step(table: dict[tuple[int, ...], list[float]], vocab: int):
    """A next-token model given as a table: generated suffix -> next-token probabilities (absent: all on EOS)."""
    def step(prefixes: torch.Tensor) -> torch.Tensor:
        rows = []
        for prefix in prefixes.tolist():
            probabilities = table.get(tuple(prefix[1:]), [0.0] * EOS + [1.0] + [0.0] * (vocab - EOS - 1))
            rows.append(torch.log(torch.tensor(probabilities) + 1e-12))
        return torch.stack(rows)

    return step


def _best_by_enumeration(table, vocab, max_len):
    step = _table_step(table, vocab)
    best, best_score = None, -float("inf")
    for length in range(1, max_len + 1):
        for tokens in itertools.product(range(vocab), repeat=length):
            if EOS in tokens[:-1] or (tokens[-1] != EOS and length < max_len):
                continue
            score = sum(float(step(torch.tensor([[2, *tokens[:i]]]))[0, tokens[i]]) for i in range(length))
            if score > best_score:
                best, best_score = tokens, score
    return best, best_score


def test_beam_search_returns_the_highest_scoring_sequence_where_greedy_does_not():
    vocab = 6
    # greedy takes token 4 (0.6) but every continuation after it is poor; 5 (0.4) leads to a sure end.
    table = {(): [0, 0, 0, 0, 0.6, 0.4], (4,): [0, 0, 0, 0.3, 0.35, 0.35], (5,): [0, 0, 0, 1.0, 0, 0],
             (4, 4): [0, 0, 0, 0.5, 0.25, 0.25], (4, 5): [0, 0, 0, 0.5, 0.25, 0.25]}
    step = _table_step(table, vocab)
    start = torch.tensor([2])
    expected, expected_score = _best_by_enumeration(table, vocab, max_len=4)
    found = beam_search(step, start, beam_size=2, max_new_tokens=4, eos=EOS)
    assert found.tokens == expected == (5, EOS)
    assert found.score == pytest.approx(expected_score, abs=1e-5)
    greedy, greedy_score = greedy_decode(step, start[None], max_new_tokens=4, eos=EOS)
    assert greedy[0, 0].item() == 4 and float(greedy_score[0]) < expected_score
    # the length limit ends a hypothesis that never emits EOS
    loop = {(): [0, 0, 0, 0, 1.0, 0], (4,): [0, 0, 0, 0, 1.0, 0], (4, 4): [0, 0, 0, 0, 1.0, 0]}
    assert beam_search(_table_step(loop, vocab), start, beam_size=3, max_new_tokens=3, eos=EOS).tokens == (4, 4, 4)


def _editor(vocab: ReportVocabulary, width: int = 32) -> ReportDecoder:
    torch.manual_seed(0)
    return ReportDecoder(vocab.wordpiece_ids, token_dim=8, pooled_dim=6, image_tokens=4, width=width, layers=1, heads=2, ffn=2,
                         dropout=0.0, max_length=32, copy=True, draft_layers=1).eval()


def test_copy_mechanism_copies_a_draft_word_the_generator_cannot_write():
    vocab = ReportVocabulary.from_texts(["there is a small left pneumothorax."])
    editor = _editor(vocab)
    draft = vocab.encode("zebra zebra zebra", bos=True, eos=True)
    assert draft.oov and all(i == vocab.unk for i in draft.ids[1:-1])  # "zebra" is outside the generator vocabulary
    with torch.no_grad():  # gate shut (p_gen ~ 0) and a flat copy attention: the draft's own tokens are all it can write
        editor.copy_gate.weight.zero_()
        editor.copy_gate.bias.fill_(-30.0)
        editor.copy_query.weight.zero_()
        editor.copy_query.bias.zero_()
    tokens, pooled = torch.randn(1, 4, 8), torch.randn(1, 6)
    memory = editor.encode(tokens, pooled, torch.tensor([draft.ids]), torch.tensor([draft.extended]))
    log_probs = editor.decode(memory, torch.tensor([[vocab.bos]]), extra_vocab=len(draft.oov))[0, -1]
    probabilities = log_probs.exp()
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-4)
    zebra_pieces = sorted(set(draft.extended[1:-1]))
    assert probabilities[zebra_pieces].sum().item() == pytest.approx((len(draft.ids) - 2) / len(draft.ids), abs=1e-3)
    assert int(log_probs.argmax()) >= len(vocab)  # the most likely next token is a copied out-of-vocabulary piece
    edited = edit_reports(editor, vocab, tokens, pooled, ["zebra zebra zebra"], max_new_tokens=4)[0]
    assert "zebra" in edited.text or "z" in edited.text.split()[0]
    assert edited.truncated_tokens == 0 and not edited.from_scratch
    scratch = edit_reports(editor, vocab, tokens, pooled, [""], max_new_tokens=3)[0]
    assert scratch.from_scratch
    cut = edit_reports(editor, vocab, tokens, pooled, ["small " * 60], max_new_tokens=2)[0]
    assert cut.truncated_tokens == 60 - (32 - 2)


def test_a_tiny_explainer_learns_a_separable_question_set():
    torch.manual_seed(0)
    vocab = ReportVocabulary.from_texts(["Is there a pneumothorax? yes because There is a small left pneumothorax.",
                                         "no because No pneumothorax."])
    count = 48
    labels = torch.arange(count) % 2
    tokens = torch.randn(count, 4, 8) * 0.1 + (labels.float() * 2 - 1)[:, None, None]  # positives shifted +1, negatives -1
    pooled = tokens.mean(1)[:, :6]
    items = [QuestionItem(i, "Is there a pneumothorax?", "yes" if labels[i] else "no",
                          "There is a small left pneumothorax." if labels[i] else "No pneumothorax.", "pneumothorax", "presence")
             for i in range(count)]
    dataset = ExplainDataset(items, tokens, pooled, {i: i for i in range(count)}, vocab, max_length=32)
    model = ReportDecoder(vocab.wordpiece_ids, token_dim=8, pooled_dim=6, image_tokens=4, width=32, layers=2, heads=2, ffn=2,
                          dropout=0.0, max_length=32)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = {key: torch.stack([dataset[i][key] for i in range(count)]) for key in ("tokens", "pooled", "input_ids", "targets")}
    first = None
    for _ in range(60):
        loss = sequence_loss(model(batch["tokens"], batch["pooled"], batch["input_ids"]), batch["targets"])
        first = first if first is not None else loss.item()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.1 * first
    model.eval()
    answers = explain(model, vocab, tokens, pooled, [item.question for item in items], max_new_tokens=16)
    assert [a.answer for a in answers] == [item.answer for item in items]
    assert answers[1].explanation == "there is a small left pneumothorax." and answers[0].explanation == "no pneumothorax."
    beam = explain(model, vocab, tokens[:4], pooled[:4], [item.question for item in items[:4]], beam_size=3, max_new_tokens=16)
    assert [a.text for a in beam] == [a.text for a in answers[:4]]
    step = decoder_step(model, model.encode(tokens[:1], pooled[:1]))
    assert step(torch.tensor([[vocab.bos]])).shape == (1, len(vocab))


@pytest.mark.parametrize("copy", [False, True])
def test_cached_steps_give_the_whole_prefix_log_probabilities(copy):
    vocab = ReportVocabulary.from_texts(["there is a small left pneumothorax. no pleural effusion."])
    torch.manual_seed(1)
    model = ReportDecoder(vocab.wordpiece_ids, token_dim=8, pooled_dim=6, image_tokens=4, width=32, layers=2, heads=4, ffn=2,
                          dropout=0.0, max_length=32, copy=copy, draft_layers=1).eval()
    tokens, pooled = torch.randn(3, 4, 8), torch.randn(3, 6)
    drafts = [vocab.encode(text, bos=True, eos=True) for text in ("small left zebra", "no pleural effusion.", "")]
    length = max(len(d.ids) for d in drafts)
    draft_ids = torch.tensor([vocab.pad_to(d.ids, length) for d in drafts]) if copy else None
    draft_extended = torch.tensor([vocab.pad_to(d.extended, length) for d in drafts]) if copy else None
    extra = max(len(d.oov) for d in drafts)
    with torch.no_grad():
        memory = model.encode(tokens, pooled, draft_ids, draft_extended)
        cached, plain = decoder_step(model, memory, extra), uncached_step(model, memory, extra)
        prefixes = torch.full((3, 1), vocab.bos)
        for _ in range(6):  # greedy-style growth
            expected = plain(prefixes)
            assert torch.allclose(cached(prefixes), expected, atol=1e-4)
            prefixes = torch.cat([prefixes, expected.argmax(-1, keepdim=True)], 1)
        reordered = prefixes[[2, 0, 0]]  # beams reordered and duplicated, then extended by one token
        grown = torch.cat([reordered, torch.tensor([[4], [5], [6]])], 1)
        assert torch.allclose(cached(grown), plain(grown), atol=1e-4)
    one = model.encode(tokens[:1], pooled[:1], draft_ids[:1] if copy else None, draft_extended[:1] if copy else None)
    start = torch.tensor([vocab.bos])
    with_cache = beam_search(decoder_step(model, one, extra), start, 3, 8, vocab.eos)
    without = beam_search(uncached_step(model, one, extra), start, 3, 8, vocab.eos)
    assert with_cache.tokens == without.tokens and with_cache.score == pytest.approx(without.score, abs=1e-4)


def test_weighted_loss_adds_the_weighted_tokens_and_ignores_padding():
    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(2, 4, 7), dim=-1)
    targets = torch.tensor([[1, 2, 3, -100], [4, 5, -100, -100]])
    ones = torch.ones(2, 4)
    assert torch.allclose(weighted_sequence_loss(log_probs, targets, ones), sequence_loss(log_probs, targets))
    weights = ones.clone()
    weights[0, 1] = 5.0
    weights[1, 3] = 9.0  # a padded position: no effect
    nll = -log_probs[0, 1, 2]
    assert torch.allclose(weighted_sequence_loss(log_probs, targets, weights), sequence_loss(log_probs, targets) + 4.0 * nll / 5)


def test_drop_images_blanks_whole_examples_at_the_rate_and_leaves_the_rest():
    torch.manual_seed(0)
    tokens, pooled = torch.randn(400, 5, 3) + 1.0, torch.randn(400, 4) + 1.0
    assert drop_images(tokens, pooled, 0.0)[0] is tokens
    torch.manual_seed(1)
    dropped_tokens, dropped_pooled = drop_images(tokens, pooled, 0.5)
    blank = dropped_tokens.abs().sum((1, 2)) == 0
    assert torch.equal(blank, dropped_pooled.abs().sum(1) == 0)  # an image is blanked whole: patch tokens and pooled
    assert torch.equal(dropped_tokens[~blank], tokens[~blank]) and torch.equal(dropped_pooled[~blank], pooled[~blank])
    assert 0.42 < blank.float().mean() < 0.58
    assert tokens.abs().sum((1, 2)).min() > 0  # inputs untouched
    torch.manual_seed(1)
    assert torch.equal(drop_images(tokens, pooled, 0.5)[0], dropped_tokens)  # same global seed, same draws (resumable)
