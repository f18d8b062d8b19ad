"""Training and serving precision: bf16 only where native, fp16 with loss scaling otherwise.

CPU autocast computes in bf16 and fp16 the way CUDA autocast does, and GradScaler runs on the
CPU, so the fp16 path of the loop runs here; the GPU's compute capability is faked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_trainer_model import save_tiny_bert, sentiment_rows
from torch import nn

from adalora_core.checkpoint import latest_checkpoint, load_checkpoint
from adalora_core.config import AdaLoraConfig
from adalora_core.errors import ConfigError
from adalora_core.layers import SVDLinear
from adalora_core.precision import MixedPrecision, native_bf16, training_precision
from adalora_core.run_plan import plan_run
from adalora_core.tasks import TaskSpec
from adalora_core.trainer import train
from adalora_core.training_config import TrainingConfig
from application.engine_factory import serving_dtype

CUDA = torch.device("cuda:0")
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")]
)
def test_auto_picks_bf16_only_on_gpus_that_compute_it_natively(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: str
) -> None:
    # A Turing card (7.5) reports is_bf16_supported() True through emulation: not the test.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert training_precision("auto", CUDA) == expected
    assert native_bf16(CUDA) == (expected == "bf16")
    serving = serving_dtype("bfloat16", CUDA)
    assert serving is (torch.bfloat16 if expected == "bf16" else torch.float32)


def test_auto_is_fp32_on_the_cpu_and_explicit_choices_pass_through() -> None:
    assert training_precision("auto", CPU) == "fp32"
    assert training_precision("fp16", CPU) == "fp16"
    with pytest.raises(ValueError, match="precision"):
        training_precision("fp8", CPU)


def test_fp16_gradients_reach_the_optimizer_unscaled() -> None:
    """Clipping, Adam and the allocator's importance scores must see true gradients, not
    gradients times the loss scale (65536 at the start)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    x, y = torch.randn(32, 16), torch.randn(32, 1)
    nn.functional.mse_loss(model(x), y).backward()
    exact = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    mixed = MixedPrecision("fp16", CPU)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with mixed.autocast():
        loss = nn.functional.mse_loss(model(x), y)
    mixed.backward(loss)
    assert mixed.scaler is not None and mixed.scaler.get_scale() == 65536.0
    mixed.unscale(optimizer)
    for got, want in zip((p.grad for p in model.parameters()), exact, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-3)


TASK = TaskSpec("classification", "text", label_column="label", labels=("negative", "positive"))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), dropout=0.0)


def _train(base: Path, out: Path, precision: str, **kwargs):
    rows = sentiment_rows(48, seed=1)
    return train(
        base_model=base,
        task=TASK,
        train_rows=rows,
        eval_rows=sentiment_rows(16, seed=2),
        plan=plan_run(
            len(rows),
            TrainingConfig(
                epochs=3, batch_size=8, learning_rate=1e-2, checkpoint_every=6, max_grad_norm=1.0
            ),
            AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8.0, t_init=2, t_final=4),
        ),
        output_dir=out,
        device="cpu",
        precision=precision,
        **kwargs,
    )


def test_the_fp16_loop_trains_like_fp32_and_checkpoints_its_loss_scale(
    base_dir: Path, tmp_path: Path
) -> None:
    exact = _train(base_dir, tmp_path / "fp32", "fp32")
    half = _train(base_dir, tmp_path / "fp16", "fp16", checkpoint_dir=tmp_path / "ckpt")
    # Scaled gradients would be clipped to nothing and the allocation would go elsewhere.
    assert half.history == exact.history
    assert half.metrics["eval_loss"] == pytest.approx(exact.metrics["eval_loss"], abs=5e-3)
    state = load_checkpoint(latest_checkpoint(tmp_path / "ckpt"))
    assert state.scaler is not None and state.scaler["scale"] == 65536.0
    assert load_checkpoint(latest_checkpoint(tmp_path / "ckpt")).position.step == 12


def test_bf16_on_the_cpu_trains_close_to_fp32(base_dir: Path, tmp_path: Path) -> None:
    """torch's CPU autocast runs the forward in bf16 (about three significant digits). Measured
    on this run: evaluation loss 0.662 against 0.666; the adapter's summed ΔW = s·P·diag(λ)·Q
    differs from fp32's by 10% (relative Frobenius), the head by 14% (max relative); two of 12
    modules kept a different rank, the importance scores' ties broken the other way. The bounds
    below hold that with a margin and fail for an adapter that learned something else."""
    from adalora_core.formats.bundle import read_adapter

    exact = read_adapter(_train(base_dir, tmp_path / "fp32", "fp32").adapter_dir)
    result = _train(base_dir, tmp_path / "bf16", "bf16")
    half = read_adapter(result.adapter_dir)
    fp32_loss = exact.meta.metrics["eval_loss"]
    assert result.metrics["eval_loss"] != fp32_loss  # it did compute in bf16
    assert result.metrics["eval_loss"] == pytest.approx(fp32_loss, abs=0.02)
    difference = squares = 0.0
    for name, module in exact.modules.items():
        want, got = _delta(module), _delta(half.modules[name])
        difference += float((want - got).pow(2).sum())
        squares += float(want.pow(2).sum())
    assert (difference / squares) ** 0.5 < 0.25
    for name, want in exact.head.items():
        assert float((half.head[name] - want).abs().max() / want.abs().max()) < 0.3


def _delta(module) -> torch.Tensor:
    """A module's ΔW, zeros when its rank fell to 0."""
    if not module.lora_E.numel():
        return torch.zeros(module.lora_B.shape[0], module.lora_A.shape[1])
    return module.scaling * module.lora_B @ torch.diag(module.lora_E[:, 0]) @ module.lora_A


def test_an_unknown_precision_names_the_argument(base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _train(base_dir, tmp_path / "x", "int4")
    assert caught.value.field == "precision"


def test_the_low_rank_term_adds_little_to_bf16_rounding_of_the_output() -> None:
    """Under bf16 autocast the output is bf16 whatever the adapter does, and the adapter term
    goes into it by one GEMM (fp32 accumulation inside, one rounding). Measured against float64
    on an FFN-sized layer it adds about 12% to the base layer's own bf16 error (a term rounded
    separately measures the same): the output's rounding dominates, so the forward keeps
    nothing else in fp32. The bound catches a term that loses more than that."""
    torch.manual_seed(0)
    layer = SVDLinear(nn.Linear(384, 1536), rank=12, init_r=12, lora_alpha=128.0)
    with torch.no_grad():
        layer.lora_E.normal_(0, 0.05)
    x = torch.randn(64, 384)
    exact = layer.double()
    with torch.no_grad():
        reference = exact(x.double())
        base_reference = exact.base_layer(x.double())
    layer = layer.float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = layer(x)
        base_output = layer.base_layer(x)
    assert output.dtype == torch.bfloat16
    adapter_error = (output.double() - reference).abs().mean()
    base_error = (base_output.double() - base_reference).abs().mean()
    assert adapter_error < 1.25 * base_error, (float(adapter_error), float(base_error))
