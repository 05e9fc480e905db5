"""End to end: a real tiny training run on JPEG folders must learn."""
import re


from handlers.standard import main


def test_tiny_run_learns(train_args, tmp_path):
    metrics = main(train_args + ["--epochs", "4"])
    chance = 1 / 24
    assert metrics["val_accuracy"] > 5 * chance, metrics
    log = next((tmp_path / "runs").glob("resnet34_center-*/run.log")).read_text()
    losses = [float(x) for x in re.findall(r"epoch \d+/4 \| loss ([0-9.]+)", log)]
    assert len(losses) == 4 and losses[-1] < 0.6 * losses[0], losses


def test_custom_experiment_from_the_readme_runs(train_args, synthetic_root, tmp_path):
    """The README's hand-composed experiment trains, validates on LFW-format pairs and saves."""
    from custom_example import main as custom_main

    _, pairs = synthetic_root
    metrics = custom_main(train_args + ["--epochs", "2", "--lfw", str(pairs)])
    run_dir = next((tmp_path / "runs").glob("custom_example-*"))
    assert {"val_accuracy", "lfw_accuracy", "lfw_auc"} <= set(metrics)
    assert list(run_dir.glob("best_checkpoint_*.pt")) and list(run_dir.glob("roc_lfw_*.png"))
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
