"""``benchmarks/pretrain_vs_open_clip.py --tiny`` end to end: both trainers, every row, equal context length."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.kill_resume import REPO_ROOT

pytest.importorskip("pandas", reason="open_clip's trainer needs the bench extra (pip install -e '.[bench]')")
pytest.importorskip("braceexpand", reason="open_clip's trainer needs the bench extra (pip install -e '.[bench]')")
pytest.importorskip("webdataset", reason="open_clip's trainer needs the bench extra (pip install -e '.[bench]')")


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("pretrain_vs_open_clip", REPO_ROOT / "benchmarks" / "pretrain_vs_open_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_benchmark_writes_every_row_at_equal_context_length(tmp_path: Path):
    out = tmp_path / "result.json"
    assert _benchmark_module().main(["--tiny", "--folder", str(tmp_path / "work"), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    summary_keys = {"ours_samples_per_s", "open_clip_samples_per_s", "ratio", "ours_mfu", "open_clip_mfu", "context_length",
                    "fp32_ratio", "bf16_ratio", "auto_vs_open_clip_fp32_ratio", "auto_vs_open_clip_default_ratio"}
    assert summary_keys <= set(written) and "cpu" in written
    result = written["cpu"]
    assert written["context_length"] == result["context_length"] == 77
    assert set(result["matmul_peak_gflops"]) == {"fp32", "bf16", "fp16"} and min(result["matmul_peak_gflops"].values()) > 0
    rows = result["rows"]
    assert set(rows) == {"fp32", "bf16", "auto_vs_open_clip_default", "auto_vs_open_clip_fp32"}
    assert (rows["fp32"]["ours"]["precision"], rows["fp32"]["open_clip"]["open_clip_precision"]) == ("fp32", "fp32")
    assert (rows["bf16"]["ours"]["precision"], rows["bf16"]["open_clip"]["open_clip_precision"]) == ("bf16", "amp_bf16")
    assert rows["auto_vs_open_clip_default"]["open_clip"]["open_clip_precision"] == "amp"
    assert rows["auto_vs_open_clip_fp32"]["ours"]["precision"] == result["auto_precision"]["name"]
    for row in rows.values():
        for side in (row["ours"], row["open_clip"]):
            # MFU only > 0: an emulated precision's kernels differ from the one matmul its peak is measured on.
            assert side["samples_per_s"] > 0 and side["mfu"] > 0
            assert side["spread"][0] <= side["samples_per_s"] <= side["spread"][1]
        assert row["ratio"] == pytest.approx(row["ours"]["samples_per_s"] / row["open_clip"]["samples_per_s"])
    assert written["fp32_ratio"] == rows["fp32"]["ratio"] and written["bf16_ratio"] == rows["bf16"]["ratio"]
    # The same step count on both sides (64 images = 2 batches an epoch; open_clip runs whole epochs).
    assert len(rows["fp32"]["ours"]["step_rates"][0]) + 1 == len(rows["fp32"]["open_clip"]["step_rates"][0]) == 4
    # Both trainers really ran at context length 77: open_clip's own parameter dump, our resolved config.
    params = [path.read_text() for path in (tmp_path / "work" / "open_clip_logs").glob("*/params.txt")]
    assert len(params) == 3 and all("force_context_length: 77" in text for text in params)
    configs = [yaml.safe_load(path.read_text()) for path in (tmp_path / "work" / "ours_runs").glob("*/config.yaml")]
    assert len(configs) == 2 and all(config["model"]["options"]["context_length"] == 77 for config in configs)
    assert sorted(config["run"]["precision"] for config in configs) == ["bf16", "fp32"]
