"""Random SAELens SAEs for the SAE tests (sae_lens must be importable)."""

from __future__ import annotations

import torch


def random_sae(d_in: int, hook_name: str, d_sae: int = 48, seed: int = 0, architecture: str = "standard"):
    """A SAELens SAE of the given architecture with random weights (non-zero biases, so every term counts)."""
    from sae_lens import SAE, JumpReLUSAEConfig, StandardSAEConfig, TopKSAEConfig

    configs = {"standard": StandardSAEConfig, "topk": TopKSAEConfig, "jumprelu": JumpReLUSAEConfig}
    extra = {"k": 8} if architecture == "topk" else {}
    cfg = configs[architecture](d_in=d_in, d_sae=d_sae, **extra)
    cfg.metadata.hook_name = hook_name
    sae = SAE.from_dict(cfg.to_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            if name == "threshold":
                param.copy_(0.05 * torch.rand(param.shape, generator=generator))
            else:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return sae.eval()
