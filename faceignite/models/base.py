"""What every embedding network shares: ``backbone`` → ``embedding`` head, ``embed``, input check."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from faceignite.errors import FaceIgniteError


class EmbeddingModel(nn.Module):
    """``backbone`` (image → feature vector) followed by ``embedding`` (→ ``embedding_dim``).

    ``forward`` returns the raw embedding that training losses use; :meth:`embed` the
    L2-normalised one used for verification.  ``input_size`` (pixels) is the only input side the
    network accepts, or ``None`` for any.  Sub-classes set ``backbone`` and ``embedding``: their
    ``backbone.`` / ``embedding.`` state-dict prefixes are what ``--finetune`` copies.
    """

    architecture: str
    embedding_dim: int
    input_size: int | None = None

    def check_input(self, x: torch.Tensor) -> None:
        """One-line :class:`FaceIgniteError` when ``x`` (N×3×H×W) is not ``input_size`` square."""
        if self.input_size is None or torch.jit.is_tracing():
            return
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise FaceIgniteError(
                f"{self.architecture} takes {self.input_size}x{self.input_size} images, got "
                f"{tuple(x.shape[-2:])}: use --image_size {self.input_size}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.embedding(self.backbone(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(x).float(), dim=1)


def conv_bn(inp: int, out: int, kernel: int = 1, stride: int = 1, groups: int = 1,
            prelu: bool = True, padding: int | None = None) -> nn.Sequential:
    """Conv (no bias; padding ``kernel // 2`` unless given) → BatchNorm → PReLU (``prelu=False``:
    linear, no activation)."""
    padding = kernel // 2 if padding is None else padding
    layers: list[nn.Module] = [nn.Conv2d(inp, out, kernel, stride, padding, groups=groups,
                                         bias=False), nn.BatchNorm2d(out)]
    if prelu:
        layers.append(nn.PReLU(out))
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions and linears (fan out; depthwise convolutions fan in: PyTorch's fan
    out of a depthwise kernel counts every channel, which would make its weights ~20x too small),
    BatchNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            depthwise = isinstance(m, nn.Conv2d) and m.groups > 1
            nn.init.kaiming_normal_(m.weight, mode="fan_in" if depthwise else "fan_out",
                                    nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
