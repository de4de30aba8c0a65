"""On a CUDA GPU the models run PyTorch's own kernels and compute what the CPU paths compute.

The CPU-only fast paths (Winograd convolutions, phase-decomposed transposed convolutions, the
thin RGB head) must step aside on a GPU and give the same function. Each model is built at
the classic width with inputs large enough for those CPU paths to take over, run forward and
backward in float64 on the CPU and on the GPU, and the outputs and every gradient compared.
"""

from __future__ import annotations

import pytest
import torch

from stainbench.models import create_model

CASES = {
    # resnet_9blocks' 3x3 convolutions at 256 channels, 16x16: the Winograd path on the CPU
    "resnet_9blocks": ("resnet", {"n_blocks": 9, "base_width": 64}, (2, 3, 64, 64)),
    # unet's inner transposed levels take the phase/gemm path on the CPU
    "unet_depth6": ("unet", {"depth": 6, "base_width": 64}, (2, 3, 64, 64)),
    # the 70x70 PatchGAN's stride-1 4x4 convolution (512 ch, 17x17 output): Winograd on the CPU
    "patchgan_70": ("patchgan", {"base_width": 64, "n_layers": 3}, (2, 3, 144, 144)),
}


def _grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    y = model(x)
    weight = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)
    (y * weight).sum().backward()
    return y.detach().cpu(), [x.grad.cpu()] + [p.grad.cpu() for p in model.parameters()]


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_model_matches_cpu_paths(case: str) -> None:
    arch, kwargs, shape = CASES[case]
    torch.manual_seed(0)
    cpu = create_model(arch, **kwargs).double().train()
    gpu = create_model(arch, **kwargs).double().train().cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y_cpu, g_cpu = _grads(cpu, x)
    y_gpu, g_gpu = _grads(gpu, x.cuda())
    torch.testing.assert_close(y_gpu, y_cpu, rtol=1e-9, atol=1e-9)
    assert len(g_cpu) == len(g_gpu)
    # atol: the biases that an instance norm follows have gradients that are 0 in exact
    # arithmetic (~1e-13 of rounding noise on either side)
    for i, (a, b) in enumerate(zip(g_gpu, g_cpu, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10, msg=f"gradient {i} differs")
