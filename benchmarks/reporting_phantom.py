"""Answer-and-explain and report editing on the chest phantoms' held-out split, on a frozen stored encoder.

Run: ``.venv/bin/python benchmarks/reporting_phantom.py [--encoder NAME[:VERSION]] [--store DIR] [--grounding-head NAME]
[--explainer-set KEY=VALUE ...] [--editor-set KEY=VALUE ...] [KEY=VALUE ...]``

1. Explainer: ``workbench report train --config configs/report_phantom.yaml``: a compact
   transformer decoder over the encoder's patch tokens generates "<answer> because
   <explanation>" for five "Is there ...?" questions and "What is the main finding?"
   per image. Scored on held-out images: answer accuracy, BLEU-4 / ROUGE-L of the
   explanation against the report sentence (sacrebleu / rouge-score), consistency
   (the explanation says what the answer says) and faithfulness (the grounding
   head's heatmap of the explanation peaks inside the named finding's mask; the
   finding masks alone when no grounding head trained on this encoder is stored).
2. Editor: ``workbench report train --config configs/report_edit_phantom.yaml``: draft
   encoder + decoder with a pointer-generator copy mechanism, trained to restore
   true reports from drafts with one injected error. Scored on held-out drafts
   (one per image, a tenth left correct): share of injected errors fixed, share of
   correct sentences changed (damage), BLEU-4 / ROUGE-L of edit and of draft
   against the true report.

``--explainer-run DIR`` reuses a finished explainer run and ``--resume-editor DIR``
continues a stopped editor run (``workbench report train --resume``); then CPU
seconds count only the part run by this call. Each step runs in its own process; CPU seconds are the child processes' user +
system time (``resource.getrusage``), wall seconds are also given. Extra
``KEY=VALUE`` arguments go to both runs, ``--explainer-set`` / ``--editor-set`` to
one. Results: ``benchmarks/results/reporting_phantom.json`` with
``answer_accuracy``, ``explanation_bleu4``, ``edit_fix_rate``, ``edit_damage_rate``
and the details.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench_util import run_workbench

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "reporting_phantom.json"
EXPLAIN_CONFIG = REPO_ROOT / "configs" / "report_phantom.yaml"
EDIT_CONFIG = REPO_ROOT / "configs" / "report_edit_phantom.yaml"


def finished(run: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metrics of a finished ``report train`` run folder (reused instead of training again)."""
    saved = json.loads((REPO_ROOT / run / "metrics.json").read_text(encoding="utf-8"))
    return saved["reporting"], {"command": f"(reused finished run {run})", "run": run, "history_last": saved.get("history", [])[-1:]}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(config: Path, overrides: list[str], resume: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one ``workbench report train`` (or continue the run ``resume``); returns (its metrics, {command, run, wall and CPU seconds})."""
    arguments = ["report", "train", *(["--resume", resume] if resume else ["--config", str(config.relative_to(REPO_ROOT))]), *overrides]
    cpu = _children_cpu()
    index, wall = run_workbench(arguments)
    saved = json.loads((index.parent / "metrics.json").read_text(encoding="utf-8"))
    timing = {"command": "workbench " + " ".join(arguments), "run": str(index.parent.relative_to(REPO_ROOT)), "wall_seconds": round(wall, 1),
              "cpu_seconds": round(_children_cpu() - cpu, 1)}
    return saved["reporting"], dict(timing, history_last=saved.get("history", [])[-1:])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=None, help="stored encoder name[:version] (default: the configs')")
    parser.add_argument("--store", default=None, help="model store folder (default: the user's)")
    parser.add_argument("--grounding-head", default=None, help="stored grounding head for faithfulness (default: the config's)")
    parser.add_argument("--explainer-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--editor-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--explainer-run", default=None, help="reuse this finished explainer run folder instead of training one")
    parser.add_argument("--resume-editor", default=None, help="continue this stopped editor run folder (workbench report train --resume)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    common = list(args.overrides)
    if args.encoder:
        common.append(f"encoder.name={args.encoder}")
    if args.store:
        common.append(f"encoder.store={args.store}")
    explainer_overrides = [*common, "save.name=report-bench-explainer", *args.explainer_set]
    if args.grounding_head:
        explainer_overrides.append(f"faithfulness.grounding_head={args.grounding_head}")
    editor_overrides = [*common, *([] if args.resume_editor else ["save.name=report-bench-editor"]), *args.editor_set]
    results: dict[str, Any] = {
        "benchmark": "reporting_phantom", "python": sys.version.split()[0], "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    explained, explain_run = finished(args.explainer_run) if args.explainer_run else train(EXPLAIN_CONFIG, explainer_overrides)
    results.update({
        "answer_accuracy": explained["answer_accuracy"], "explanation_bleu4": explained["explanation_bleu4"],
        "explanation_rouge_l": explained["explanation_rouge_l"], "faithfulness_rate": explained["faithfulness_rate"],
        "faithfulness_source": explained["faithfulness_source"], "consistency_rate": explained["consistency_rate"],
        "explainer": {**explained, **explain_run},
    })
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    edited, edit_run = train(EDIT_CONFIG, editor_overrides, args.resume_editor)
    results.update({
        "edit_fix_rate": edited["edit_fix_rate"], "edit_damage_rate": edited["edit_damage_rate"], "edit_bleu4": edited["edit_bleu4"],
        "edit_rouge_l": edited["edit_rouge_l"], "draft_bleu4": edited["draft_bleu4"], "editor": {**edited, **edit_run},
        "cpu_seconds_total": round(explain_run.get("cpu_seconds", 0.0) + edit_run["cpu_seconds"], 1),
        "settings": {"explainer_config": str(EXPLAIN_CONFIG.relative_to(REPO_ROOT)), "explainer_overrides": explainer_overrides,
                     "editor_config": str(EDIT_CONFIG.relative_to(REPO_ROOT)), "editor_overrides": editor_overrides,
                     "targets": {"answer_accuracy": ">= 0.9", "edit_fix_rate": ">= 0.8", "edit_damage_rate": "<= 0.05"}},
    })
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({key: results[key] for key in ("answer_accuracy", "explanation_bleu4", "faithfulness_rate", "edit_fix_rate",
                                                     "edit_damage_rate", "cpu_seconds_total")}, indent=2))
    return results


if __name__ == "__main__":
    main()
