"""ClearML tracking: an offline session read back from its files, ``off`` touching nothing, and a
server on a closed port that neither hangs nor stops training (real ClearML client, offline)."""
from __future__ import annotations

import http.server
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import zipfile

import cv2
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

import zygote
from faceignite.engine import create_trainer
from faceignite.losses import SoftmaxCenterLoss
from faceignite.optim import build_optimizers
from faceignite.tracking import clearml_session
from handlers import clearml as clearml_handler
from handlers import events, holdout, progress

from handlers.training import main

LFW_VALUES = {"lfw_accuracy": 0.75, "lfw_auc": 0.8, "lfw_eer": 0.25}


def tiny_trainer(tmp_path, batches: int = 4):
    """A real trainer (step, center loss, optimizers, progress, held-out) on 8x8 tensors, and an
    LFW stand-in keeping the verification handler's contract: an evaluator engine with the
    metrics, the metrics and a ROC PNG on the trainer, ``VERIFICATION_COMPLETED``.  Returns the
    trainer, its optimizers, the data and the evaluator engines by tag (for the trackers)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16))
    criterion = SoftmaxCenterLoss(4, 16, 0.01)
    optimizers = build_optimizers(model, criterion, "sgd", 0.1, 0.9, 5e-4, 0.5)
    trainer = create_trainer(model, criterion, optimizers, torch.device("cpu"))
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,)), 0) for _ in range(batches)]
    held_out = holdout.attach(trainer, model, criterion, data, torch.device("cpu"))
    progress.attach(trainer, optimizers, progress_bar=False)
    events.register(trainer)
    lfw = Engine(lambda engine, batch: None)  # the target's evaluator: its metrics, plain names
    lfw.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(
        {k.removeprefix("lfw_"): v for k, v in LFW_VALUES.items()}))

    @trainer.on(Events.EPOCH_COMPLETED)
    def fake_lfw(engine):
        lfw.run([0])
        path = tmp_path / f"roc_lfw_epoch{engine.state.epoch:03d}.png"
        image = np.full((48, 64, 3), 255, np.uint8)
        cv2.line(image, (0, 47), (63, 0), (255, 0, 0), 2)
        assert cv2.imwrite(str(path), image)
        engine.state.metrics.update(LFW_VALUES)
        engine.state.metrics["lfw_roc_figure"] = str(path)  # as the verification handler does
        engine.fire_event(events.ValidationEvents.VERIFICATION_COMPLETED)

    return trainer, optimizers, data, {"holdout": held_out, "lfw": lfw}


def read_session(zip_path):
    """(task.json, scalar events as {(title, series): {iteration: value}}, zip names)."""
    with zipfile.ZipFile(zip_path) as zf:
        task = json.loads(zf.read("task.json"))
        events_ = [e for line in zf.read("metrics.jsonl").decode().splitlines() if line.strip()
                   for e in json.loads(line)]
        names = zf.namelist()
    scalars: dict = {}
    for e in events_:
        if e["type"] == "training_stats_scalar":
            scalars.setdefault((e["metric"], e["variant"]), {})[e["iter"]] = e["value"]
    images = [(e["metric"], e["variant"], e["iter"]) for e in events_
              if e["type"] == "training_debug_image"]
    return task, scalars, images, names


def test_offline_session_holds_scalars_hparams_roc_and_model(tmp_path, monkeypatch):
    monkeypatch.delenv("CLEARML_CACHE_DIR", raising=False)
    trainer, optimizers, data, evaluators = tiny_trainer(tmp_path)
    best = tmp_path / "best_checkpoint_8_lfw_accuracy=0.75.pt"
    torch.save({"w": torch.ones(3)}, best)
    run_dir = tmp_path / "run"
    hparams = {"lr": 0.1, "model": "resnet34", "lr_milestones": [0.5, 0.75], "pretrained": None,
               "api_secret_key": "do-not-log-me"}
    tracking = clearml_handler.attach(
        trainer, str(run_dir), mode="offline", task_name="tiny_center", tags=["resnet34", "center"],
        hparams=hparams, log_interval=2, optimizers=optimizers,
        best_checkpoint=lambda: str(best), upload_model=True, evaluators=evaluators)
    assert tracking is not None and tracking.mode == "offline"
    trainer.run(data, max_epochs=2)

    assert tracking.closed and tracking.session_zip
    assert tracking.session_zip.startswith(str(run_dir / "clearml"))
    assert "CLEARML_CACHE_DIR" not in os.environ  # the process is left as it was
    task, scalars, images, names = read_session(tracking.session_zip)
    assert task["name"] == "tiny_center" and sorted(task["tags"]) == ["center", "resnet34"]
    args = task["hyperparams"]["Args"]
    assert args["lr"]["value"] == "0.1" and args["model"]["value"] == "resnet34"
    assert args["lr_milestones"]["value"] == "[0.5, 0.75]"
    assert "api_secret_key" not in args
    with zipfile.ZipFile(tracking.session_zip) as zf:
        assert not any(b"do-not-log-me" in zf.read(n) for n in zf.namelist())
    # step scalars every 2 iterations (8 in all), the same values the step returned
    assert set(scalars[("train", "loss")]) == {2, 4, 6, 8}
    for series in ("ce", "center", "accuracy"):
        assert set(scalars[("train", series)]) == {2, 4, 6, 8}
    assert scalars[("lr", "lr_model")][2] == pytest.approx(0.1)
    assert scalars[("lr", "lr_centers")][8] == pytest.approx(0.5)
    # epoch means, speed, held-out and LFW at the trainer's iteration
    assert scalars[("epoch", "train_loss")][8] == pytest.approx(trainer.state.metrics["train_loss"])
    assert set(scalars[("speed", "images_per_sec")]) == {4, 8}
    assert scalars[("holdout", "val_accuracy")][8] == pytest.approx(
        trainer.state.metrics["val_accuracy"])
    assert scalars[("lfw", "lfw_auc")] == {4: pytest.approx(0.8), 8: pytest.approx(0.8)}
    # the ROC PNG of each validation; the best checkpoint as artifact (offline), file kept
    assert sorted(images) == [("lfw", "roc", 4), ("lfw", "roc", 8)]
    assert sum(n.endswith(".png") for n in names) == 2
    stored = [n for n in names if "/artifacts/best_checkpoint/" in n]
    with zipfile.ZipFile(tracking.session_zip) as zf:
        assert len(stored) == 1 and zf.read(stored[0]) == best.read_bytes()
    assert [a["key"] for a in task["execution"]["artifacts"]] == ["best_checkpoint"]
    assert best.is_file()


def test_a_run_stopped_before_completed_is_closed_by_close(tmp_path, monkeypatch):
    """A NaN stop skips ``COMPLETED``: the recipe's ``finally`` calls ``close()``, which writes the
    session; the next run of the process gets a task of its own."""
    monkeypatch.delenv("CLEARML_CACHE_DIR", raising=False)
    trainer, optimizers, data, _ = tiny_trainer(tmp_path)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2),
                              lambda e: e.terminate(skip_completed=True))
    first = clearml_handler.attach(trainer, str(tmp_path / "run1"), mode="offline",
                                   task_name="stopped", log_interval=1, optimizers=optimizers)
    trainer.run(data, max_epochs=1)
    assert trainer.state.iteration == 2 and not first.closed
    session = first.close()
    assert first.closed and session and first.close() == session
    assert session.startswith(str(tmp_path / "run1" / "clearml"))
    task, scalars, _, _ = read_session(session)
    assert task["name"] == "stopped" and set(scalars[("train", "loss")]) == {1, 2}
    trainer, optimizers, data, _ = tiny_trainer(tmp_path)
    second = clearml_handler.attach(trainer, str(tmp_path / "run2"), mode="offline",
                                    task_name="next", log_interval=1, optimizers=optimizers)
    assert second.owns_task and second.task.id != first.task.id
    trainer.run(data, max_epochs=1)
    assert second.closed and read_session(second.session_zip)[0]["name"] == "next"


def test_off_imports_and_writes_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "clearml", None)  # any `import clearml` would now fail
    trainer, _, data, _ = tiny_trainer(tmp_path)
    with caplog.at_level(logging.WARNING, logger="faceignite"):
        assert clearml_handler.attach(trainer, str(tmp_path / "run"), mode="off") is None
        trainer.run(data, max_epochs=1)
    assert not (tmp_path / "run").exists()
    assert not [r for r in caplog.records if r.name == "faceignite"]


def test_resolve_mode_without_server(monkeypatch, tmp_path):
    for var in ("CLEARML_OFFLINE_MODE", "CLEARML_API_HOST", "CLEARML_API_ACCESS_KEY",
                "CLEARML_API_SECRET_KEY", "CLEARML_AUTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "none.conf"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/clearml.conf either
    from clearml.config import config_obj
    if config_obj.get("api.credentials.access_key", None):
        pytest.skip("this machine has ClearML credentials in its configuration")
    assert clearml_session.resolve_mode("auto") == ("offline", None)
    mode, warning = clearml_session.resolve_mode("online")
    assert mode == "offline" and "clearml-init" in warning
    with pytest.raises(ValueError):
        clearml_session.resolve_mode("sometimes")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn, spent: list):
    """``fn``, appending the seconds each call takes to ``spent``."""
    def wrapper(*args, **kwargs):
        start = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            spent.append(time.monotonic() - start)
    return wrapper


def tiny_faces(synthetic_root, root):
    """4 identities x 5 real JPEGs of the synthetic set: 2 steps an epoch at batch size 8."""
    for folder in sorted(p for p in synthetic_root[0].iterdir() if p.is_dir())[:4]:
        (root / folder.name).mkdir(parents=True)
        for jpg in sorted(folder.glob("*.jpg"))[:5]:
            shutil.copy(jpg, root / folder.name / jpg.name)
    return root


def test_probe_counts_any_answer_but_5xx_and_bounds_the_wait():
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for code, reachable in ((200, True), (401, True), (404, True), (502, False)):
            status["code"] = code
            assert (clearml_session.probe_server(url, timeout=5) is None) == reachable, code
    finally:
        server.shutdown()
        server.server_close()
    assert "refused" in clearml_session.probe_server(f"http://127.0.0.1:{closed_port()}", 5)


@pytest.fixture
def self_signed_server(tmp_path):
    """A real HTTPS server on 127.0.0.1 with a self-signed certificate (made by openssl): its
    URL and the certificate file."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not found (it makes the self-signed certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()


def test_probe_verifies_tls_unless_explicitly_allowed(self_signed_server, monkeypatch):
    """The probe goes through ClearML's own HTTP session: its TLS setting is ClearML's (and,
    as for ClearML's own requests, a REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE would take precedence)."""
    url, cert = self_signed_server
    for var in ("CLEARML_API_HOST_VERIFY_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    from clearml.config import config_obj
    if config_obj.get("api.verify_certificate", True) is not True:
        pytest.skip("this machine's clearml.conf sets api.verify_certificate")
    reason = clearml_session.probe_server(url, timeout=5)
    assert reason and "CERTIFICATE_VERIFY_FAILED" in reason, reason
    monkeypatch.setenv("CLEARML_API_HOST_VERIFY_CERT", "false")  # opted out
    assert clearml_session.probe_server(url, timeout=5) is None
    monkeypatch.setenv("CLEARML_API_HOST_VERIFY_CERT", str(cert))  # its CA
    assert clearml_session.probe_server(url, timeout=5) is None


def test_self_signed_server_follows_clearml_verify_setting(self_signed_server, monkeypatch,
                                                           tmp_path):
    """The probe takes ClearML's own ``CLEARML_API_HOST_VERIFY_CERT`` (or
    ``api.verify_certificate``): verified by default, off or a CA file only when set."""
    url, cert = self_signed_server
    for var in ("CLEARML_OFFLINE_MODE", "CLEARML_API_HOST_VERIFY_CERT", "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE"):  # the last two: requests would prefer them (see above)
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "none.conf"))
    monkeypatch.setenv("CLEARML_API_HOST", url)
    monkeypatch.setenv("CLEARML_API_ACCESS_KEY", "FACEIGNITETESTKEY")
    monkeypatch.setenv("CLEARML_API_SECRET_KEY", "tls-test-secret")
    from clearml.config import config_obj
    if config_obj.get("api.verify_certificate", True) is not True:
        pytest.skip("this machine's clearml.conf sets api.verify_certificate")
    mode, warning = clearml_session.resolve_mode("auto", timeout=5)
    assert mode == "offline" and url in warning and "CERTIFICATE_VERIFY_FAILED" in warning
    for allowed in ("0", "false", str(cert)):
        monkeypatch.setenv("CLEARML_API_HOST_VERIFY_CERT", allowed)
        assert clearml_session.resolve_mode("auto", timeout=5) == ("online", None), allowed


def test_unreachable_server_does_not_stop_training(train_args, synthetic_root, tmp_path,
                                                   monkeypatch, caplog):
    """Credentials set, API server on a closed port (ClearML alone retries for > 120 s)."""
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.delenv("CLEARML_OFFLINE_MODE", raising=False)
    monkeypatch.delenv("CLEARML_CACHE_DIR", raising=False)
    for var in ("CLEARML_API_HOST", "CLEARML_WEB_HOST", "CLEARML_FILES_HOST"):
        monkeypatch.setenv(var, url)
    monkeypatch.setenv("CLEARML_API_ACCESS_KEY", "FACEIGNITETESTKEY")
    monkeypatch.setenv("CLEARML_API_SECRET_KEY", "faceignite-test-secret")
    spent: list = []  # seconds inside the ClearML handler: start (probe, init) and close
    monkeypatch.setattr(clearml_handler, "attach", timed(clearml_handler.attach, spent))
    monkeypatch.setattr(clearml_handler.ClearMLTracking, "close",
                        timed(clearml_handler.ClearMLTracking.close, spent))
    args = [a for a in train_args if a not in ("--clearml", "off")]
    args[args.index("--dataroot") + 1] = str(tiny_faces(synthetic_root, tmp_path / "faces"))
    args += ["--clearml", "auto", "--epochs", "2", "--batch_size", "8", "--log_interval", "1",
             "--tensorboard", str(tmp_path / "tb")]

    with caplog.at_level(logging.WARNING, logger="faceignite"):
        metrics = main(args)

    assert "train_loss" in metrics and "val_accuracy" in metrics  # trained and validated
    assert len(spent) >= 2 and sum(spent) < 30, spent  # bounded (ClearML alone: > 120 s)
    warnings = [r.getMessage() for r in caplog.records  # ours, not ClearML's own logger's
                if r.name == "faceignite" and "clearml" in r.getMessage()]
    assert len(warnings) == 1 and "unreachable" in warnings[0] and url in warnings[0], warnings
    # the run went on offline: its session sits in the run folder, with the parsed options
    zips = list((tmp_path / "runs").glob("resnet34_center-*/clearml/offline/*.zip"))
    assert len(zips) == 1
    task, scalars, _, names = read_session(zips[0])
    assert task["hyperparams"]["Args"]["image_size"]["value"] == "32"
    assert sorted(task["tags"]) == ["SoftmaxCenterLoss", "tiny"]
    assert ("train", "loss") in scalars and ("holdout", "val_accuracy") in scalars
    with zipfile.ZipFile(zips[0]) as zf:
        assert not any(b"faceignite-test-secret" in zf.read(n) for n in names)
    assert "faceignite-test-secret" not in caplog.text
    # and TensorBoard, on at the same time, wrote its event file
    assert list((tmp_path / "tb").glob("resnet34_center-*/events.out.tfevents.*"))


def test_resumed_run_continues_its_offline_task(train_args, synthetic_root, tmp_path, monkeypatch):
    monkeypatch.delenv("CLEARML_CACHE_DIR", raising=False)
    args = [a for a in train_args if a not in ("--clearml", "off")]
    args[args.index("--dataroot") + 1] = str(tiny_faces(synthetic_root, tmp_path / "faces"))
    args += ["--clearml", "offline", "--batch_size", "8", "--log_interval", "1", "--epochs", "2"]
    main(args)  # 2 epochs of 2 steps
    run_dir = next((tmp_path / "runs").glob("resnet34_center-*"))
    first = json.loads((run_dir / "clearml" / "task.json").read_text())
    assert first["mode"] == "offline" and first["id"].startswith("offline-")
    session = run_dir / "clearml" / "offline" / f"{first['id']}.zip"

    def loss_events() -> list[int]:
        with zipfile.ZipFile(session) as zf:
            return sorted(e["iter"] for line in zf.read("metrics.jsonl").decode().splitlines()
                          if line.strip() for e in json.loads(line)
                          if e["type"] == "training_stats_scalar" and e["variant"] == "loss"
                          and e["metric"] == "train")

    assert loss_events() == [1, 2, 3, 4]
    # resume from the end of epoch 1: the same task goes on, at the trainer's iteration numbers
    main(args + ["--resume_path", str(run_dir / "training_checkpoint_2.pt")])
    assert json.loads((run_dir / "clearml" / "task.json").read_text()) == first
    assert [p.name for p in run_dir.glob("clearml/offline/*.zip")] == [session.name]
    assert loss_events() == [1, 2, 3, 3, 4, 4]  # epoch 2 twice, not shifted by ClearML


def test_a_run_started_from_a_process_with_a_clearml_task_gets_its_own_task(tmp_path,
                                                                           synthetic_root):
    """A parent's ClearML mark (CLEARML_PROC_MASTER_ID, inherited) used to give the run a stub
    task and a crash writing its record."""
    from conftest import REPO

    root = tiny_faces(synthetic_root, tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLEARML_CACHE_DIR": str(tmp_path / "cache"),
           "CLEARML_PROC_MASTER_ID": "1:0123456789abcdef"}  # pid 1: not this run's
    done = zygote.run([sys.executable, "experiments/resnet34_center.py", "--dataroot",
                      str(root), "--model", "tiny", "--image_size", "32", "--epochs", "1",
                      "--batch_size", "4", "--valid_split", "0", "--num_workers", "0",
                      "--device", "cpu", "--clearml", "offline", "--output_dir",
                      str(tmp_path / "runs")], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").glob("resnet34_center-*")
    record = json.loads((run_dir / "clearml" / "task.json").read_text())
    assert isinstance(record["id"], str) and record["mode"] == "offline"
