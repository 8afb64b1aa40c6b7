"""``workbench vessels train|evaluate|predict`` and ``export-bundle`` end to end on tiny fundus phantoms."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from pydicom.data import get_testdata_file

from workbench.cli import build_cli
from workbench.errors import EXIT_SOME_INPUTS_FAILED
from workbench.host import create_plugin_manager
from tests.helpers.kill_resume import assert_same_tensors
from workbench.model_store import ModelStore
from workbench_plugins.vessels.topology.masks import fov_from_fundus

TINY = ["data.options={n: 6, size: 64, seed: 2}", "data.patch_size=32", "data.patches_per_image=4",
        "model.options={channels: [8, 16, 32], strides: [2, 2]}", "train.batch_size=8", "train.warmup_steps=0",
        "train.log_every=1", "inference.roi_size=64", "run.device=cpu"]


def invoke(arguments: list[str], status: int = 0) -> Path:
    host = create_plugin_manager()
    result = CliRunner().invoke(build_cli(host), arguments, obj=host, catch_exceptions=False)
    assert result.exit_code == status, result.output
    return Path(result.output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("vessels")
    common = [f"run.output_root={root / 'runs'}", f"data.root={root / 'data'}", f"save.store={root / 'store'}", *TINY]
    index = invoke(["vessels", "train", "--config", "configs/vessels_phantom.yaml", "train.steps=4", "train.checkpoint_every=2",
                    "run.name=first", "data.normalisation=fov-extend", *common])
    return {"root": root, "common": common, "index": index, "metrics": json.loads((index.parent / "metrics.json").read_text())}


def test_train_scores_held_out_images_stores_the_network_and_writes_the_page(trained):
    metrics, index = trained["metrics"], trained["index"]
    assert metrics["steps"] == 4 and metrics["loss"] == "cldice"
    assert metrics["images"], "no held-out image was scored"
    for row in metrics["images"]:
        assert 0.0 <= row["dice"] <= 1.0 and 0.0 <= row["cldice"] <= 1.0 and row["betti0_error"] >= 0
        assert (index.parent / "figures" / f"{row['id']}.png").is_file()
    means = metrics["mean"]
    assert means["dice"] == pytest.approx(np.mean([row["dice"] for row in metrics["images"]]))
    page = index.read_text()
    assert "Per image, worst Betti-0 error first" in page and "figures/" in page
    store = ModelStore(trained["root"] / "store")
    record = store.resolve("vessels-phantom")
    assert metrics["stored_model"] == f"vessels-phantom:v{record.version}"
    assert record.task == "segmentation" and record.extra["roi_size"] == 64 and record.preprocessing.channels == 3
    assert record.preprocessing.extra["normalisation"] == "fov-extend"


def test_ctrl_c_then_resume_reaches_the_same_weights_as_an_uninterrupted_run(trained):
    from safetensors.torch import load_file

    from workbench.checkpoints import latest_checkpoint
    from workbench.config import load_settings
    from workbench_plugins.vessels.jobs import run_train
    from workbench_plugins.vessels.settings import VesselTrainSettings

    root, host = trained["root"], create_plugin_manager()

    def settings(name: str) -> VesselTrainSettings:
        return load_settings(VesselTrainSettings, Path("configs/vessels_phantom.yaml"),
                             [*trained["common"], "train.steps=6", "train.checkpoint_every=5", f"run.name={name}", "save.name=null"])

    def interrupt_at_4(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the step finishes, a checkpoint is written, the job stops

    straight = run_train(settings("straight"), host.datasets.builders, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_train(settings("stopped"), host.datasets.builders, progress=False, after_optimizer_step=interrupt_at_4)
    stopped_dir = root / "runs" / "vessels-train-stopped"
    assert latest_checkpoint(stopped_dir / "checkpoints").name == "step-00000004"
    resumed = run_train(settings("stopped"), host.datasets.builders, resume=stopped_dir, progress=False)
    assert straight.steps == resumed.steps == 6
    weights = [load_file(str(latest_checkpoint(outcome.run.checkpoint_dir) / "model.safetensors")) for outcome in (straight, resumed)]
    assert_same_tensors(*weights)
    assert resumed.rows and [row["dice"] for row in resumed.rows] == [row["dice"] for row in straight.rows]


def test_evaluate_and_small_component_removal_lower_the_component_count(trained):
    common = trained["common"]  # the training config and overrides, as a user would pass them again
    plain = invoke(["vessels", "evaluate", "--config", "configs/vessels_phantom.yaml", "run.name=eval-plain", *common])
    cleaned = invoke(["vessels", "evaluate", "--config", "configs/vessels_phantom.yaml", "weights=vessels-phantom:latest",
                      "run.name=eval-clean", *common, "inference.min_component_area=20"])
    plain_rows = json.loads((plain.parent / "metrics.json").read_text())["images"]
    clean_rows = json.loads((cleaned.parent / "metrics.json").read_text())["images"]
    assert [row["id"] for row in plain_rows] == [row["id"] for row in clean_rows]
    # evaluate reads the stored normalisation (not given again here): the same scores as the training job's
    trained_dice = {row["id"]: row["dice"] for row in trained["metrics"]["images"]}
    assert {row["id"]: row["dice"] for row in plain_rows} == pytest.approx(trained_dice, abs=1e-6)
    for before, after in zip(plain_rows, clean_rows):
        assert after["n_components"] <= before["n_components"]
    # bridging after the same removal: the kept pieces are joined, never split, so no more components than removal alone
    bridged = invoke(["vessels", "evaluate", "--config", "configs/vessels_phantom.yaml", "weights=vessels-phantom:latest",
                      "run.name=eval-bridged", *common, "inference.min_component_area=20", "inference.bridge_max_cost=10"])
    bridged_rows = json.loads((bridged.parent / "metrics.json").read_text())["images"]
    for removed, joined in zip(clean_rows, bridged_rows):
        assert joined["n_components"] <= removed["n_components"]
    assert "fragments bridged to their neighbours along paths of cost" in bridged.read_text()  # the page says how masks were made


def test_predict_writes_png_nifti_and_dicom_seg_and_skips_a_bad_file(trained, tmp_path):
    root = trained["root"]
    phantom_image = next((root / "data" / "images").glob("*.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    dicom = Path(get_testdata_file("CT_small.dcm"))
    index = invoke(["vessels", "predict", "weights=vessels-phantom:latest",
                    f"save.store={root / 'store'}", f"run.output_root={tmp_path}", "run.device=cpu", "inference.roi_size=64",
                    f"inputs=[{phantom_image}, {dicom}, {broken}]"], status=EXIT_SOME_INPUTS_FAILED)
    metrics = json.loads((index.parent / "metrics.json").read_text())
    rows = {row["id"]: row for row in metrics["images"]}
    assert set(rows) == {phantom_image.stem, dicom.stem}
    assert "dice" not in rows[phantom_image.stem] and rows[phantom_image.stem]["n_components"] >= 0
    mask_png = index.parent / rows[phantom_image.stem]["mask_png_file"]
    outside = ~fov_from_fundus(np.asarray(Image.open(phantom_image).convert("RGB")))
    assert outside.any() and not np.asarray(Image.open(mask_png))[outside].any()  # no vessel outside the field of view
    assert (index.parent / rows[phantom_image.stem]["mask_nifti_file"]).is_file()
    assert (index.parent / rows[dicom.stem]["dicom_seg_file"]).is_file()
    skipped = (index.parent / "skipped.csv").read_text()
    assert "broken.png" in skipped
    assert "broken.png" in index.read_text()


def test_export_bundle_of_the_trained_network(trained, tmp_path):
    out = tmp_path / "bundle"
    host = create_plugin_manager()
    result = CliRunner().invoke(build_cli(host), ["export-bundle", "vessels-phantom:latest", str(out), "--store", str(trained["root"] / "store")],
                                obj=host, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    inference = json.loads((out / "configs" / "inference.json").read_text())
    assert {"network_def", "preprocessing", "inferer", "postprocessing"} <= set(inference)
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    stored, _ = ModelStore(trained["root"] / "store").load_state_dict("vessels-phantom")
    assert state.keys() == stored.keys()
