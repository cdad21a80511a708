"""Inference fast paths: fused attention, 1x1 convolutions as GEMMs, malloc that keeps memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from demucs_rr.models.attention import attend
from demucs_rr.models.htdemucs import HTDemucs
from demucs_rr.models.pointwise import PointwiseConv1d, PointwiseConv2d, gemm_pointwise_convs
from demucs_rr.process import _glibc
from demucs_rr.separate.precision import cpu_has_bf16

TINY_HT = {
    "sources": ["drums", "bass", "other", "vocals"],
    "channels": 8,
    "depth": 4,
    "t_layers": 2,
    "t_heads": 2,
    "bottom_channels": 16,
    "dconv_mode": 3,
    "segment": 1.0,
}


@pytest.mark.parametrize("cross", [False, True])
def test_attend_matches_multihead_attention(cross: bool) -> None:
    """Same projections as ``nn.MultiheadAttention``; float32 reordering error only.

    Products of length D = 32 and softmax sums over <= 70 terms of O(1) values: the fused
    kernel's different summation order moves results by a few float32 ulps (~1e-7 relative);
    a wrong head split, scale or projection half is O(1).
    """
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(32, 4, dropout=0.1, batch_first=True).eval()
    query = torch.randn(2, 50, 32)
    source = torch.randn(2, 70, 32) if cross else query
    with torch.no_grad():
        expected = attn(query, source, source, need_weights=False)[0]
        got = attend(attn, query, source)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_attend_in_training_keeps_attention_dropout() -> None:
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 2, dropout=0.5, batch_first=True).train()
    x = torch.randn(1, 40, 16)
    with torch.no_grad():
        first, second = attend(attn, x, x), attend(attn, x, x)
    assert not torch.equal(first, second)  # dropout drew different masks


def _tiny_model() -> HTDemucs:
    torch.manual_seed(0)
    return HTDemucs(**TINY_HT).eval()


def test_pointwise_switch_is_exact_in_float32_and_keeps_names() -> None:
    model = _tiny_model()
    mix = torch.randn(1, 2, 44100)
    with torch.no_grad():
        before = model(mix)
    keys = list(model.state_dict())
    kinds = {type(m) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))}
    count = gemm_pointwise_convs(model)
    assert count > 0 and gemm_pointwise_convs(model) == 0  # idempotent
    switched = [m for m in model.modules() if isinstance(m, (PointwiseConv1d, PointwiseConv2d))]
    assert len(switched) == count
    assert all(m.kernel_size in ((1,), (1, 1)) and m.stride in ((1,), (1, 1)) for m in switched)
    assert kinds <= {nn.Conv1d, nn.Conv2d}  # nothing else was there to begin with
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        after = model(mix)
    assert torch.equal(before, after)  # float32 keeps the convolution itself


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dims", [1, 2])
def test_pointwise_gemm_equals_convolution(batch: int, dims: int) -> None:
    """bf16 GEMM path vs the float64 convolution of the same bf16 inputs.

    Inputs and weights are exactly representable; the product sums 24 terms in float32 (the
    GEMM's accumulator) and rounds once to bf16: relative error <= 2^-8 of the largest
    output plus float32 accumulation (negligible). A transposed weight or dropped bias is O(1).
    """
    torch.manual_seed(1)
    conv = (nn.Conv1d(24, 40, 1) if dims == 1 else nn.Conv2d(24, 40, 1)).to(torch.bfloat16)
    shape = (batch, 24, 37) if dims == 1 else (batch, 24, 5, 7)
    x = torch.randn(shape).to(torch.bfloat16)
    gemm_pointwise_convs(conv)
    assert isinstance(conv, (PointwiseConv1d, PointwiseConv2d))
    with torch.no_grad():
        got = conv(x)
        weight, bias = conv.weight.double(), conv.bias.double()
        conv_fn = F.conv1d if dims == 1 else F.conv2d
        expected = conv_fn(x.double(), weight, bias)
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    bound = 2**-8 * expected.abs().max().item() + 1e-6
    assert (got.double() - expected).abs().max().item() <= bound


def test_pointwise_under_autocast_matches_autocast_convolution() -> None:
    """Under CPU autocast both paths multiply bf16 operands with float32 accumulation."""
    torch.manual_seed(2)
    conv = nn.Conv1d(16, 32, 1)
    x = torch.randn(2, 16, 50)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = conv(x)
        gemm_pointwise_convs(conv)
        got = conv(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    scale = expected.float().abs().max().item()
    assert (got.float() - expected.float()).abs().max().item() <= 2**-7 * scale


def test_convolutions_with_context_are_not_switched() -> None:
    model = nn.Sequential(
        nn.Conv1d(4, 4, 3, padding=1),
        nn.Conv1d(4, 4, 1, stride=2),
        nn.Conv1d(4, 4, 1, groups=2),
        nn.Conv2d(4, 4, (1, 1), padding=(0, 1)),
        nn.ConvTranspose1d(4, 4, 1),
    )
    assert gemm_pointwise_convs(model) == 0


@pytest.mark.skipif(not cpu_has_bf16(), reason="CPU without bf16 instructions")
def test_bf16_separation_switches_pointwise_convs(tmp_path: object) -> None:
    from demucs_rr.separate.api import Separator

    separator = Separator(_tiny_model(), device="cpu", precision="bf16", progress=False)
    out = separator.separate_tensor(torch.randn(2, 30000) * 0.1, 44100)
    assert set(out) == set(TINY_HT["sources"])
    runner = separator._runner
    assert any(isinstance(m, PointwiseConv1d) for m in runner.modules())  # type: ignore[attr-defined]
    model = separator.model  # the caller's model: left as it was, a copy runs
    assert not any(isinstance(m, PointwiseConv1d) for m in model.modules())  # type: ignore[attr-defined]
    assert all(p.dtype == torch.bfloat16 for p in runner.parameters())  # type: ignore[attr-defined]
    assert all(p.dtype == torch.float32 for p in separator.model.parameters())  # type: ignore[attr-defined]
    mix = torch.zeros(1, 1, 1, dtype=torch.bfloat16)
    assert runner._spec_channels_last(mix) and not separator.model._spec_channels_last(mix)  # type: ignore[attr-defined]


_FAULTS = """
import json, resource, torch
from demucs_rr.process import reuse_freed_memory
kept = reuse_freed_memory()
torch.set_num_threads(1)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def rss_mib():
    status = open("/proc/self/status").read().split("VmRSS:")[1]
    return int(status.split()[0]) // 1024
x = torch.randn(1, 8, 1_000_000)
w = torch.randn(48, 8, 3)
steps = []
for _ in range(6):  # 192 MB activations freed at the end of each step, like a forward pass
    before = faults()
    torch.nn.functional.gelu(torch.nn.functional.conv1d(x, w, padding=1)).sum()
    steps.append([faults() - before, rss_mib()])
print(json.dumps({"kept": kept, "steps": steps}))
"""


def _faults(env: dict[str, str]) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-c", _FAULTS],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(run.stdout))


@pytest.mark.integration
@pytest.mark.skipif(not _glibc(), reason="malloc tuning is for glibc on Linux")
def test_reused_memory_is_not_faulted_in_again() -> None:
    """Each step allocates two 192 MB tensors (47,000 pages each). Plain glibc maps them afresh
    every step; with freed memory kept, steps after the first two fault in (almost) nothing and
    the resident size stays constant."""
    kept = _faults({"DEMUCS_RR_MALLOC": ""})
    plain = _faults({"DEMUCS_RR_MALLOC": "system"})
    assert kept["kept"] is True and plain["kept"] is False
    assert all(faults >= 90_000 for faults, _ in plain["steps"]), plain
    # glibc may need a second region once (an aligned request does not fit the exact-size
    # block freed before it); from the third step on, nothing new.
    assert all(faults <= 1_000 for faults, _ in kept["steps"][2:]), kept
    sizes = [rss for _, rss in kept["steps"][2:]]
    assert max(sizes) - min(sizes) <= 8, kept
