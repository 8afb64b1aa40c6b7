"""The foundation's sections of the demo page: loaded plugins and the phantoms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from workbench.report import FINDING_COLOURS, HtmlReport, RunFolder, draw_boxes, overlay_mask, save_png


def add_plugin_section(report: HtmlReport, host: Any) -> None:
    """Add a table of the loaded plugins (name, version, source, hooks, error)."""
    rows = []
    for info in host.plugin_report():
        rows.append(
            {
                "plugin": info["name"],
                "version": info["version"],
                "source": info["source"],
                "hooks": ", ".join(hook.removeprefix("workbench_") for hook in info["hooks"]),
                "status": "ok" if info["error"] is None else f"FAILED: {info['error']}",
            }
        )
    failed = sum(info["error"] is not None for info in host.plugin_report())
    report.section("Loaded plugins", lead=f"The {len(rows)} plugins the host loaded ({failed} failed), the hooks each implements, "
                   "and the models they register.").table(rows)
    grouped: dict[tuple[str, str], list[str]] = {}
    names = host.models.list_models()
    for name in names:
        entry = host.models.entry(name)
        grouped.setdefault((entry.task, entry.plugin), []).append(name)
    if grouped:
        report.text(f"{len(names)} registered models, by task:")
        report.table([{"task": task, "plugin": plugin, "models": ", ".join(models)} for (task, plugin), models in sorted(grouped.items())])


def _label_colour_overlay(image: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """Overlay every non-zero label of a ``(H, W)`` label map in its own colour."""
    overlaid = image
    for label in [value for value in np.unique(label_map) if value != 0]:
        overlaid = overlay_mask(overlaid, label_map == label, FINDING_COLOURS[(int(label) - 1) % len(FINDING_COLOURS)])
    return overlaid


def add_phantom_sections(report: HtmlReport, run: RunFolder, cxr_manifest: Path, fundus_manifest: Path, shown: int = 6) -> None:
    """Show the first ``shown`` chest studies (DICOM read back, masks, boxes, report) and fundus images."""
    from workbench.data.manifests import read_manifest
    from workbench.data.masks import read_binary_mask
    from workbench.data.readers import read_image

    studies = read_manifest(cxr_manifest)
    report.section(f"Chest phantoms ({len(studies)} studies)",
                   lead=f"The first {min(shown, len(studies))} of the {len(studies)} synthetic chest studies every later step "
                   "trains and tests on: each radiograph read back from its DICOM file, beside its ground truth and report.")
    report.text(
        "Each row: the image; the exact finding masks (coloured) with one box per finding phrase (green); "
        "the report written from the findings."
    )
    for record in studies[:shown]:
        image, _ = read_image(record["image"])
        label_map, _ = read_image(record["mask"], intensity="stored")
        coloured = _label_colour_overlay(image[0], label_map[0].astype(int))
        overlay = draw_boxes(coloured, record.get("boxes", []), label_key="category")
        figure = save_png(run.file(f"figures/cxr_{record['id']}.png"), overlay)
        plain = save_png(run.file(f"figures/cxr_{record['id']}_image.png"), image[0])
        findings = ", ".join(record.get("findings", [])) or "no finding"
        report.figures([(plain, f"{record['id']} (DICOM)"), (figure, f"findings: {findings}")], aside=record["report"])

    images = read_manifest(fundus_manifest)
    report.section(f"Fundus phantoms ({len(images)} images)",
                   lead=f"The first {min(shown, len(images))} of the {len(images)} synthetic fundus photographs the vessel step "
                   "trains and tests on, each beside its exact vessel mask.")
    report.text("Each image is followed by its vessel mask (red) with the field-of-view outline.")
    items = []
    for record in images[:shown]:
        image, _ = read_image(record["image"])
        overlay = overlay_mask(image, read_binary_mask(record["mask"]), (230, 25, 75), alpha=0.6)
        items.append((save_png(run.file(f"figures/fundus_{record['id']}_image.png"), image), f"{record['id']}"))
        items.append((save_png(run.file(f"figures/fundus_{record['id']}_vessels.png"), overlay), f"{record['id']} vessels"))
    report.figures(items)
