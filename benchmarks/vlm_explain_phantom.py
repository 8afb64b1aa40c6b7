"""Explaining a dual encoder on the chest phantoms' test split: concepts behind its decisions, similarity maps.

Run: ``workbench bench vlm_explain_phantom [--tiny] [--model encoder=NAME[:VERSION] --store DIR]``
(or ``.venv/bin/python benchmarks/vlm_explain_phantom.py [--model NAME[:VERSION] --store DIR] [--tiny] [KEY=VALUE ...]``).

0. The dual encoder: pretrained in one go from ``configs/pretrain_phantom.yaml`` into a fresh store, unless the user
   names a stored one. Nothing is tuned here: the config's decomposition is scored, the ablations beside it.

1. Decisions (every held-out image with findings; the classes are the five findings): the zero-shot decision, its
   concepts from the concept bank (``configs/concepts_cxr.txt``; mined from the training reports first when missing),
   and whether the top concept of a correct decision names the finding that is there (``top_concept_correct``; the
   issue's target is >= 0.8), with two references: the top concept by image weight alone, and a null that ranks
   each decision's concepts with another image's weights (how much of the score the image carries). The deletion test: the chosen class's probability as the top-k concepts' directions
   are projected out of the image embedding, against k random concepts (areas under the curves, lower = bigger
   effect). Run for the configured decomposition and, as ablations, ``nnls`` and image centring (SpLiCE).
2. Similarity maps (the first ``data.max_map_images`` held-out images): for the report sentence holding each box's
   phrase, the share of each map's positive mass inside the box: pairwise occlusion and Interaction-CAM (this
   plugin) against the grounding plugin's zero-shot heatmaps of the same sentence (occlusion and patch similarity),
   and the box's share of the image (a uniform map's score).

Extra ``KEY=VALUE`` arguments override ``configs/vlm_explain_phantom.yaml`` (e.g. ``data.max_images=60``).
Results: ``benchmarks/results/vlm_explain_phantom.json``. ``--tiny``: two pretraining steps, 40 phantoms (a smoke test).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench_util import PRETRAIN_CONFIG, REPO_ROOT, cxr_phantoms, pretrain_encoder, run_overrides, tiny_cxr_data

RESULTS = REPO_ROOT / "benchmarks" / "results" / "vlm_explain_phantom.json"
CONFIG = REPO_ROOT / "configs" / "vlm_explain_phantom.yaml"
BENCHMARK = {"name": "vlm_explain_phantom", "models": ["encoder"], "cpu_budget_minutes": 30,
             "configs": ["configs/pretrain_phantom.yaml", "configs/vlm_explain_phantom.yaml", "configs/concepts_cxr.txt"],
             "measures": "concept explanations of a dual encoder's zero-shot decisions (top concept correct, deletion test) and "
                         "similarity maps' energy in the finding box, on the test phantoms"}
TINY = ["data.max_images=8", "data.max_map_images=2", "concepts.reference_images=8", "deletion.random_draws=2"]


def decision_variants(settings: Any) -> dict[str, Any]:
    """The configured decomposition plus the ablations: name -> ConceptSettings."""
    base = settings.concepts
    variants = {f"{base.method}{'+centred' if base.centre_images else ''} (configured)": base}
    variants.setdefault("nnls", base.model_copy(update={"method": "nnls", "centre_images": False}))
    variants.setdefault(f"{base.method}+centred", base.model_copy(update={"centre_images": True}))
    return variants


def shuffled_image_null(explained: list[Any], rows: list[dict[str, Any]], explainer: Any, settings: Any, seed: int = 0) -> float | None:
    """``top_concept_correct`` when each correct decision's concepts are ranked with another (random) image's weights.

    The contribution is weight x class margin; a bank that holds the class names gives those a large margin, so the
    top concept may name the chosen class whatever the image. This null says how much of the score the image carries.
    """
    from workbench_plugins.vlm_explain.decomposition import class_margins
    from workbench_plugins.vlm_explain.metrics import names_class

    rng = np.random.default_rng(seed)
    hits = []
    for index, (decision, row) in enumerate(zip(explained, rows)):
        if not row.get("correct"):
            continue
        other = int(rng.choice([j for j in range(len(explained)) if j != index]))
        margins = class_margins(explainer.space.directions, explainer.class_vectors, decision.chosen)
        contributions = explained[other].image_weights * margins
        top = int(np.argmax(contributions))
        hits.append(contributions[top] > 0 and names_class(decision.concepts[top], decision.chosen_class, settings.finding_keywords))
    return float(np.mean(hits)) if hits else None


def run(out_path: Path, tiny: bool = False, *, work_dir: Path = REPO_ROOT / "runs" / "bench" / "vlm_explain_phantom",
        models: dict[str, str] | None = None, store: Path | None = None, overrides: list[str] = (), **_: object) -> dict[str, Any]:
    """Pretrain (or take) the dual encoder, explain its decisions on the test phantoms, write the JSON."""
    from workbench.builtin import build_cxr_phantoms
    from workbench.config import load_settings
    from workbench.provenance import Provenance
    from workbench_plugins.contrastive.settings import PretrainSettings
    from workbench.data.readers import read_image
    from workbench.data.skipped import SkippedRecords
    from workbench.host import create_plugin_manager
    from workbench_plugins.grounding.encoder import GroundingEncoder
    from workbench_plugins.grounding.zero_shot import ground_phrases
    from workbench_plugins.vlm_explain.explain import Explainer, ImageExplanation
    from workbench_plugins.vlm_explain.jobs import build_explainer, load_records, reference_images, run_build_concepts
    from workbench_plugins.vlm_explain.metrics import aggregate_rows, report_sentence_for, score_record
    from workbench_plugins.vlm_explain.settings import ExplainSettings
    from workbench_plugins.vlm_explain.similarity_maps import box_area_fraction, energy_in_box

    models, store = dict(models or {}), Path(store or work_dir / "store")
    provenance = Provenance("vlm_explain_phantom", tiny=tiny)
    encoder_ref, pretrain = pretrain_encoder(provenance, work_dir, store, tiny, models, name="vlm-explain-bench-encoder")
    # The phantoms the encoder was pretrained on (written now when the user brought the encoder): their manifest.
    pretrain_data = load_settings(PretrainSettings, REPO_ROOT / PRETRAIN_CONFIG, tiny_cxr_data(work_dir) if tiny else []).data
    n, seed, size = cxr_phantoms(pretrain_data)
    data_root = Path(pretrain_data.root or work_dir / "data" / "phantom-cxr")
    build_cxr_phantoms(data_root, n=n, seed=seed, size=size)
    if "encoder" in models:
        provenance.phantoms("phantom-cxr", n, seed, size, used_for="explained (test) and centring references (train)")
    overrides = [*run_overrides(work_dir, tiny), f"model.name={encoder_ref}", f"model.store={store}",
                 f"data.manifest={data_root / 'manifest.jsonl'}", *(TINY if tiny else []), *overrides]
    provenance.config(CONFIG)
    create_plugin_manager()  # the registry needs the plugins' model factories
    settings = load_settings(ExplainSettings, CONFIG, overrides)
    bank = settings.concepts.bank if settings.concepts.bank.is_absolute() else REPO_ROOT / settings.concepts.bank
    if settings.data.manifest is not None and not settings.data.manifest.is_absolute():
        settings.data.manifest = REPO_ROOT / settings.data.manifest
    if not bank.is_file():
        run_build_concepts(settings.data.manifest, bank, splits=["train"])
    else:
        provenance.config(bank)
    settings.concepts.bank = bank
    skipped = SkippedRecords()
    chosen, records = load_records(settings)
    references = reference_images(settings.model_copy(update={"concepts": settings.concepts.model_copy(update={"centre_images": True})}),
                                  records, skipped)
    started = time.perf_counter()

    # 1. decisions, for each decomposition variant (the image embeddings are computed once)
    variants = decision_variants(settings)
    if tiny:  # the configured decomposition alone: each variant embeds the whole concept bank again
        variants = dict(list(variants.items())[:1])
    explainers: dict[str, Explainer] = {
        name: build_explainer(settings.model.name, settings.model.store, bank, settings.classes, concepts, settings.deletion,
                              settings.maps.model_copy(update={"regions": 0}), settings.run.device, settings.run.seed,
                              references if concepts.centre_images else ())
        for name, concepts in variants.items()}
    first = next(iter(explainers.values()))
    encoder = first.encoder
    images: list[tuple[dict[str, Any], np.ndarray]] = []
    for record in chosen:
        try:
            images.append((record, read_image(record.get(settings.data.image_key) or record["image"])[0]))
        except Exception as error:  # noqa: BLE001 - a bad record is reported and skipped, never fatal
            skipped.add(record, error)
    batches = [[image for _, image in images[start:start + 64]] for start in range(0, len(images), 64)]
    embeddings = np.concatenate([encoder.encode_images(encoder.prepare_images(batch)).cpu().numpy() for batch in batches])
    decisions: dict[str, Any] = {}
    for name, explainer in explainers.items():
        explained = [explainer.decide(embedding) for embedding in embeddings]
        rows = [score_record(record, ImageExplanation(decision), settings.classes, settings.finding_keywords, [], image.shape[-2:])
                for (record, image), decision in zip(images, explained)]
        decisions[name] = dict(aggregate_rows(rows), top_concept_correct_shuffled_image_null=shuffled_image_null(explained, rows, explainer,
                                                                                                               settings))
    decision_seconds = time.perf_counter() - started

    # 2. similarity maps for the sentence of each finding box, against the grounding plugin's heatmaps
    grounding = GroundingEncoder(encoder.model, encoder.record, encoder.device)
    map_rows: list[dict[str, Any]] = []
    map_started = time.perf_counter()
    budget = settings.data.max_map_images if settings.data.max_map_images is not None else len(images)
    for record, image in images[:budget]:
        if not record.get("boxes"):
            continue
        texts = [report_sentence_for(str(record.get("report") or ""), box["phrase"]) for box in record["boxes"]]
        size = tuple(int(s) for s in image.shape[-2:])
        maps = first.similarity_maps(encoder.prepare_images([image]), texts, size)
        grounded = {method: ground_phrases(grounding, image, texts, method=method, window=settings.maps.window,
                                           overlap=settings.maps.overlap) for method in ("occlusion", "similarity")}
        for index, (box, item) in enumerate(zip(record["boxes"], maps)):
            map_rows.append({"id": record["id"], "category": box["category"], "text": item.text,
                             "box_area": box_area_fraction(box, size), "occlusion": energy_in_box(item.occlusion, box),
                             "interaction_cam": energy_in_box(item.cam, box),
                             "grounding_occlusion": energy_in_box(grounded["occlusion"][index], box),
                             "grounding_similarity": energy_in_box(grounded["similarity"][index], box)})
    map_seconds = time.perf_counter() - map_started
    keys = ("occlusion", "interaction_cam", "grounding_occlusion", "grounding_similarity", "box_area")

    def energy_means(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {**{key: (float(np.mean([row[key] for row in rows])) if rows else None) for key in keys}, "boxes": len(rows)}

    configured = decisions[next(iter(decisions))]
    decision_keys = ("images", "decision_recall", "correct_decisions", "top_concept_correct", "top_weight_concept_correct")
    per_finding = {name: {key: values.get(key) for key in decision_keys} for name, values in configured["per_finding"].items()}
    for name in {row["category"] for row in map_rows}:
        per_finding.setdefault(name, {})["similarity_energy_in_box"] = energy_means([row for row in map_rows if row["category"] == name])
    results = {
        "model": encoder.describe(), "pretrain": pretrain,
        "top_concept_correct": configured["top_concept_correct"],
        "top_concept_names_present": configured["top_concept_names_present"],
        "top_weight_concept_correct": configured["top_weight_concept_correct"],
        "chance_concept_correct": configured["chance_concept_correct"],
        "top_concept_correct_shuffled_image_null": configured["top_concept_correct_shuffled_image_null"],
        "decision_accuracy": configured["decision_accuracy"],
        "deletion_auc_topk": configured["deletion_auc_topk"],
        "deletion_auc_random": configured["deletion_auc_random"],
        "deletion_topk_below_random": configured["deletion_topk_below_random"],
        "mutual_knowledge": configured["mutual_knowledge"],
        "similarity_energy_in_box": energy_means(map_rows),
        "images": configured["images"], "images_with_findings": configured["images_with_findings"],
        "correct_decisions": configured["correct_decisions"],
        "per_finding": per_finding,
        "decomposition_variants": {name: {key: values[key] for key in (
            "top_concept_correct", "top_concept_correct_shuffled_image_null", "top_concept_names_present", "top_weight_concept_correct",
            "deletion_auc_topk", "deletion_auc_random", "deletion_topk_below_random",
            "mutual_knowledge", "top_k_overlap")} for name, values in decisions.items()},
        "settings": {"config": str(CONFIG.relative_to(REPO_ROOT)), "overrides": overrides, "classes": settings.classes,
                     "concept_bank": str(bank.relative_to(REPO_ROOT)) if bank.is_relative_to(REPO_ROOT) else str(bank),
                     "concepts": len(first.space.concepts), "decomposition": settings.concepts.model_dump(mode="json"),
                     "deletion": settings.deletion.model_dump(mode="json"), "maps": settings.maps.model_dump(mode="json"),
                     "splits": settings.data.splits, "map_images": min(budget, len(images)),
                     "reference_images_for_centring": len(references)},
        "skipped_records": len(skipped),
        "seconds": {"decisions": round(decision_seconds, 1), "maps": round(map_seconds, 1)},
    }
    provenance.write(out_path, results, scored_split="+".join(settings.data.splits))
    print(f"top_concept_correct {results['top_concept_correct']}, deletion AUC top-k {results['deletion_auc_topk']} vs random "
          f"{results['deletion_auc_random']}, energy in box {results['similarity_energy_in_box']} -> {out_path}")
    return results


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="stored dual encoder name[:version] (with --store; default: pretrain one)")
    parser.add_argument("--store", type=Path, default=None, help="model store folder (default: a fresh one under runs/bench)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results JSON (default benchmarks/results/vlm_explain_phantom.json)")
    parser.add_argument("--tiny", action="store_true", help="two pretraining steps on 40 phantoms (a smoke test)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of configs/vlm_explain_phantom.yaml")
    arguments = parser.parse_args(argv)
    run(arguments.out, arguments.tiny, models={"encoder": arguments.model} if arguments.model else {}, store=arguments.store,
        overrides=arguments.overrides)


if __name__ == "__main__":
    main()
