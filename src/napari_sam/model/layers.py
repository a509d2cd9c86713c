"""Small building blocks shared by the SAM networks.

Parameter names (``weight``/``bias``, ``lin1``/``lin2``, ``layers.N``) follow the
layout of the released SAM checkpoints so their state dicts load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """Layer norm over the channel axis of a ``(B, C, H, W)`` tensor.

    Each pixel's channel vector is normalised on its own (as ``nn.LayerNorm`` does
    for the last axis of a channels-last tensor), then scaled by ``weight`` and
    shifted by ``bias`` (both ``(C,)``).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise every pixel's channel vector.

        Parameters
        ----------
        x
            ``(B, C, H, W)`` feature map.

        Returns
        -------
        torch.Tensor
            ``(B, C, H, W)``, normalised over ``C``, scaled and shifted.
        """
        # F.layer_norm on a channels-last view is one fused kernel (and autocast-aware),
        # instead of the mean/var/sqrt chain of the reference.
        normed = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return normed.permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    """Transformer feed-forward block: ``lin1 -> act -> lin2`` on the last axis."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``lin1 -> act -> lin2`` to the last axis.

        Parameters
        ----------
        x
            ``(..., embedding_dim)`` tokens.

        Returns
        -------
        torch.Tensor
            ``(..., embedding_dim)``.
        """
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (heads of the mask decoder).

    ``input_dim -> hidden_dim -> ... -> hidden_dim -> output_dim``; optional sigmoid
    on the output. A subclass changes ``activation`` (SAM 2's Hiera and memory use GELU).
    """

    activation = staticmethod(F.relu)  # between the layers

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        in_dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        out_dims = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(in_dims, out_dims))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layers to the last axis, ``activation`` between them, sigmoid after the last if asked.

        Parameters
        ----------
        x
            ``(..., input_dim)`` tokens.

        Returns
        -------
        torch.Tensor
            ``(..., output_dim)``.
        """
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < last:
                x = self.activation(x)
        if self.sigmoid_output:
            x = torch.sigmoid(x)
        return x
