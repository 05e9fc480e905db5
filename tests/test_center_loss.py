"""Center loss: value, gradients and the centre update against a hand computation."""
import pytest
import torch

from faceignite.engine import create_trainer
from faceignite.losses import CenterLoss, SoftmaxCenterLoss
from faceignite.optim import build_optimizers


def test_value_and_gradients_match_hand_computation():
    loss_fn = CenterLoss(num_classes=3, embedding_dim=2)
    with torch.no_grad():
        loss_fn.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    feats = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    loss = loss_fn(feats, labels)
    # ||f - c||²: 1, 9, 2 → mean 4
    assert torch.isclose(loss, torch.tensor(4.0))
    loss.backward()
    # d/df_i = 2 (f_i - c_{y_i}) / B ; d/dc_j = -2 Σ_{y_i=j} (f_i - c_j) / B ; unused centre: 0
    expected_feat_grad = 2 * (feats.detach() - loss_fn.centers.detach()[labels]) / 3
    assert torch.allclose(feats.grad, expected_feat_grad)
    expected_center_grad = torch.tensor([[-2 * (1 + 0) / 3, -2 * (0 + 3) / 3],
                                         [-2 * 1 / 3, -2 * 1 / 3],
                                         [0.0, 0.0]])
    assert torch.allclose(loss_fn.centers.grad, expected_center_grad)


def test_centre_step_is_rescaled_by_one_over_lambda():
    """One SGD step on the centres moves them by lr * (1/λ) * λ * dL_center/dc = lr * dL_center/dc."""
    torch.manual_seed(0)
    weight, lr = 0.01, 0.5
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    criterion = SoftmaxCenterLoss(num_classes=3, embedding_dim=4, center_loss_weight=weight)
    optimizers = build_optimizers(model, criterion, "sgd", lr=0.0, momentum=0.0, weight_decay=0.0,
                                  center_loss_lr=lr)
    trainer = create_trainer(model, criterion, optimizers, torch.device("cpu"))
    images, labels = torch.randn(6, 3, 2, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.no_grad():
        feats = model(images)
    before = criterion.center_loss.centers.detach().clone()
    # hand computation of dL_center/dc_j = -2 Σ_{y_i=j} (f_i - c_j) / B
    grad = torch.zeros_like(before)
    for f, y in zip(feats, labels):
        grad[y] -= 2 * (f - before[y]) / len(labels)
    out = trainer._process_function(trainer, (images, labels, 0))
    after = criterion.center_loss.centers.detach()
    assert torch.allclose(after, before - lr * grad, atol=1e-5)
    assert set(out) >= {"loss", "ce", "center", "accuracy"}
    assert torch.isclose(out["loss"], out["ce"] + weight * out["center"])


def test_no_weight_decay_on_centres():
    model = torch.nn.Linear(4, 4)
    criterion = SoftmaxCenterLoss(3, 4)
    optimizers = build_optimizers(model, criterion, "sgd", 0.1, 0.9, 5e-4, 0.5)
    assert optimizers["centers"].param_groups[0]["weight_decay"] == 0
    centre = criterion.center_loss.centers
    assert all(centre is not p for g in optimizers["model"].param_groups for p in g["params"])
    decayed = {id(p) for g in optimizers["model"].param_groups if g["weight_decay"] > 0
               for p in g["params"]}
    assert id(model.weight) in decayed and id(criterion.classifier.weight) in decayed
    assert id(model.bias) not in decayed


def _center_trainer(weight: float, optimizer: str, center_lr: float = 0.5):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    criterion = SoftmaxCenterLoss(num_classes=4, embedding_dim=4, center_loss_weight=weight)
    optimizers = build_optimizers(model, criterion, optimizer, lr=0.1, momentum=0.9,
                                  weight_decay=5e-4, center_loss_lr=center_lr)
    return model, criterion, create_trainer(model, criterion, optimizers, torch.device("cpu"))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adagrad"])
def test_centre_of_a_class_absent_from_the_batch_stays_exactly_still(optimizer):
    """Steps with classes 0-1, then 1-2, then 0-2: every absent class keeps its centre bit for
    bit (the centres' optimizer has no momentum or decay that could move them on a zero
    gradient), while every present class's centre moves."""
    _, criterion, trainer = _center_trainer(0.01, optimizer)
    centers = criterion.center_loss.centers
    for present in ([0, 1], [1, 2], [0, 2]):
        labels = torch.tensor(present * 3)
        before = centers.detach().clone()
        trainer._process_function(trainer, (torch.randn(6, 3, 2, 2), labels, 0))
        after = centers.detach()
        for c in range(4):
            if c in present:
                assert not torch.equal(after[c], before[c]), f"centre {c} did not move"
            else:
                assert torch.equal(after[c], before[c]), f"absent centre {c} moved"


@pytest.mark.parametrize("weight", [0.003, 0.01, 0.03])
def test_lambda_scales_the_pull_on_features_not_the_centre_step(weight):
    """With the 1/λ rescaling, the centres move by α·dL_center/dc whatever λ is, while the
    center term's gradient on the features (here: on the model) is λ times that of λ = 1."""
    images, labels = torch.randn(6, 3, 2, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    steps = {}
    for w in (weight, 1.0):
        model, criterion, trainer = _center_trainer(w, "sgd")
        before = criterion.center_loss.centers.detach().clone()
        trainer._process_function(trainer, (images, labels, 0))
        steps[w] = criterion.center_loss.centers.detach() - before
    assert torch.allclose(steps[weight], steps[1.0], atol=1e-6)
    pulls = {}
    for w in (weight, 1.0):
        model, criterion, _ = _center_trainer(w, "sgd")
        model.zero_grad()
        (criterion(model(images), labels)["loss"] - criterion(model(images), labels)["ce"]).backward()
        pulls[w] = model[1].weight.grad.clone()
    assert torch.allclose(pulls[weight], weight * pulls[1.0], rtol=1e-4, atol=1e-7)
