"""--amp fp16 evaluates in fp32: fp16's range (65,504) overflowed the raw activations of a young
network in eval mode, and the first validation of an fp16 run on an H200 stopped it with NaN
embeddings.  Shown here on the CPU, whose autocast runs linear layers in fp16 too."""
from __future__ import annotations

import torch

from faceignite.engine import create_evaluator
from faceignite.losses import SoftmaxCenterLoss
from faceignite.verification.evaluator import create_embedding_engine
from faceignite.models import build_model
from faceignite.runtime import Runtime


def overflowing_model():
    """A network whose embedding layer's outputs (~1e7) are beyond fp16's range."""
    torch.manual_seed(0)
    model = build_model("tiny", 16).eval()
    with torch.no_grad():
        model.embedding[0].weight.fill_(1e6)
    return model


def test_fp16_embeddings_are_finite():
    batch = [(torch.rand(4, 3, 32, 32), torch.arange(4), [])]
    for amp in ("fp16", "bf16", "off"):
        embeddings, _ = create_embedding_engine(overflowing_model(),
                                                Runtime(torch.device("cpu"), amp)
                                                ).run(batch).output
        assert torch.isfinite(embeddings).all(), amp


def test_fp16_held_out_logits_are_finite():
    criterion = SoftmaxCenterLoss(3, 16, 0.003)
    batch = [(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), 0)]
    logits, _ = create_evaluator(overflowing_model(), criterion,
                                 Runtime(torch.device("cpu"), "fp16")).run(batch).output
    assert torch.isfinite(logits).all()
