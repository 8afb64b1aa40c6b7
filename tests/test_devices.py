"""Device and precision choice at run time."""

from __future__ import annotations

import logging

import pytest
import torch

from workbench.devices import (CpuCapabilities, autocast, choose_precision, cpu_capabilities, memory_budget_bytes, needs_grad_scaler,
                               placement_precision, select_device, select_precision, torch_dtype)
from workbench.distributed import DistributedContext
from workbench.train import Trainer, TrainSettings


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


SAPPHIRE_RAPIDS = CpuCapabilities("AVX512", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}), "x86_64")
ZEN4 = CpuCapabilities("AVX512", frozenset({"avx2", "avx512f", "avx512_bf16"}), "x86_64")
ZEN4_FORCED_AVX2 = CpuCapabilities("AVX2", frozenset({"avx2", "avx512f", "avx512_bf16"}), "x86_64")
SKYLAKE_X = CpuCapabilities("AVX512", frozenset({"avx2", "avx512f"}), "x86_64")
ZEN3 = CpuCapabilities("AVX2", frozenset({"avx", "avx2", "fma"}), "x86_64")
GRAVITON3 = CpuCapabilities("SVE256", frozenset({"asimd", "sve", "bf16"}), "aarch64")
GRAVITON2 = CpuCapabilities("DEFAULT", frozenset({"asimd"}), "aarch64")
NO_CPUINFO = CpuCapabilities("DEFAULT", frozenset(), "x86_64")


@pytest.mark.parametrize(
    ("device", "requested", "cpu", "cuda_bf16", "expected", "reason_part"),
    [
        ("cpu", "auto", SAPPHIRE_RAPIDS, None, "bf16", "avx512_bf16/amx_bf16"),
        ("cpu", "auto", ZEN4, None, "bf16", "avx512_bf16"),
        ("cpu", "auto", ZEN4_FORCED_AVX2, None, "fp32", "dispatches AVX2"),
        ("cpu", "auto", SKYLAKE_X, None, "fp32", "emulated"),
        ("cpu", "auto", ZEN3, None, "fp32", "emulated"),
        ("cpu", "auto", GRAVITON3, None, "bf16", "bf16 extension"),
        ("cpu", "auto", GRAVITON2, None, "fp32", "lacks the bf16"),
        ("cpu", "auto", NO_CPUINFO, None, "fp32", "emulated"),
        ("cpu", "fp32", SAPPHIRE_RAPIDS, None, "fp32", "requested"),  # a user can force fp32
        ("cpu", "bf16", ZEN3, None, "bf16", "requested"),
        ("cpu", "fp16", SAPPHIRE_RAPIDS, None, "fp32", "emulated"),  # fp16 never on a CPU
        ("cuda", "auto", ZEN3, True, "bf16", "supports bf16"),
        ("cuda", "auto", SAPPHIRE_RAPIDS, False, "fp16", "lacks bf16"),
        ("cuda", "fp32", ZEN3, True, "fp32", "requested"),
        ("cuda", "fp16", ZEN3, True, "fp16", "requested"),
        ("mps", "auto", ZEN3, None, "fp16", "MPS"),
    ],
)
def test_precision_choice_on_fake_hardware(monkeypatch: pytest.MonkeyPatch, device, requested, cpu, cuda_bf16, expected, reason_part):
    monkeypatch.delenv("WORKBENCH_PRECISION", raising=False)
    choice = choose_precision(torch.device(device), requested, cpu=cpu, cuda_bf16=cuda_bf16)
    assert choice.name == expected
    assert reason_part in choice.reason
    assert choice.as_dict() == {"name": expected, "reason": choice.reason}


def test_environment_overrides_auto_precision_but_not_an_explicit_request(monkeypatch: pytest.MonkeyPatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("WORKBENCH_PRECISION", "bf16")
    choice = choose_precision(cpu, "auto", cpu=ZEN3)
    assert choice.name == "bf16" and "WORKBENCH_PRECISION" in choice.reason
    assert choose_precision(cpu, "fp32", cpu=ZEN3).name == "fp32"
    monkeypatch.setenv("WORKBENCH_PRECISION", "fp8")
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision(cpu, "auto", cpu=ZEN3)


def test_this_machine_auto_follows_its_cpu_flags(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WORKBENCH_PRECISION", raising=False)
    capabilities = cpu_capabilities()
    assert capabilities.isa == torch.backends.cpu.get_cpu_capability()
    native = capabilities.isa.startswith("AVX512") and bool({"avx512_bf16", "amx_bf16"} & capabilities.flags)
    if capabilities.machine in ("aarch64", "arm64"):
        native = "bf16" in capabilities.flags
    assert select_precision(torch.device("cpu"), "auto") == ("bf16" if native else "fp32")


def test_explicit_requests_and_budgets(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WORKBENCH_PRECISION", raising=False)
    cpu = torch.device("cpu")
    assert select_precision(cpu, "bf16") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        select_precision(cpu, "fp8")
    assert not needs_grad_scaler(cpu, "fp16")
    assert memory_budget_bytes(cpu) is None and memory_budget_bytes(cpu, explicit_bytes=1024) == 1024


def test_stored_weights_stay_fp32_on_cpu_under_auto(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_PRECISION", "bf16")  # even where autocast would be bf16
    assert placement_precision(torch.device("cpu"), "auto") == "fp32"
    assert placement_precision(torch.device("cpu"), "bf16") == "bf16"


def test_autocast_changes_matmul_dtype_only_when_asked():
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(cpu, "fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert (a @ b).dtype == torch_dtype("bf16")


def test_bf16_autocast_training_steps_of_the_vessel_unet_on_cpu_stay_finite(caplog: pytest.LogCaptureFixture):
    """Three Trainer steps of a small vessel U-Net with the clDice loss, under CPU bf16 autocast."""
    from workbench_plugins.vessels.losses import build_vessel_loss
    from workbench_plugins.vessels.models import build_network, network_definition
    from workbench_plugins.vessels.jobs import SegmentationStep

    torch.manual_seed(0)
    model = build_network(network_definition("vessel-unet", {"channels": [4, 8, 16], "strides": [2, 2]}))
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    images = torch.rand(3, 2, 3, 32, 32)
    labels = (torch.rand(3, 2, 1, 32, 32) > 0.7).float()
    batches = [{"image": image, "label": label} for image, label in zip(images, labels)]
    seen_dtypes: list[torch.dtype] = []
    model.register_forward_hook(lambda module, inputs, output: seen_dtypes.append(output.dtype))
    settings = TrainSettings(steps=3, batch_size=2, lr=1e-3, warmup_steps=0, log_every=1)
    with caplog.at_level(logging.INFO, logger="workbench.train"):
        trainer = Trainer(model, SegmentationStep(build_vessel_loss("cldice"), False), batches, settings, DistributedContext(),
                          precision="bf16", progress=False)
        result = trainer.fit()
    assert trainer.precision == "bf16" and "precision bf16: bf16 was requested" in caplog.text
    assert seen_dtypes and all(dtype == torch.bfloat16 for dtype in seen_dtypes)  # the convolutions really ran in bf16
    assert result.step == 3 and len(result.history) == 3
    assert all(torch.isfinite(torch.tensor(record["loss"])) and record["loss"] > 0 for record in result.history)
    after = model.state_dict()
    assert all(after[name].dtype == before[name].dtype for name in before)  # autocast leaves the weights fp32
    assert all(torch.isfinite(value).all() for value in after.values() if value.is_floating_point())
    assert any(not torch.equal(before[name], after[name]) for name in before if before[name].is_floating_point())
