"""CAE networks and losses: shapes, the two-optimizer step, losses falling on a tiny batch, and the train job."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.counterfactual.cf_images import blob_image, write_blob_folder
from workbench.config import load_settings
from workbench.errors import ConfigError
from workbench.host import create_plugin_manager
from workbench.model_store import ModelStore
from workbench_plugins.counterfactual.jobs.cae_train import build_cae_optimizer, cae_step_function, guide_classifier, run_cae_train
from workbench_plugins.counterfactual.classifiers import resnet18_classifier
from workbench_plugins.counterfactual.losses import CaeLossWeights, code_separation_loss, generator_forward, generator_loss, partner_indices
from workbench_plugins.counterfactual.models import ClassAssociationEmbedding
from workbench_plugins.counterfactual.settings import CaeTrainSettings

TINY = {"class_dim": 8, "dim": 8, "n_downsample": 2, "n_res": 2, "mlp_dim": 32, "disc_dim": 8, "disc_layers": 3}


def tiny_batch(count: int = 8, size: int = 32) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    images = [blob_image(rng, size, index % 2 == 1)[0] for index in range(count)]
    return {"image": torch.tensor(np.stack(images)[:, None] / 255.0, dtype=torch.float32), "label": torch.arange(count) % 2}


@pytest.mark.parametrize("channels,size,n_downsample", [(1, 32, 2), (3, 64, 3), (1, 48, 1)])
@torch.no_grad()
def test_shapes_and_range(channels, size, n_downsample):
    torch.manual_seed(0)
    model = ClassAssociationEmbedding(in_channels=channels, num_classes=3, image_size=size, **{**TINY, "n_downsample": n_downsample})
    images = torch.rand(2, channels, size, size)
    class_code, individual = model.encode(images)
    assert class_code.shape == (2, 8)
    assert individual.shape == (2, 8 * 2**n_downsample, size // 2**n_downsample, size // 2**n_downsample)
    decoded = model.decode(class_code, individual)
    assert decoded.shape == images.shape and 0.0 <= float(decoded.min()) and float(decoded.max()) <= 1.0
    real_fake, classes = model.discriminator(images)
    assert real_fake.shape == (2, 2) and classes.shape == (2, 3)
    assert model.class_centroids.shape == (3, 8) and "class_centroids" in model.state_dict()
    # another class code changes the image: the decoder listens to the code
    assert not torch.allclose(model.decode(class_code.flip(0), individual), decoded)
    with pytest.raises(ValueError, match="multiple of 4"):
        ClassAssociationEmbedding(image_size=30, **TINY)


def test_partners_come_from_the_other_class():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    partners = partner_indices(labels)
    assert partners.shape == (6,) and bool((labels[partners] != labels).all())
    same = torch.zeros(4, dtype=torch.long)
    assert set(partner_indices(same).tolist()) <= {0, 1, 2, 3}


def test_step_updates_discriminator_inside_and_generator_after():
    torch.manual_seed(0)
    model = ClassAssociationEmbedding(image_size=32, **TINY)
    optimizer = build_cae_optimizer(model, load_settings(CaeTrainSettings))
    assert optimizer.defaults["betas"] == (0.5, 0.999) and optimizer.defaults["lr"] == 1e-4
    step = cae_step_function(optimizer, CaeLossWeights())
    generator_before = [p.detach().clone() for p in model.generator_parameters()]
    disc_before = [p.detach().clone() for p in model.discriminator.parameters()]
    outputs = step(model, tiny_batch())
    assert all(torch.equal(a, b) for a, b in zip(generator_before, model.generator_parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(disc_before, model.discriminator.parameters()))
    assert all(p.grad is None for p in model.parameters()) and all(p.requires_grad for p in model.discriminator.parameters())
    expected = (10 * outputs["reconstruction"] + outputs["class_code"] + outputs["individual_code"] + 10 * outputs["cycle"]
                + outputs["adversarial"] + outputs["classification"])
    assert float(outputs["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(outputs["disc_loss"]) == pytest.approx(float(outputs["disc_real_fake"] + 2 * outputs["disc_class"]), rel=1e-5)
    disc_after = [p.detach().clone() for p in model.discriminator.parameters()]
    outputs["loss"].backward()
    assert all(p.grad is None for p in model.discriminator.parameters())
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(disc_after, model.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(generator_before, model.generator_parameters()))


def test_losses_finite_and_falling_on_a_tiny_batch():
    torch.manual_seed(0)
    model = ClassAssociationEmbedding(image_size=32, **TINY)
    settings = load_settings(CaeTrainSettings, None, ["optim.lr=0.001"])
    optimizer = build_cae_optimizer(model, settings)
    step = cae_step_function(optimizer, CaeLossWeights())
    batch = tiny_batch()
    history = []
    for _ in range(25):
        outputs = step(model, batch)
        outputs["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({key: float(value) for key, value in outputs.items()})
    assert all(np.isfinite(list(row.values())).all() for row in history)
    first, last = history[0], history[-1]
    assert last["reconstruction"] < 0.6 * first["reconstruction"]
    assert last["cycle"] < 0.6 * first["cycle"]
    assert last["loss"] < first["loss"]
    assert last["disc_class"] < first["disc_class"]  # the discriminator learns the classes of real images


class MeanBrightness(torch.nn.Module):
    """Logits ``(0, 20 * (mean intensity - 0.4))``: a real differentiable classifier whose decision we know."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        score = 20.0 * (images.mean(dim=(1, 2, 3)) - 0.4)
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_classifier_guidance_is_a_switchable_extra_term_that_reaches_the_class_encoder():
    torch.manual_seed(0)
    model = ClassAssociationEmbedding(image_size=32, **TINY)
    batch = tiny_batch()
    partners = partner_indices(batch["label"], torch.Generator().manual_seed(0))
    weights = CaeLossWeights(classifier_guidance=2.0)
    model.discriminator.requires_grad_(False)
    forward = generator_forward(model, batch["image"], batch["label"], partners)
    outputs = generator_loss(model, forward, weights, MeanBrightness())
    # x_ab against b's class and the reconstruction against a's own, one mean over both
    cross_terms = torch.nn.functional.cross_entropy(MeanBrightness()(forward.cross), batch["label"][partners], reduction="none")
    own_terms = torch.nn.functional.cross_entropy(MeanBrightness()(forward.reconstruction), batch["label"], reduction="none")
    assert float(outputs["guidance"]) == pytest.approx(float(torch.cat([cross_terms, own_terms]).mean()), rel=1e-5)
    papers = sum(float(outputs[name]) * getattr(weights, name) for name in
                 ("reconstruction", "class_code", "individual_code", "cycle", "adversarial", "classification"))
    assert float(outputs["loss"]) == pytest.approx(papers + 2.0 * float(outputs["guidance"]), rel=1e-5)
    # the class signal reaches the class-associated encoder through x_ab = dec(class code of b, individual code of a)
    gradients = torch.autograd.grad(outputs["guidance"], list(model.class_encoder.parameters()), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in gradients if g is not None) > 0
    off = generator_loss(model, generator_forward(model, batch["image"], batch["label"], partners), CaeLossWeights(), MeanBrightness())
    assert "guidance" not in off
    with pytest.raises(ValueError, match="guide"):
        generator_loss(model, forward, weights)


def test_code_separation_pulls_a_class_together_and_pushes_classes_a_margin_apart():
    labels = torch.tensor([0, 0, 1])
    codes = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])  # same-class pair 5 apart; the 1 is 1 and sqrt(20) from them
    expected = (25.0 + (4.0 - 1.0) ** 2 + 0.0) / 3  # pairs (0,1) same, (0,2) inside the margin, (1,2) beyond it
    assert float(code_separation_loss(codes, labels, margin=4.0)) == pytest.approx(expected)
    assert float(code_separation_loss(torch.tensor([[0.0, 0.0], [9.0, 0.0]]), torch.tensor([0, 1]), 4.0)) == 0.0
    assert float(code_separation_loss(codes[:1], labels[:1], 4.0)) == 0.0
    # as a generator term: listed, weighted into the total, and it moves only the class encoder
    torch.manual_seed(0)
    model = ClassAssociationEmbedding(image_size=32, **TINY)
    batch = tiny_batch()
    model.discriminator.requires_grad_(False)
    forward = generator_forward(model, batch["image"], batch["label"], partner_indices(batch["label"], torch.Generator().manual_seed(0)))
    outputs = generator_loss(model, forward, CaeLossWeights(code_separation=3.0, code_margin=2.0))
    assert float(outputs["code_separation"]) == pytest.approx(float(code_separation_loss(forward.class_codes, batch["label"], 2.0)), rel=1e-6)
    papers = sum(float(outputs[name]) * getattr(CaeLossWeights(), name) for name in
                 ("reconstruction", "class_code", "individual_code", "cycle", "adversarial", "classification"))
    assert float(outputs["loss"]) == pytest.approx(papers + 3.0 * float(outputs["code_separation"]), rel=1e-5)
    moved = torch.autograd.grad(outputs["code_separation"], list(model.individual_encoder.parameters()), allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0 for g in moved)


def test_guide_classifier_must_exist_and_share_the_classes(tmp_path):
    create_plugin_manager()
    store = tmp_path / "store"
    settings = load_settings(CaeTrainSettings, None, ["loss.classifier_guidance=1.0", f"save.store={store}"])
    with pytest.raises(ConfigError, match="guide.classifier"):
        guide_classifier(settings, ["normal", "lesion"], torch.device("cpu"))
    assert guide_classifier(load_settings(CaeTrainSettings), ["normal", "lesion"], torch.device("cpu")) == (None, None)
    from workbench.model_records import Preprocessing

    ModelStore(store).save(resnet18_classifier(), name="clf", factory="classifier-resnet18", task="classification",
                           config={"in_channels": 1, "num_classes": 2}, plugin="counterfactual", extra={"classes": ["normal", "lesion"]},
                           preprocessing=Preprocessing(image_size=64, channels=1, intensity="none", extra={"classes": ["normal", "lesion"]}))
    settings = load_settings(CaeTrainSettings, None, ["loss.classifier_guidance=1.0", f"save.store={store}", "guide.classifier=clf"])
    with pytest.raises(ConfigError, match="other|classes"):
        guide_classifier(settings, ["no_finding", "finding"], torch.device("cpu"))
    guide, ref = guide_classifier(settings, ["normal", "lesion"], torch.device("cpu"))
    assert ref == "clf:v1"
    images = torch.rand(2, 1, 32, 32, requires_grad=True)  # the CAE's size: converted to the classifier's 64 x 64
    logits = guide(images)
    assert logits.shape == (2, 2)
    logits[:, 1].sum().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0


def test_cae_train_job_stores_model_with_centroids(tmp_path):
    host = create_plugin_manager()
    root = write_blob_folder(tmp_path / "blobs", per_class=16, size=32, seed=3)
    settings = load_settings(CaeTrainSettings, None, [
        f"run.output_root={tmp_path / 'runs'}", "run.device=cpu", "data.source=folder", f"data.root={root}", "data.image_size=32",
        "data.eval_split=[test, val]", "train.steps=4", "train.batch_size=8", "train.log_every=2", "train.checkpoint_every=2",
        *[f"model.{key}={value}" for key, value in TINY.items()], "save.name=tiny-cae", f"save.store={tmp_path / 'store'}", "examples=2"])
    outcome = run_cae_train(settings, host.datasets.builders, progress=False)
    assert outcome.steps == 4 and [row["step"] for row in outcome.history] == [2.0, 4.0]
    assert outcome.details["classes"] == ["lesion", "normal"]
    assert 0.0 <= outcome.metrics["knn_accuracy"] <= 1.0 and outcome.metrics["reconstruction_l1"] > 0
    model, record = ModelStore(tmp_path / "store").load("tiny-cae")
    assert record.task == "counterfactual" and record.extra["classes"] == ["lesion", "normal"]
    assert torch.allclose(model.class_centroids, torch.tensor(outcome.metrics["centroids"], dtype=torch.float32))
    assert not torch.equal(model.class_centroids[0], model.class_centroids[1])
    metrics = json.loads((outcome.run.path / "metrics.json").read_text())
    assert metrics["cae"]["stored_model"] == "tiny-cae:v1" and (outcome.run.path / "examples" / "01.png").is_file()
    with pytest.raises(ConfigError, match="grad_accum"):
        run_cae_train(settings.model_copy(update={"train": settings.train.model_copy(update={"grad_accum": 2})}), host.datasets.builders)


@torch.no_grad()
def test_default_model_is_the_lean_cpu_size_at_128():
    settings = load_settings(CaeTrainSettings)
    model = ClassAssociationEmbedding(image_size=128, **settings.model.model_dump())
    class_code, individual = model.encode(torch.rand(1, 1, 128, 128))
    assert class_code.shape == (1, 8) and individual.shape == (1, 32, 32, 32)
    assert len(model.decoder.blocks) == 2 and sum(p.numel() for p in model.parameters()) < 500_000
    assert (settings.train.batch_size, settings.train.steps) == (4, 4000)


def test_class_balanced_dataset_draws_every_class_equally_often():
    from workbench_plugins.counterfactual.data import ClassBalancedDataset

    labels = [0, 0, 0, 0, 0, 0, 1, 0, 1]  # 7 of class 0, 2 of class 1
    items = [f"item{index}" for index in range(len(labels))]
    balanced = ClassBalancedDataset(items, labels)
    assert len(balanced) == 2 * 7
    drawn = [balanced[index] for index in range(len(balanced))]
    drawn_labels = [labels[items.index(item)] for item in drawn]
    assert drawn_labels == [0, 1] * 7  # classes interleave
    assert sorted(set(drawn)) == sorted(items)  # every item is used
    assert drawn.count("item6") == 4 and drawn.count("item8") == 3 and drawn.count("item0") == 1  # the minority repeats
    with pytest.raises(ValueError, match="labels"):
        ClassBalancedDataset(items, labels[:-1])


@torch.no_grad()
def test_max_pooling_lets_a_small_lesion_move_the_class_code():
    plain = torch.full((1, 1, 64, 64), 0.3)
    lesion = plain.clone()
    lesion[..., 40:46, 20:26] = 0.9  # a 6 x 6 bright spot: under 1% of the image
    changes = {}
    for pool in ("avg", "max"):
        torch.manual_seed(0)
        model = ClassAssociationEmbedding(image_size=64, **TINY, pool=pool)
        assert model.discriminator(lesion)[1].shape == (1, 2)
        base = model.class_encoder(plain)
        changes[pool] = float((model.class_encoder(lesion) - base).norm() / base.norm())
    assert changes["max"] > 3 * changes["avg"]
    with pytest.raises(ValueError, match="pool"):
        ClassAssociationEmbedding(image_size=64, **TINY, pool="median")


def test_minimal_change_is_the_swap_distance_to_the_reconstruction_and_leaves_the_reconstruction_alone():
    torch.manual_seed(0)
    model = ClassAssociationEmbedding(image_size=32, **TINY)
    batch = tiny_batch()
    model.discriminator.requires_grad_(False)
    forward = generator_forward(model, batch["image"], batch["label"], partner_indices(batch["label"], torch.Generator().manual_seed(0)))
    outputs = generator_loss(model, forward, CaeLossWeights(minimal_change=2.0))
    expected = (forward.cross - forward.reconstruction).abs().mean()
    assert float(outputs["minimal_change"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(outputs["minimal_change"]) > 0
    off = generator_loss(model, forward, CaeLossWeights())
    assert "minimal_change" not in off
    assert float(outputs["loss"]) == pytest.approx(float(off["loss"]) + 2.0 * float(outputs["minimal_change"]), rel=1e-5)
    # the swap is pulled towards the reconstruction (gradient sign(x_ab - reconstruction) / N), and the
    # reconstruction (detached) gets no pull towards the swap
    cross = forward.cross.detach().requires_grad_(True)
    reconstruction = forward.reconstruction.detach().requires_grad_(True)
    pulled = generator_loss(model, type(forward)(forward.images, forward.labels, forward.partners, forward.class_codes, forward.individual,
                                                 reconstruction, cross), CaeLossWeights(minimal_change=1.0))["minimal_change"]
    grad_cross, grad_reconstruction = torch.autograd.grad(pulled, [cross, reconstruction], allow_unused=True)
    assert grad_reconstruction is None or float(grad_reconstruction.abs().sum()) == 0
    assert torch.allclose(grad_cross, torch.sign(cross - reconstruction).detach() / cross.numel())


def test_lr_decay_is_constant_then_linear_to_zero_over_the_last_steps():
    from workbench_plugins.counterfactual.jobs.cae_train import cae_lr_factor

    constant = cae_lr_factor(100, 0)
    assert [constant(step) for step in (0, 50, 99, 150)] == [1.0, 1.0, 1.0, 1.0]
    decay = cae_lr_factor(100, 40)
    assert [decay(step) for step in (0, 59, 60, 70, 90, 100, 120)] == pytest.approx([1.0, 1.0, 1.0, 0.75, 0.25, 0.0, 0.0])
    # through torch's LambdaLR, as cae train builds it: Adam's rate follows the factor step by step
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cae_lr_factor(10, 4))
    rates = []
    for _ in range(10):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([1e-4] * 6 + [7.5e-5, 5e-5, 2.5e-5, 0.0])
