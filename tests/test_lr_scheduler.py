"""LR schedules on a minimal Ignite engine (the real handler, an idle step): the LR each
iteration sees, per ``--lr_scheduler``."""
import pytest
import torch
from ignite.engine import Engine, Events

from handlers import lr_scheduler

EPOCHS, EPOCH_LENGTH, LR = 4, 5, 0.1


def lrs_seen(schedule: str, warmup_epochs: float = 0, step_epochs: int = 1,
             gamma: float = 0.1) -> list[float]:
    """The LR at every iteration of a 4 × 5-iteration run under ``schedule``."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    trainer = Engine(lambda engine, batch: None)
    lr_scheduler.attach(trainer, optimizer, LR, EPOCHS, EPOCH_LENGTH, schedule=schedule,
                        warmup_epochs=warmup_epochs, milestones=[0.5, 0.75],
                        step_epochs=step_epochs, gamma=gamma)
    seen: list[float] = []
    trainer.add_event_handler(Events.ITERATION_STARTED,
                              lambda e: seen.append(optimizer.param_groups[0]["lr"]))
    trainer.run([0] * EPOCH_LENGTH, max_epochs=EPOCHS)
    return seen


def test_cosine_falls_from_the_lr_to_a_thousandth_of_it_without_rising():
    seen = lrs_seen("cosine")
    assert len(seen) == EPOCHS * EPOCH_LENGTH
    assert seen[0] == pytest.approx(LR)
    assert all(b <= a + 1e-12 for a, b in zip(seen, seen[1:]))
    assert LR * 1e-3 <= seen[-1] < 0.05 * LR  # near the end of the cosine at the last step


def test_step_multiplies_by_gamma_every_step_epochs():
    seen = lrs_seen("step", step_epochs=1, gamma=0.5)
    for epoch in range(EPOCHS):
        assert seen[epoch * EPOCH_LENGTH:(epoch + 1) * EPOCH_LENGTH] == pytest.approx(
            [LR * 0.5 ** epoch] * EPOCH_LENGTH)


def test_warm_up_rises_from_a_hundredth_before_the_schedule():
    seen = lrs_seen("cosine", warmup_epochs=1)
    assert seen[0] == pytest.approx(LR * 0.01)
    assert all(b > a for a, b in zip(seen[:EPOCH_LENGTH], seen[1:EPOCH_LENGTH]))
    assert max(seen) == pytest.approx(LR) and seen[-1] < 0.05 * LR


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
        lrs_seen("linear")
