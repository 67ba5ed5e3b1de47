import torch


def matmul_bias(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    products = x.float()[:, :, None] * w.float()[None, :, :]  # [M, K, N]
    out.copy_(products.sum(dim=1) + b.float())
