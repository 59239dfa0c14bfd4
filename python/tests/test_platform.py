"""What the C++ code assumes of the torch it runs on, checked on that torch.

The GPT rounds bf16 operands and lets torch's GEMM accumulate (src/model/gpt.cpp, project()). That
is right only where the CPU bf16 GEMM accumulates in fp32, as tensor cores do: a bf16 accumulator
(LibTorch 1.13's) loses most of a long sum of positive terms.
"""
import torch


def test_cpu_bf16_gemm_accumulates_in_fp32():
    torch.manual_seed(0)
    k = 4096  # long enough for a bf16 accumulator to stall: its spacing passes the terms' size
    x, w = torch.rand(16, k).bfloat16(), torch.rand(32, k).bfloat16()
    exact = torch.nn.functional.linear(x.double(), w.double())
    got = torch.nn.functional.linear(x, w).double()
    # One rounding of the fp32 sum to bf16 (unit roundoff 2^-8), plus fp32's summation error
    # (k · 2^-24 relative for positive terms).
    bound = 2.0 ** -8 + k * 2.0 ** -24
    assert ((got - exact).abs() / exact).max().item() <= bound
