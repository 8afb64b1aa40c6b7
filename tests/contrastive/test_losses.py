"""Contrastive objectives: formulas by hand, gradients, multi-positive duplicates, FLAIR pool, COSMOS teacher, DDP."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss
from safetensors.torch import load_file

from tests.contrastive.ddp_gather_worker import CASES, DDP_CASES, build_model, case_batch, fixed_batch
from tests.helpers.kill_resume import REPO_ROOT, assert_same_tensors, run_worker
from workbench.errors import ConfigError
from workbench_plugins.contrastive.losses import (
    OBJECTIVE_NAMES, ClipObjective, EncoderWithObjective, build_objective, duplicate_weights, multi_positive_info_nce, objective_class,
    positive_mask, sentences_contained, sigmoid_logit_init, sigmoid_pair_loss,
)
from workbench_plugins.contrastive.batches import sentence_id_rows
from workbench_plugins.contrastive.models import PRESETS
from workbench_plugins.contrastive.objectives_cosmos import encode_text_with_tokens
from workbench_plugins.contrastive.objectives_flair import TextConditionedPool

WORKER = REPO_ROOT / "tests" / "contrastive" / "ddp_gather_worker.py"
SIZE = 32
REPORTS = ["No acute process.", "Small left effusion. Heart size normal.", "Cardiomegaly.", "Right lower lobe opacity. No pneumothorax."]


def _model(logit_bias: bool = True):
    torch.manual_seed(0)
    return PRESETS[0].build(pretrained_text=None, image_size=SIZE, context_length=16, init_logit_bias=-10.0 if logit_bias else None)


def _batch(model, duplicates: bool = False) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    count = len(REPORTS)
    first_sentences = [report.split(".")[0] + "." for report in REPORTS]
    batch = {
        "images": torch.randn(count, 3, SIZE, SIZE, generator=generator),
        "token_ids": model.tokenize(REPORTS),
        "subcaption_ids": model.tokenize(first_sentences),
        "global_images": torch.randn(count, 2, 3, SIZE, SIZE, generator=generator),
        "local_images": torch.randn(count, 3, 3, SIZE, SIZE, generator=generator),
        "sentence_subset_ids": model.tokenize(first_sentences),
    }
    if duplicates:
        batch["duplicate_ids"] = torch.tensor([7, 11, 7, 13])
    return batch


@pytest.fixture(scope="module")
def model():
    return _model().eval()


def _hand_info_nce(logits: torch.Tensor, positives: list[set[int]]) -> float:
    """Mean over rows of -(1/|P|) sum_{p in P} log(exp(l_p) / sum_j exp(l_j)), written out with math."""
    total = 0.0
    for row, row_positives in zip(logits.tolist(), positives):
        log_normaliser = math.log(sum(math.exp(value) for value in row))
        total += -sum(row[p] - log_normaliser for p in row_positives) / len(row_positives)
    return total / len(positives)


def _hand_sigmoid(logits: torch.Tensor, positives: list[set[int]], weights: list[float] | None = None) -> float:
    """Sum over pairs of w_j log(1 + exp(-y l)), divided by the rows, written out with math."""
    total = 0.0
    for i, row in enumerate(logits.tolist()):
        for j, value in enumerate(row):
            label = 1.0 if j in positives[i] else -1.0
            total += (1.0 if weights is None else weights[j]) * math.log(1.0 + math.exp(-label * value))
    return total / logits.shape[0]


# ----------------------------------------------------------------------------- every objective
EXPECTED_GRADIENTS = {
    "clip": ["clip.visual.conv1.weight", "clip.text.proj.weight", "clip.logit_scale"],
    "siglip": ["clip.visual.conv1.weight", "clip.text.proj.weight", "clip.logit_scale", "clip.logit_bias"],
    "convirt": ["clip.visual.conv1.weight", "clip.text.proj.weight"],
    "flair": ["clip.visual.conv1.weight", "clip.visual.proj", "clip.text.proj.weight", "clip.logit_scale", "clip.logit_bias"],
    "cosmos": ["clip.visual.conv1.weight", "clip.visual.proj", "clip.text.proj.weight", "clip.logit_scale"],
}
OWN_PARAMETERS = {"flair": "pool.attention.in_proj_weight", "cosmos": "cross.image_attends_text.in_proj_weight"}


def test_build_objective_rejects_unknown_names_missing_bias_cnn_towers_and_missing_keys(model):
    with pytest.raises(ConfigError, match="clip, siglip, convirt, flair, cosmos"):
        build_objective("infonce", model)
    with pytest.raises(ConfigError, match="init_logit_bias"):
        build_objective("siglip", _model(logit_bias=False))
    cnn = PRESETS[3].build(pretrained_text=None, image_size=64, init_logit_bias=-10.0)
    for name in ("flair", "cosmos"):
        with pytest.raises(ConfigError, match="ViT"):
            build_objective(name, cnn)
    with pytest.raises(ConfigError, match="subcaption_ids"):
        build_objective("flair", model)(model, {"images": torch.zeros(2, 3, SIZE, SIZE), "token_ids": model.tokenize(["a", "b"])})
    assert [extra.key for extra in objective_class("cosmos").extra_inputs()] == ["global_images", "local_images", "sentence_subset_ids"]
    assert objective_class("siglip").NEEDS_LOGIT_BIAS and not objective_class("convirt").NEEDS_LOGIT_BIAS


# ----------------------------------------------------------------------------- formulas
def test_clip_equals_a_hand_computed_info_nce_on_the_same_features(model):
    batch = _batch(model)
    with torch.no_grad():
        loss = build_objective("clip", model)(model, batch)["loss"].item()
        images, texts = model.encode_image(batch["images"]), model.encode_text(batch["token_ids"])
        logits = model.logit_scale.exp() * images @ texts.T
    diagonal = [{i} for i in range(len(REPORTS))]
    expected = (_hand_info_nce(logits, diagonal) + _hand_info_nce(logits.T, diagonal)) / 2
    assert loss == pytest.approx(expected, rel=1e-5)
    assert loss == pytest.approx(math.log(len(REPORTS)), abs=0.5)  # random towers: near chance


def test_convirt_weights_the_two_directions_by_lambda_with_a_fixed_temperature(model):
    batch = _batch(model)
    with torch.no_grad():
        images, texts = model.encode_image(batch["images"]), model.encode_text(batch["token_ids"])
        diagonal = [{i} for i in range(len(REPORTS))]
        # A random encoder's similarities are near 0: a low temperature spreads them so the directions differ.
        for temperature, lambdas in ((0.1, (0.75,)), (0.005, (0.0, 0.3, 0.75, 1.0))):
            logits = images @ texts.T / temperature
            image_to_text, text_to_image = _hand_info_nce(logits, diagonal), _hand_info_nce(logits.T, diagonal)
            for lambda_ in lambdas:
                loss = build_objective("convirt", model, lambda_=lambda_, temperature=temperature)(model, batch)["loss"].item()
                assert loss == pytest.approx(lambda_ * image_to_text + (1 - lambda_) * text_to_image, rel=1e-5)
        assert abs(image_to_text - text_to_image) > 0.05
        before = build_objective("convirt", model)(model, batch)["loss"]
        model.logit_scale.add_(1.0)
        try:
            assert torch.equal(build_objective("convirt", model)(model, batch)["loss"], before)
        finally:
            model.logit_scale.sub_(1.0)


def test_multi_positive_clip_spreads_targets_over_duplicates_and_equals_the_plain_loss_without_them():
    generator = torch.Generator().manual_seed(5)
    images = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    scale = torch.tensor(10.0)
    objective = ClipObjective()
    plain = ClipLoss()(images, texts, scale).item()
    ids = torch.tensor([4, 9, 4, 2, 9])
    loss = objective.contrastive_loss(images, texts, scale, {"duplicate_ids": ids}).item()
    groups = [{j for j in range(5) if ids[j] == ids[i]} for i in range(5)]
    logits = scale * images @ texts.T
    assert loss == pytest.approx((_hand_info_nce(logits, groups) + _hand_info_nce(logits.T, groups)) / 2, rel=1e-5)
    assert abs(loss - plain) > 1e-3
    unique = objective.contrastive_loss(images, texts, scale, {"duplicate_ids": torch.tensor([1, 2, 3, 4, 5])}).item()
    assert unique == pytest.approx(plain, rel=1e-6)
    assert multi_positive_info_nce(logits, torch.eye(5, dtype=torch.bool)).item() == pytest.approx(F.cross_entropy(logits, torch.arange(5)).item(), rel=1e-6)


def test_multi_positive_siglip_labels_duplicates_plus_one_weighted_by_copies_and_plain_siglip_matches_by_hand(model):
    batch = _batch(model, duplicates=True)
    objective = build_objective("siglip", model)
    with torch.no_grad():
        images, texts = model.encode_image(batch["images"]), model.encode_text(batch["token_ids"])
        logits = model.logit_scale.exp() * images @ texts.T + model.logit_bias
        duplicates = objective(model, batch)["loss"].item()
        plain = objective(model, {key: value for key, value in batch.items() if key != "duplicate_ids"})["loss"].item()
    groups = [{0, 2}, {1}, {0, 2}, {3}]
    assert duplicates == pytest.approx(_hand_sigmoid(logits, groups, [0.5, 1.0, 0.5, 1.0]), rel=1e-5)
    assert plain == pytest.approx(_hand_sigmoid(logits, [{i} for i in range(4)]), rel=1e-5)
    # At the bias of -10 each positive costs about 10 nats: the twins' two positives per row, counted at full weight,
    # would cost 10 nats more over the 4 rows' sum than the half-weighted ones.
    assert _hand_sigmoid(logits, groups) - duplicates > 1.0


def test_a_report_held_three_times_weighs_in_the_sigmoid_loss_what_it_weighs_held_once():
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    distinct_texts = F.normalize(torch.randn(3, 8, generator=generator), dim=-1)
    owner = torch.tensor([0, 1, 0, 2, 0])  # report 0 three times in the batch, as "No finding." is on the phantoms
    logits = 10.0 * images @ distinct_texts[owner].T - 4.0
    weighted = sigmoid_pair_loss(logits, positive_mask(owner, owner), duplicate_weights(owner))
    deduplicated = sigmoid_pair_loss(10.0 * images @ distinct_texts.T - 4.0, positive_mask(owner, torch.arange(3)))
    assert duplicate_weights(owner).tolist() == pytest.approx([1 / 3, 1.0, 1 / 3, 1.0, 1 / 3])
    assert weighted.item() == pytest.approx(deduplicated.item(), rel=1e-6)
    unweighted = sigmoid_pair_loss(logits, positive_mask(owner, owner))
    assert unweighted.item() - weighted.item() > 1.0  # the copies counted three times


# ----------------------------------------------------------------------------- FLAIR
def test_flair_pool_depends_on_the_text_query_and_pools_each_pair_independently():
    torch.manual_seed(0)
    pool = TextConditionedPool(32, heads=8).eval()
    tokens, queries = torch.randn(3, 5, 32), torch.randn(4, 32)
    with torch.no_grad():
        pooled = pool(queries, tokens)
        assert pooled.shape == (3, 4, 32)
        assert (pooled[:, 0] - pooled[:, 1]).abs().max() > 1e-2  # another text, another image embedding
        alone = pool(queries[2:3].expand(1, 1, 32).reshape(1, 1, 32), tokens[1:2])
        assert torch.allclose(alone[0, 0], pooled[1, 2], atol=1e-6)
        assert pool.attention.add_zero_attn


def test_a_caption_is_contained_in_the_reports_that_hold_all_its_sentences():
    reports = torch.tensor([[1, 2, 3], [2, 4, -1], [5, -1, -1]])
    captions = torch.tensor([[2, -1], [2, 3], [4, 5], [-1, -1]])
    assert sentences_contained(reports, captions).tolist() == [
        [True, True, False, False],
        [True, False, False, False],
        [False, False, False, False],
    ]
    rows = sentence_id_rows([["No effusion.", "Heart size is normal."], ["no  effusion."]], width=3)
    assert rows.shape == (2, 3) and rows[0, 0] == rows[1, 0] and rows[0, 0] >= 0 and rows[1, 1:].tolist() == [-1, -1]


def test_flair_labels_a_sub_caption_positive_for_every_image_whose_report_holds_it(model):
    objective = build_objective("flair", model).eval()
    keys = [extra.key for extra in objective.extra_inputs()]
    assert "subcaption_sentence_ids" in keys and "report_sentence_ids" in keys
    batch = _batch(model)
    report_sentences = [[sentence.strip() + "." for sentence in report.split(".") if sentence.strip()] for report in REPORTS]
    first_sentences = [[sentences[0]] for sentences in report_sentences]
    batch["report_sentence_ids"] = sentence_id_rows(report_sentences)
    batch["subcaption_sentence_ids"] = sentence_id_rows(first_sentences, 3)
    with torch.no_grad():
        by_owner = objective(model, {key: value for key, value in batch.items() if "sentence_ids" not in key})["loss"].item()
        no_sentence_shared = objective(model, batch)["loss"].item()
        # Report 1 now also says "No acute process.", the first sentence (and sub-caption) of report 0.
        shared = dict(batch, report_sentence_ids=sentence_id_rows([report_sentences[0], ["No acute process.", *report_sentences[1]],
                                                                   *report_sentences[2:]]))
        one_sentence_shared = objective(model, shared)["loss"].item()
    assert no_sentence_shared == pytest.approx(by_owner, rel=1e-6)  # no sentence shared: the owners' labels
    # Image 1 against caption 0 turns from negative to positive: at the bias of -10 that pair's loss goes from about 0
    # to about 10 nats in both the conditioned and the global term, whose mean is divided by the 4 rows.
    assert one_sentence_shared - no_sentence_shared > 1.0


# ----------------------------------------------------------------------------- COSMOS
def test_cosmos_teacher_gets_no_gradient_lives_in_the_state_dict_and_follows_the_student():
    model = _model().train()
    objective = build_objective("cosmos", model, ema_momentum=0.9)
    assert not objective.teacher_encoder.training  # stays in eval mode while the student trains
    assert all(not parameter.requires_grad for parameter in objective.teacher_encoder.parameters())
    assert "teacher_encoder.clip.visual.conv1.weight" in objective.state_dict()
    trainable = [parameter for parameter in list(model.parameters()) + list(objective.parameters()) if parameter.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.05)
    objective(model, _batch(model))["loss"].backward()
    assert all(parameter.grad is None for parameter in objective.teacher_encoder.parameters())
    assert all(parameter.grad is None for parameter in objective.teacher_cross.parameters())
    optimizer.step()
    student, teacher = model.clip.visual.conv1.weight.detach(), objective.teacher_encoder.clip.visual.conv1.weight
    gap_before = (teacher - student).norm().item()
    assert gap_before > 0
    objective.after_optimizer_step(model, step=1)
    assert (teacher - student).norm().item() == pytest.approx(0.9 * gap_before, rel=1e-4)
    assert objective.image_center.abs().sum() > 0  # the DINO centre moved with the teacher's outputs


def test_cosmos_cross_attention_learns_to_match_the_teacher(model):
    # The whole-loss overfit test is carried by the CLIP part; here only the distillation term trains.
    model.requires_grad_(False)
    try:
        objective = build_objective("cosmos", model).eval()
        optimizer = torch.optim.Adam([p for p in objective.parameters() if p.requires_grad], lr=1e-3)
        batch, distilled = _batch(model), []
        for _ in range(5):
            outputs = objective(model, batch)
            distilled.append((outputs["distill_image"] + outputs["distill_text"]).item())
            outputs["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
        assert distilled[-1] < distilled[0] - 0.1, distilled
    finally:
        model.requires_grad_(True)


def test_encode_text_with_tokens_pools_to_encode_text(model):
    token_ids = model.tokenize(REPORTS)
    with torch.no_grad():
        pooled, tokens, valid = encode_text_with_tokens(model, token_ids)
        assert torch.allclose(pooled, model.encode_text(token_ids), atol=1e-6)
    assert tokens.shape == (4, 16, model.embed_dim) and valid.sum(1).tolist() == (token_ids != 0).sum(1).tolist()


# ----------------------------------------------------------------------------- training
def _assert_gradients_reach_the_expected_parameters(name: str, trained: EncoderWithObjective) -> None:
    gradients = {key: value.grad for key, value in trained.encoder.named_parameters()}
    for key in EXPECTED_GRADIENTS[name]:
        assert gradients[key] is not None and gradients[key].abs().sum() > 0, key
    if name == "convirt":  # fixed temperature: the learnable scale is not part of its loss
        assert gradients["clip.logit_scale"] is None
    if name in OWN_PARAMETERS:
        own = dict(trained.objective.named_parameters())[OWN_PARAMETERS[name]]
        assert own.grad is not None and own.grad.abs().sum() > 0


@pytest.mark.parametrize("name", OBJECTIVE_NAMES)
def test_each_objective_gives_finite_losses_reaches_its_parameters_and_overfits_a_fixed_batch(name):
    model = _model()
    # Speed only: the 11.7M-row word-embedding table would dominate each AdamW step; every other weight trains.
    model.clip.text.transformer.embeddings.word_embeddings.requires_grad_(False)
    trained = EncoderWithObjective(model, build_objective(name, model))
    batch = _batch(model, duplicates=True)
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=3e-4)

    def evaluated() -> float:
        trained.eval()
        with torch.no_grad():
            return trained(batch)["loss"].item()

    before = evaluated()
    trained.train()
    for step in range(1, 4):
        outputs = trained(batch)
        assert "loss" in outputs and outputs["loss"].dim() == 0 and torch.isfinite(outputs["loss"])
        outputs["loss"].backward()
        if step == 1:
            _assert_gradients_reach_the_expected_parameters(name, trained)
        optimizer.step()
        optimizer.zero_grad()
        trained.after_optimizer_step(step)
    after = evaluated()
    assert math.isfinite(before) and after < before - 0.02, (before, after)


# ----------------------------------------------------------------------------- DDP

def test_two_gloo_ranks_gather_negatives_match_the_single_process_loss_and_stay_in_step(tmp_path):
    completed = run_worker("-m", ["torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(WORKER), "--out", tmp_path])
    assert completed.returncode == 0, completed.stderr[-3000:]
    distributed = json.loads((tmp_path / "losses.json").read_text())
    model = build_model()
    batch = fixed_batch(model)
    with torch.no_grad():
        single = {case: build_objective(name, model, **options)(model, case_batch(batch, case))["loss"].item() for case, (name, options, _) in CASES.items()}
    for case in CASES:
        assert distributed[case] == pytest.approx(single[case], abs=1e-5), case
    assert abs(single["clip-duplicates"] - single["clip"]) > 1e-3  # the duplicate path really ran across ranks
    assert abs(single["siglip-duplicates"] - single["siglip"]) > 1e-3
    for case in DDP_CASES:
        ranks = [load_file(tmp_path / f"{case}-rank{rank}.safetensors") for rank in (0, 1)]
        assert_same_tensors(ranks[0], ranks[1])
        encoder = build_model(logit_bias=case == "siglip")
        build_objective(case, encoder)(encoder, case_batch(fixed_batch(encoder), case))["loss"].backward()
        for key, parameter in encoder.named_parameters():
            if parameter.grad is not None:  # DDP's averaged gradient is the gradient of the 2b-batch loss
                torch.testing.assert_close(ranks[0][f"grad.{key}"], parameter.grad, atol=1e-6, rtol=1e-4, msg=f"{case}: {key}")


# ----------------------------------------------------------------------------- sigmoid losses: normalisation and init
def test_sigmoid_pair_loss_equals_open_clip_siglip_loss_on_the_same_features():
    generator = torch.Generator().manual_seed(5)
    images = F.normalize(torch.randn(6, 16, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(6, 16, generator=generator), dim=-1)
    scale, bias = torch.tensor(10.0), torch.tensor(-4.0)
    ours = sigmoid_pair_loss(scale * images @ texts.T + bias, torch.eye(6, dtype=torch.bool))
    assert ours.item() == pytest.approx(SigLipLoss()(images, texts, scale, bias).item(), rel=1e-6)


def _sigmoid_encoder(objective: str, batch_size: int, world_size: int = 1, **model_options: float):
    from workbench.config import load_settings
    from workbench.host import create_plugin_manager
    from workbench_plugins.contrastive.jobs.pretrain import build_encoder
    from workbench_plugins.contrastive.settings import PretrainSettings

    create_plugin_manager()  # registers the dual-encoder presets
    options = {"image_size": SIZE, "context_length": 16, "pretrained_text": None, **model_options}
    settings = load_settings(PretrainSettings, None, [f"objective.name={objective}", f"train.batch_size={batch_size}", "model.preset=dual-vit-tiny-minilm"],
                             defaults={"model": {"options": options}})
    torch.manual_seed(0)
    return build_encoder(settings, world_size)


@pytest.mark.parametrize("objective", ["siglip", "flair"])
def test_sigmoid_objectives_start_at_the_paper_scale_and_the_prior_of_the_global_batch(objective):
    encoder = _sigmoid_encoder(objective, batch_size=64, world_size=2)
    assert encoder.logit_scale.item() == pytest.approx(math.log(10.0))  # SigLIP's t' = ln 10, not CLIP's ln(1/0.07)
    assert encoder.logit_bias.item() == pytest.approx(-math.log(127))  # the log odds of a positive among 128 texts
    assert sigmoid_logit_init(32768)["init_logit_bias"] == pytest.approx(-10.4, abs=0.01)  # the paper's -10 at its batch
    paper = _sigmoid_encoder(objective, batch_size=64, init_logit_scale=math.log(10.0), init_logit_bias=-10.0)
    assert paper.logit_bias.item() == -10.0  # model.options still choose the init


def test_siglip_training_steps_move_the_logit_bias_and_scale():
    from workbench.train import TrainSettings, build_optimizer

    encoder = _sigmoid_encoder("siglip", batch_size=4)
    module = EncoderWithObjective(encoder, build_objective("siglip", encoder))
    optimizer = build_optimizer(module, TrainSettings(lr=1e-2))
    batch = _batch(encoder)
    start_scale, start_bias = encoder.logit_scale.item(), encoder.logit_bias.item()
    for step in range(3):
        optimizer.zero_grad()
        module(batch)["loss"].backward()
        assert encoder.logit_bias.grad is not None and encoder.logit_bias.grad.abs().item() > 0
        optimizer.step()
        module.after_optimizer_step(step)
    assert encoder.logit_bias.item() != pytest.approx(start_bias, abs=1e-3)
    assert encoder.logit_scale.item() != pytest.approx(start_scale, abs=1e-3)
