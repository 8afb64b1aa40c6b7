"""``workbench eval retrieval|zeroshot|linear-probe``: a stored encoder on held-out pairs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from workbench.checkpoints import seed_everything
from workbench.data.skipped import SkippedRecords
from workbench.devices import select_device
from workbench.model_records import parse_ref
from workbench.model_store import open_store
from workbench.registry import create_model
from workbench.report import HtmlReport, RunFolder, closes_run_logs
from workbench_plugins.contrastive.data import pair_dataset
from workbench_plugins.contrastive.evaluate import encode_pairs, evaluate_encoder, write_evaluation_pages
from workbench_plugins.contrastive.models import ReportImageDualEncoder, dual_encoder_preprocessing
from workbench_plugins.contrastive.jobs.pretrain import load_pair_records
from workbench_plugins.contrastive.settings import EvaluateSettings

logger = logging.getLogger("workbench.contrastive")


def load_encoder(settings: EvaluateSettings) -> tuple[ReportImageDualEncoder, Any, str]:
    """The encoder to evaluate, its preprocessing and a label for pages.

    A stored model comes back with the preprocessing it was trained with (from
    its registry record); ``random: true`` builds the preset with random image
    weights (and the bundled text weights) as the comparison's floor.

    Returns:
        ``(encoder, preprocessing, label)``.
    """
    if settings.random:
        seed_everything(settings.run.seed)
        options = dict(settings.model_options)
        options.setdefault("pretrained_image", None)
        encoder = create_model(settings.model, **options)
        return encoder, dual_encoder_preprocessing(encoder), f"{settings.model} (random image tower)"
    store = open_store(settings.store)
    name, version = parse_ref(settings.model)
    encoder, record = store.load(name, version)
    return encoder, record.preprocessing, f"{record.name}:v{record.version}"


@closes_run_logs
def run_evaluation(settings: EvaluateSettings, builders: Any) -> Path:
    """Evaluate and write the run folder (``metrics.json``, ``index.html``, retrieval pictures).

    Args:
        settings: what to evaluate and on which data.
        builders: the host's dataset-builder catalog.

    Returns:
        The path of the run's ``index.html``.
    """
    run = RunFolder.create("eval", settings.run.output_root, settings.run.name)
    run.attach_log()
    run.save_settings(settings)
    device = select_device(settings.run.device)
    encoder, preprocessing, label = load_encoder(settings)
    encoder = encoder.to(device).eval()
    skipped = SkippedRecords(run.skipped_csv)
    train_records, eval_records = load_pair_records(settings.data, builders, Path(settings.run.output_root), skipped)
    held_out = encode_pairs(encoder, pair_dataset(eval_records, preprocessing, augment=False, cache="none", skipped=skipped),
                            device, settings.eval.batch_size, keep_images=settings.eval.examples)
    train_pairs = None
    if settings.eval.linear_probe:
        train_pairs = encode_pairs(encoder, pair_dataset(train_records, preprocessing, augment=False, cache="none", skipped=skipped),
                                   device, settings.eval.batch_size, keep_images=0)
    metrics = evaluate_encoder(encoder, held_out, train_pairs, settings.eval, device, settings.data.findings, settings.run.seed)
    metrics.update(model=label, skipped_records=len(skipped))
    run.write_metrics({"eval": metrics})
    page = HtmlReport(f"Evaluation of {label}", run.path)
    write_evaluation_pages(page, run, metrics, held_out, preprocessing.mean, preprocessing.std, settings.eval.examples, title=f"Evaluation of {label}")
    page.section("Config", lead="The resolved settings this run used (config.yaml), to repeat it exactly.").preformatted((run.path / "config.yaml").read_text(encoding="utf-8"))
    return page.write()
