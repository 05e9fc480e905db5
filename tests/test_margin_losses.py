"""ArcFace and CosFace heads: logits by hand, their place in the optimizer, real-face runs."""
import math

import pytest
import torch
import torch.nn.functional as F

from faceignite.losses import ArcFace, CosFace
from faceignite.models import build_model
from faceignite.optim import build_optimizers
from conftest import record_epochs
from test_triplet import MIN_FALL, celeba_subset, real_face_args


def head_with_axes(cls, **kw):
    """3 classes in 2-D whose weights point along 0°, 90° and 180° (any scale: normalised)."""
    head = cls(3, 2, **kw)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]))
    return head


def at_angle(degrees: float, norm: float = 5.0) -> torch.Tensor:
    a = math.radians(degrees)
    return torch.tensor([[norm * math.cos(a), norm * math.sin(a)]])


@pytest.mark.parametrize("cls,margin,target", [
    (ArcFace, 0.5, lambda t, m: math.cos(t + m)),
    (CosFace, 0.35, lambda t, m: math.cos(t) - m),
])
def test_margin_on_the_target_logit_only(cls, margin, target):
    head = head_with_axes(cls, scale=10.0, margin=margin)
    theta = math.radians(30)
    out = head(at_angle(30), torch.tensor([0]))
    others = [math.cos(math.radians(60)), math.cos(math.radians(150))]  # to 90° and 180°
    logits = torch.tensor([[10 * target(theta, margin), 10 * others[0], 10 * others[1]]])
    assert out["loss"].item() == pytest.approx(F.cross_entropy(logits, torch.tensor([0])).item(),
                                               rel=1e-5)
    expected = 10 * torch.tensor([[math.cos(theta), *others]])
    assert torch.allclose(out["logits"], expected, atol=1e-5)  # accuracy logits: no margin
    assert torch.allclose(head.logits(at_angle(30)), expected, atol=1e-5)
    assert out["target_cos"].item() == pytest.approx(math.cos(theta), abs=1e-6)


def test_default_margins_and_scale():
    assert (ArcFace(5, 4).margin, CosFace(5, 4).margin) == (0.5, 0.35)
    assert ArcFace(5, 4, margin=0.3).margin == 0.3 and CosFace(5, 4).scale == 64.0


def test_arcface_beyond_pi_minus_m_keeps_falling():
    head = head_with_axes(ArcFace, scale=1.0, margin=0.5)
    logit = []
    for degrees in (150, 160, 170, 179):  # θ + m > π from 151.4° on
        cos = torch.tensor([[math.cos(math.radians(degrees))]])
        logit.append(head.target_margin(cos).item())
        if degrees > 152:
            assert logit[-1] == pytest.approx(math.cos(math.radians(degrees)) - 0.5 * math.sin(0.5))
    assert logit == sorted(logit, reverse=True)


@pytest.mark.parametrize("cls", [ArcFace, CosFace])
def test_gradients_stay_finite_when_the_embedding_sits_on_its_class(cls):
    head = head_with_axes(cls)
    e = at_angle(0.0).requires_grad_()
    head(e, torch.tensor([0]))["loss"].backward()
    assert torch.isfinite(e.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("cls", [ArcFace, CosFace])
def test_class_weights_train_with_the_model_optimizer(cls):
    model = build_model("tiny", 16)
    head = cls(7, 16)
    optimizers = build_optimizers(model, head, "sgd", 0.1, 0.9, 5e-4, 0.5)
    assert set(optimizers) == {"model"}  # no centres
    params = [p for g in optimizers["model"].param_groups for p in g["params"]]
    assert any(p is head.weight for p in params)


@pytest.mark.parametrize("experiment", ["resnet34_arcface", "resnet34_cosface"])
def test_margin_experiment_lowers_its_loss_on_real_faces(experiment, tmp_path):
    from handlers.training import main
    loss = experiment.rsplit("_", 1)[1]  # the experiment file's recipe: its name and loss
    # 16 steps at a constant 0.01 (at the default 0.003 the loss falls more slowly)
    losses: list[float] = []
    metrics = main(real_face_args(celeba_subset(tmp_path), tmp_path) + ["--lr", "0.01"],
                   name=experiment, loss=loss, hooks=[record_epochs("train_loss", losses)])
    assert len(losses) == 4 and losses[-1] < (1 - MIN_FALL) * losses[0], losses
    assert "train_accuracy" in metrics and "train_target_cos" in metrics
