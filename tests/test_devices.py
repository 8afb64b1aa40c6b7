"""Device and precision choice at run time."""

from __future__ import annotations

import pytest
import torch

from workbench.devices import autocast, memory_budget_bytes, needs_grad_scaler, select_device, select_precision, torch_dtype


def test_auto_device_matches_hardware(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WORKBENCH_DEVICE", raising=False)
    device = select_device("auto")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert device.type == expected


def test_environment_overrides_auto(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_DEVICE", "cpu")
    assert select_device("auto") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")


def test_cpu_auto_precision_is_fp32_and_explicit_requests_win():
    cpu = torch.device("cpu")
    assert select_precision(cpu, "auto") == "fp32"
    assert select_precision(cpu, "bf16") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        select_precision(cpu, "fp8")
    assert not needs_grad_scaler(cpu, "fp16")
    assert memory_budget_bytes(cpu) is None and memory_budget_bytes(cpu, explicit_bytes=1024) == 1024


def test_autocast_changes_matmul_dtype_only_when_asked():
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(cpu, "fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert (a @ b).dtype == torch_dtype("bf16")
