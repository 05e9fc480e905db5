"""The template (``experiments/custom_example.py``) and the README's second example, run as a user
runs them: real processes, two of them with gloo, ClearML offline, Ctrl-C, then a resume in the
same folder.  The template stays short (at most 40 lines of code) and the README shows it as it
is."""
from __future__ import annotations

import ast
import hashlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import tokenize
import zipfile
from pathlib import Path

import zygote
from conftest import copy_subset
from faceignite.checkpoint import load_checkpoint
from faceignite.losses import CosFace

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "experiments" / "custom_example.py"
MAX_CODE_LINES = 40
ITERATIONS = 12  # 4 identities x 6 JPEGs, a quarter held out: 16 images / batch 4, 3 epochs


def code_lines(source: str) -> int:
    """Lines with code on them: not blank, not only a comment, not part of a docstring."""
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    lines: set[int] = set()
    layout = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
              tokenize.ENDMARKER)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in layout:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstrings)


def environment(tmp_path: Path) -> dict:
    """This checkout's packages; ClearML offline with its cache and (no) config in tmp_path."""
    return {**os.environ, "PYTHONPATH": str(REPO), "CLEARML_OFFLINE_MODE": "1",
            "CLEARML_CACHE_DIR": str(tmp_path / "clearml-cache"),
            "CLEARML_CONFIG_FILE": str(tmp_path / "none.conf")}


def tracked_scalars(session: Path) -> dict[tuple[str, str], list[int]]:
    """The iterations of each ``(title, series)`` scalar of a ClearML offline session zip."""
    with zipfile.ZipFile(session) as zf:
        found: dict[tuple[str, str], list[int]] = {}
        for line in zf.read("metrics.jsonl").decode().splitlines():
            for event in json.loads(line) if line.strip() else ():
                if event["type"] == "training_stats_scalar":
                    found.setdefault((event["metric"], event["variant"]), []).append(
                        event["iter"])
    return found


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def interrupt_when(proc: zygote.Popen, line_starts: str) -> str:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) once ``proc`` logged
    a line containing ``line_starts``; returns everything it wrote to stderr."""
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line)
        if line_starts in line:
            os.killpg(proc.pid, signal.SIGINT)
            break
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr))
    reader.start()
    proc.wait(timeout=600)
    reader.join()
    return "".join(lines)


def test_the_template_has_at_most_40_lines_of_code():
    assert code_lines(TEMPLATE.read_text(encoding="utf-8")) <= MAX_CODE_LINES
    assert code_lines('"""doc"""\nimport os  # why\n\n# note\nx = (1,\n     2)\n') == 3


def test_readme_shows_the_complete_example_as_it_is():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = TEMPLATE.read_text(encoding="utf-8")
    assert f"```python\n{example}```" in readme


def test_template_on_two_processes_interrupted_then_resumed(tmp_path, synthetic_root,
                                                           small_pairs):
    """``--nproc_per_node 2 --backend gloo``, ClearML offline, TensorBoard, a verification
    target picking the best checkpoint: Ctrl-C saves a checkpoint and exits 130; the same
    command with ``--resume_path`` continues from that iteration, in the same folder, the same
    ClearML task, to the end."""
    root = copy_subset(synthetic_root[0], tmp_path / "data", identities=4, images=6)
    pairs, runs = small_pairs, tmp_path / "runs"
    args = ["--dataroot", str(root), "--output_dir", str(runs), "--model", "tiny",
            "--image_size", "32", "--batch_size", "4", "--valid_split", "0.25", "--epochs", "3",
            "--num_workers", "0", "--device", "cpu", "--log_interval", "1", "--n_saved", "20",
            "--nproc_per_node", "2", "--backend", "gloo", "--clearml", "offline",
            "--tensorboard", str(tmp_path / "tb"), "--val_targets", str(pairs),
            "--best_by", pairs.name, "--lfw_validation_epoch_interval", "3"]
    env = environment(tmp_path)
    command = [sys.executable, str(TEMPLATE), *args]
    proc = zygote.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE,
                        stdout=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        log = interrupt_when(proc, "epoch 1 iteration 2 |")
    finally:
        proc.kill()
    assert proc.returncode == 130, log[-3000:]  # Ctrl-C, after saving
    # no traceback, no "Logging error" (a signal that came while a log line was being written
    # once logged from the signal handler: "reentrant call inside BufferedWriter")
    assert "Traceback" not in log and "Logging error" not in log, log[-5000:]
    match = re.search(r"interrupted by SIGINT at epoch \d+ iteration (\d+): checkpoint saved to "
                      r"(\S+\.pt); resume with --resume_path \2", log)
    assert match, log[-3000:]
    stopped, saved = int(match.group(1)), Path(match.group(2))
    assert 2 <= stopped < ITERATIONS
    assert load_checkpoint(str(saved))["trainer_state_dict"]["iteration"] == stopped
    (run_dir,) = runs.glob("custom_example-*")
    task = json.loads((run_dir / "clearml" / "task.json").read_text())
    assert task["mode"] == "offline"
    assert list(run_dir.glob("clearml/offline/*.zip"))  # the interrupted run's session, closed
    before = {p.name: digest(p) for p in run_dir.glob("training_checkpoint_*.pt")}

    # continued with its ranks forked from the launcher (--start_method fork): a run's start
    # method is not part of it
    resumed = zygote.run(command + ["--resume_path", str(run_dir), "--start_method", "fork"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in runs.glob("custom_example-*")] == [run_dir.name]
    assert f"iteration {stopped})" in resumed.stderr  # "resuming from ... (epoch E iteration I)"
    last = load_checkpoint(str(run_dir))
    assert last["trainer_state_dict"]["iteration"] == ITERATIONS and last["epoch"] == 3
    assert {"val_accuracy", f"{pairs.name}_accuracy"} <= set(last["metrics"])
    for name, sha in before.items():  # the interrupted run's checkpoints kept, not replaced
        assert digest(run_dir / name) == sha, name
    assert list(run_dir.glob(f"best_checkpoint_*_{pairs.name}_accuracy=*.pt"))  # --best_by
    assert json.loads((run_dir / "clearml" / "task.json").read_text())["id"] == task["id"]
    (session,) = run_dir.glob("clearml/offline/*.zip")  # one task, continued
    scalars = tracked_scalars(session)
    losses = scalars[("train", "loss")]  # every --log_interval: both runs, no step twice
    assert losses == sorted(set(losses)) and set(range(stopped + 1, ITERATIONS + 1)) <= set(losses)
    assert ITERATIONS in scalars[("holdout", "val_accuracy")]  # from the evaluator engine
    assert ITERATIONS in scalars[(pairs.name, f"{pairs.name}_accuracy")]
    assert list((tmp_path / "tb").glob("custom_example-*/events.out.tfevents.*"))


def readme_second_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (example,) = [b for b in blocks if 'NAME = "mobilefacenet_cosface"' in b]
    return example


def test_readme_second_example_swaps_loss_and_backbone_and_logs_the_norm(tmp_path,
                                                                         synthetic_root):
    example = readme_second_example()
    assert code_lines(example) <= code_lines(TEMPLATE.read_text(encoding="utf-8")) + 12
    script = tmp_path / "mobilefacenet_cosface.py"
    script.write_text(example, encoding="utf-8")
    root = copy_subset(synthetic_root[0], tmp_path / "data", identities=4, images=6)
    done = zygote.run(
        [sys.executable, str(script), "--dataroot", str(root), "--output_dir",
         str(tmp_path / "runs"), "--model", "tiny", "--image_size", "32", "--batch_size", "4",
         "--valid_split", "0.25", "--epochs", "1", "--log_interval", "2", "--num_workers", "0",
         "--device", "cpu", "--clearml", "off"],
        cwd=REPO, env=environment(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    norms = {int(i): float(v) for i, v in
             re.findall(r"iteration (\d+) \| embedding norm (\S+)", done.stderr)}
    assert sorted(norms) == [2, 4] and all(math.isfinite(v) and v > 0 for v in norms.values())
    assert "target_cos" in done.stderr  # CosFace's own term in the step's log lines
    (run_dir,) = (tmp_path / "runs").glob("mobilefacenet_cosface-*")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["margin"] == CosFace.default_margin and config["lr"] == 0.003
    assert "val_accuracy" in load_checkpoint(str(run_dir))["metrics"]


def test_sigterm_to_the_launcher_or_its_group_saves_and_exits_75(tmp_path, synthetic_root):
    """``--nproc_per_node 2``: SIGTERM to the launcher alone (``kill PID``, a container's stop)
    goes on to the started processes; SIGTERM to the whole group reaches them twice (from the
    sender and from the launcher), which they take as one.  Either way rank 0 saves and the
    launcher exits 75 (pre-empted), not killed by the signal.  The ranks are forked from the
    launcher (``--start_method fork``): children of it as spawned ones are, started at once."""
    train, _ = synthetic_root
    root = copy_subset(train, tmp_path / "data", identities=4, images=6)
    env = environment(tmp_path)
    for target in ("launcher", "group"):
        runs = tmp_path / target
        command = [sys.executable, str(TEMPLATE), "--dataroot", str(root), "--output_dir",
                   str(runs), "--model", "tiny", "--image_size", "32", "--batch_size", "4",
                   "--epochs", "50", "--num_workers", "0", "--device", "cpu",
                   "--log_interval", "1", "--nproc_per_node", "2", "--backend", "gloo",
                   "--start_method", "fork", "--clearml", "off"]
        proc = zygote.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, start_new_session=True)
        lines: list[str] = []
        try:
            for line in proc.stderr:
                lines.append(line)
                if "epoch 1 iteration 2 |" in line:
                    if target == "launcher":
                        os.kill(proc.pid, signal.SIGTERM)
                    else:
                        os.killpg(proc.pid, signal.SIGTERM)
                    break
            lines.extend(proc.stderr)
            proc.wait(timeout=300)
        finally:
            proc.kill()
        log = "".join(lines)
        assert proc.returncode == 75, (target, log[-3000:])
        assert re.search(r"interrupted by SIGTERM at epoch \d+ iteration \d+: checkpoint saved",
                         log), (target, log[-3000:])
        assert "aborted by a second" not in log, log[-3000:]
        assert list(runs.glob("custom_example-*/training_checkpoint_*.pt"))
