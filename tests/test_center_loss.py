"""Center loss: value, gradients and the centre update against a hand computation."""
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
