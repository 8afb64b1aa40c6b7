"""Counterfactual explanations: stop at the first flip, validity, saliency, baselines, metrics and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from tests.counterfactual.cf_images import write_blob_folder
from workbench.cli import build_cli
from workbench.data.phantoms import make_cxr_study, write_cxr_dicom
from workbench.errors import ConfigError, DataError
from workbench.host import create_plugin_manager
from workbench_plugins.counterfactual.baselines import baseline_maps
from workbench_plugins.counterfactual.data import convert_channels
from workbench_plugins.counterfactual.explain import check_compatible, explain_linear, resolve_target
from workbench_plugins.counterfactual.jobs.explain import single_case
from workbench_plugins.counterfactual.explain_metrics import localisation, proximity
from workbench_plugins.counterfactual.models import ClassAssociationEmbedding

TINY = {"class_dim": 8, "dim": 8, "n_downsample": 2, "n_res": 2, "mlp_dim": 32, "disc_dim": 8, "disc_layers": 3}


class LinearClassifier(torch.nn.Module):
    """Logits ``(0, w . (x - origin) - t)``: class 1 exactly when the score passes ``t`` (a real module whose decision we can place)."""

    def __init__(self, direction: torch.Tensor, threshold: float, origin: torch.Tensor | None = None):
        super().__init__()
        self.direction = torch.nn.Parameter(direction.flatten().clone())
        self.register_buffer("origin", torch.zeros_like(self.direction) if origin is None else origin.flatten().clone())
        self.threshold = threshold

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        score = (images.flatten(1) - self.origin) @ self.direction - self.threshold
        return torch.stack([torch.zeros_like(score), score], dim=1)


def index_of(output: str) -> Path:
    """The index.html path a command printed (warnings from libraries may share the output)."""
    return Path(next(line for line in reversed(output.strip().splitlines()) if line.endswith("index.html")))


@pytest.fixture(scope="module")
def cae() -> ClassAssociationEmbedding:
    torch.manual_seed(0)
    model = ClassAssociationEmbedding(image_size=32, **TINY).eval()
    model.class_centroids.copy_(torch.randn(2, 8) * 2)
    return model


def path_images(cae, image, steps):
    with torch.no_grad():
        code, individual = cae.encode(image[None])
        goal = cae.class_centroids[1][None]
        return [cae.decode(code + (goal - code) * (k / steps), individual)[0] for k in range(1, steps + 1)]


def test_stops_at_the_first_flip_and_saliency_is_against_the_reconstruction(cae):
    torch.manual_seed(1)
    image = torch.rand(1, 32, 32)
    path = path_images(cae, image, 8)
    direction = path[-1] - image  # scores along the path, relative to the input (whose score is 0); the last one is > 0
    scores = [float((step - image).flatten() @ direction.flatten()) for step in path]
    records = [k for k in range(8) if scores[k] > max([0.0, *scores[:k]])]
    last_record = records[-1]  # the last step that beats the input and every earlier step
    threshold = (max([0.0, *scores[:last_record]]) + scores[last_record]) / 2
    expected = last_record + 1
    classifier = LinearClassifier(direction, threshold, origin=image)
    explanation = explain_linear(classifier, cae, image, ["normal", "lesion"], steps=8, smoothing_sigma=1.0)
    assert explanation.source == 0 and explanation.target == 1 and explanation.valid and explanation.reconstruction_kept_class
    assert explanation.flipped_step == expected and len(explanation.probabilities) == expected == len(explanation.path)
    assert explanation.queries == expected + 2 and explanation.probabilities[-1] > 0.5 > max(explanation.probabilities[:-1], default=0)
    assert np.array_equal(explanation.counterfactual, explanation.path[-1])
    smoothed = ndimage.gaussian_filter(np.abs(explanation.counterfactual - explanation.reconstruction).sum(axis=0), sigma=1.0)
    np.testing.assert_allclose(explanation.saliency, smoothed, rtol=1e-5, atol=1e-7)
    assert f"at step {expected} of 8" in explanation.sentence(["normal", "lesion"])


def test_never_flipping_is_reported_invalid(cae):
    image = torch.rand(1, 32, 32)
    direction = torch.ones(1, 32, 32)
    explanation = explain_linear(LinearClassifier(direction, 1e6), cae, image, ["normal", "lesion"], steps=5)
    assert not explanation.valid and explanation.flipped_step is None and len(explanation.probabilities) == 5 and explanation.queries == 7
    assert "INVALID" in explanation.sentence(["normal", "lesion"])


def test_a_reconstruction_already_in_the_target_class_makes_the_explanation_invalid(cae):
    torch.manual_seed(2)
    image = torch.rand(1, 32, 32)
    with torch.no_grad():
        reconstruction = cae.decode(*cae.encode(image[None]))[0]
    direction = reconstruction - image  # the reconstruction scores |direction|^2 > 0, the input 0
    threshold = 0.5 * float(direction.flatten() @ direction.flatten())
    explanation = explain_linear(LinearClassifier(direction, threshold, origin=image), cae, image, ["normal", "lesion"], steps=5)
    assert explanation.source == 0 and explanation.reconstruction_class == 1 and not explanation.reconstruction_kept_class
    assert not explanation.valid  # whatever the path does, the first "flip" is the reconstruction's own error
    assert "reconstruction of this image is already classified lesion" in explanation.sentence(["normal", "lesion"])


def test_targets_and_class_checks():
    classes = ["a", "b", "c"]
    assert resolve_target(None, 0, ["a", "b"]) == 1 and resolve_target("c", 0, classes) == 2 and resolve_target(1, 0, classes) == 1
    with pytest.raises(ConfigError, match="3 classes"):
        resolve_target(None, 0, classes)
    with pytest.raises(ConfigError, match="already gives"):
        resolve_target("a", 0, classes)
    with pytest.raises(ConfigError, match="not one of"):
        resolve_target("d", 0, classes)
    with pytest.raises(ConfigError, match=r"trained on classes \['x', 'y'\]"):
        check_compatible(["a", "b"], ["x", "y"], "clf:v1", "cae:v1")


def test_three_class_classifier_needs_a_target(cae):
    class ThreeWay(torch.nn.Module):
        def forward(self, images):
            mean = images.mean(dim=(1, 2, 3))
            return torch.stack([torch.full_like(mean, 5.0), mean, -mean], dim=1)

    three = ClassAssociationEmbedding(num_classes=3, image_size=32, **TINY).eval()
    with pytest.raises(ConfigError, match="give a target"):
        explain_linear(ThreeWay(), three, torch.rand(1, 32, 32), ["x", "y", "z"])
    explanation = explain_linear(ThreeWay(), three, torch.rand(1, 32, 32), ["x", "y", "z"], target="z", steps=3)
    assert explanation.target == 2 and not explanation.valid


def test_input_conversion_and_bad_channels(tmp_path):
    rgb = np.zeros((40, 40, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    case = single_case(tmp_path / "colour.png", channels=1, size=32)
    assert case.image.shape == (1, 32, 32) and case.image.mean().item() == pytest.approx(200 / 255 / 3, abs=1e-3)
    assert any("3-channel image converted to 1" in note for note in case.notes) and any("resampled to 32x32" in note for note in case.notes)
    with pytest.raises(DataError, match="2 channels"):
        convert_channels(np.zeros((2, 8, 8), dtype=np.float32), 1, "two.tif")


def test_localisation_and_proximity_numbers():
    saliency = np.zeros((10, 10))
    saliency[2, 3] = 3.0
    saliency[7, 7] = 1.0
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:4, 2:5] = True
    scores = localisation(saliency, mask, percent=1.0)
    assert scores["energy_in_mask"] == pytest.approx(0.75) and scores["pointing"] == 1.0
    assert scores["dice_topk"] == pytest.approx(2 * 1 / (1 + 9))
    image = np.full((1, 16, 16), 0.5)
    close = proximity(image + 0.1, image, image)
    assert close["l1"] == pytest.approx(0.1) and close["sparsity"] == 1.0 and 0 < close["ssim"] <= 1


class BrightnessClassifier(torch.nn.Module):
    """Logits ``(0, mean of a 1x1 conv's ReLU map)``: p(class 1) rises with brightness anywhere; its CAM is the bright region."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.fill_(1.0)
            self.features[0].bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        score = self.features(images).mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_cam_baselines_point_at_the_evidence_not_away_from_it():
    # A known case: the class-1 evidence is one bright square on a dim ramp. The CAMs must be highest inside it (MONAI's
    # default normaliser maps (min, max) to (1, 0), which put the maximum on the darkest pixel and gave pointing 0).
    image = torch.linspace(0.05, 0.15, 32).repeat(32, 1)[None, None].clone()
    image[..., 20:28, 4:12] = 0.9
    mask = np.zeros((32, 32), dtype=bool)
    mask[20:28, 4:12] = True
    maps = baseline_maps(BrightnessClassifier().eval(), ["gradcam", "gradcampp", "occlusion"], "features.1", occlusion_mask=8)
    for name, saliency_of in maps.items():
        saliency = saliency_of(image, 1)
        assert saliency.shape == (32, 32), name
        scores = localisation(saliency, mask)
        # the square is 6% of the image; occlusion's 8-pixel patches spread its map over their overlaps
        assert scores["pointing"] == 1.0 and scores["energy_in_mask"] > (0.15 if name == "occlusion" else 0.5), (name, scores)
        if name != "occlusion":
            assert saliency.min() == pytest.approx(0.0) and saliency.max() == pytest.approx(1.0)


def test_explain_command_end_to_end(tmp_path):
    host = create_plugin_manager()
    cli = build_cli(host)
    data_root = write_blob_folder(tmp_path / "blobs", per_class=24, size=32, seed=2)
    store = tmp_path / "store"
    common = [f"run.output_root={tmp_path / 'runs'}", "run.device=cpu", "data.source=folder", f"data.root={data_root}", "data.image_size=32",
              f"save.store={store}"]
    runner = CliRunner()
    result = runner.invoke(cli, ["classify", "train", *common, "model.network=classifier-resnet18", "train.steps=30", "train.batch_size=16",
                                 "train.lr=0.003", "data.augment=false", "save.name=clf", "examples=0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["cae", "train", *common, *[f"model.{key}={value}" for key, value in TINY.items()], "train.steps=4",
                                 "train.batch_size=8", "save.name=cae", "examples=0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    explain = [f"run.output_root={tmp_path / 'runs'}", "run.device=cpu", f"store={store}", "data.source=folder", f"data.root={data_root}",
               "data.image_size=32", "data.eval_split=[test, val]", "steps=4", "shown=2", "baselines=[gradcam, occlusion]", "occlusion_mask=8"]
    result = runner.invoke(cli, ["explain", "--classifier", "clf", "--cae", "cae", "--evaluate", *explain], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    index = index_of(result.output)
    metrics = json.loads((index.parent / "metrics.json").read_text())
    assert set(metrics["energy_in_mask"]) == {"cae", "gradcam", "occlusion"} and metrics["explained"] == len(metrics["cases"]) > 0
    assert 0.0 <= metrics["flip_rate"] <= 1.0 and metrics["queries_per_explanation"] >= 2 and metrics["seconds_per_explanation"] > 0
    assert all(row["queries"] == 2 + (row["flipped_step"] or 4) for row in metrics["cases"])
    page = index.read_text()
    assert "Classified " in page and "cases/00-" in page and (index.parent / "cases").is_dir()
    # shown=2 draws one image of each class (the split lists them class by class), each with the change beside it
    assert "(lesion): original" in page and "(normal): original" in page and "the change (counterfactual minus reconstruction)" in page
    guided = runner.invoke(cli, ["explain", "--classifier", "clf", "--cae", "cae", *explain, "path=guided", "baselines=[]", "max_cases=3"],
                           catch_exceptions=False)
    assert guided.exit_code == 0, guided.output
    rows = json.loads((index_of(guided.output).parent / "metrics.json").read_text())["cases"]
    assert len(rows) == 3 and all(row["path"] in ("guided", "linear (no guided route)") for row in rows)

    study = make_cxr_study(3, seed=0, size=128)
    write_cxr_dicom(tmp_path / "study.dcm", study, 0, 3)
    result = runner.invoke(cli, ["explain", "--classifier", "clf", "--cae", "cae", "--image", str(tmp_path / "study.dcm"), *explain[:3]])
    assert result.exit_code == 0, result.output
    single = json.loads((index_of(result.output).parent / "metrics.json").read_text())
    assert len(single["cases"]) == 1 and single["cases"][0]["id"] == "study"
    assert "resampled to 32x32" in index_of(result.output).read_text()
    # the CAE saliency is kept as an array for other jobs (e.g. `workbench ground --saliency`)
    saliency = np.load(index_of(result.output).parent / single["cases"][0]["saliency_file"], allow_pickle=False)
    assert saliency.shape == (32, 32) and saliency.dtype == np.float32 and np.isfinite(saliency).all() and saliency.min() >= 0
    predicted = single["cases"][0]["predicted"]
    same = runner.invoke(cli, ["explain", "--classifier", "clf", "--cae", "cae", "--image", str(tmp_path / "study.dcm"), "--target", predicted, *explain[:3]])
    assert isinstance(same.exception, ConfigError) and "already gives" in str(same.exception)

    result = runner.invoke(cli, ["cae", "train", *common, *[f"model.{key}={value}" for key, value in TINY.items()], "train.steps=1",
                                 "data.classes=[normal, lesion]", "save.name=cae-swapped", "examples=0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    other = runner.invoke(cli, ["explain", "--classifier", "clf", "--cae", "cae-swapped", *explain])
    assert isinstance(other.exception, ConfigError) and "trained on classes ['normal', 'lesion']" in str(other.exception)


def chain_codes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 codes around the origin, class 1 around (6, 0, ...), joined by a thin chain of mixed codes."""
    rng = np.random.default_rng(seed)
    zero = rng.normal(0, 0.3, (60, 8))
    one = rng.normal(0, 0.3, (60, 8)) + 6 * np.eye(8)[0]
    chain = np.linspace(0, 6, 40)[:, None] * np.eye(8)[0] + rng.normal(0, 0.05, (40, 8))
    return np.concatenate([zero, one, chain]), np.concatenate([np.zeros(60), np.ones(60), (np.linspace(0, 6, 40) > 3).astype(float)]).astype(int)


def test_guided_route_walks_the_code_graph_to_the_target_class():
    from workbench_plugins.counterfactual.guided_path import build_code_graph, guided_waypoints

    codes, labels = chain_codes()
    graph = build_code_graph(codes, labels, n_cubes=8, overlap=0.4)
    waypoints = guided_waypoints(graph, codes[0], target=1)
    assert waypoints is not None and waypoints.shape[1] == 8 and len(waypoints) >= 2
    # the route ends in class 1's region and moves along the first axis towards it
    assert waypoints[-1][0] > 4.0 and waypoints[0][0] < waypoints[-1][0]
    end = min(graph.centroids, key=lambda node: np.linalg.norm(graph.centroids[node] - waypoints[-1]))
    assert graph.majority[end][0] == 1
    far_apart = np.concatenate([codes[:60], codes[60:120] + 50 * np.eye(8)[1]])
    isolated = build_code_graph(far_apart, labels[:120], n_cubes=4, overlap=0.1)
    assert guided_waypoints(isolated, far_apart[0], target=1) is None
    with pytest.raises(ConfigError, match="at least 10"):
        build_code_graph(codes[:5], labels[:5])


def test_explanation_follows_given_waypoints(cae):
    image = torch.rand(1, 32, 32)
    waypoints = np.stack([cae.class_centroids[1].numpy() * fraction for fraction in (0.3, 0.6, 1.0)])
    explanation = explain_linear(LinearClassifier(torch.ones(1, 32, 32), 1e6), cae, image, ["normal", "lesion"],
                                 waypoints_for=lambda code, target: waypoints)
    assert explanation.path_kind == "guided" and explanation.steps == 3 and len(explanation.path) == 3
    with torch.no_grad():
        _, individual = cae.encode(image[None])
        expected = cae.decode(torch.as_tensor(waypoints[1])[None].float(), individual)[0].numpy()
    np.testing.assert_allclose(explanation.path[1], expected, atol=1e-6)
    fallback = explain_linear(LinearClassifier(torch.ones(1, 32, 32), 1e6), cae, image, ["normal", "lesion"], steps=4,
                              waypoints_for=lambda code, target: None)
    assert fallback.path_kind == "linear (no guided route)" and fallback.steps == 4


def test_nearest_exemplar_reference_ends_the_path_at_the_closest_target_code(cae):
    from workbench_plugins.counterfactual.explain import nearest_exemplar

    codes = np.array([[0.0, 0.0], [5.0, 5.0], [1.0, 1.0], [-4.0, 3.0]], dtype=np.float32)
    labels = np.array([0, 1, 1, 1])
    reference_for = nearest_exemplar(codes, labels)
    assert reference_for(np.array([0.2, 0.1], dtype=np.float32), 1).tolist() == [1.0, 1.0]  # not the class-0 code at the origin
    assert reference_for(np.array([-3.0, 2.0], dtype=np.float32), 1).tolist() == [-4.0, 3.0]
    with pytest.raises(ConfigError, match="class 2"):
        reference_for(np.zeros(2, dtype=np.float32), 2)
    # in explain_linear the path ends at that code: the last step decodes it with the image's own individual code
    torch.manual_seed(1)
    image = torch.rand(1, 32, 32)
    with torch.no_grad():
        individual = cae.encode(image[None])[1]
    exemplar = torch.randn(8) * 3
    never = LinearClassifier(torch.zeros(32 * 32), threshold=1.0)  # p(class 1) = 1 / (1 + e) everywhere: never flips
    explanation = explain_linear(never, cae, image, ["a", "b"], steps=4,
                                 reference_for=nearest_exemplar(np.stack([np.zeros(8), exemplar.numpy()]), np.array([0, 1])))
    assert not explanation.valid and explanation.target == 1
    with torch.no_grad():
        assert np.allclose(explanation.counterfactual, cae.decode(exemplar[None], individual)[0].numpy(), atol=1e-5)
