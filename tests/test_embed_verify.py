"""Using a trained model: embed and verify agree with the LFW evaluator on the same real images."""
import logging
import os

import numpy as np
import pytest
import torch
from ignite.engine import Events

from conftest import shared_path
from faceignite import embed, evaluate, verify
from faceignite.export import export_embedding_model
from faceignite.verification import create_pairs_evaluator, pair_distances
from faceignite.models import build_model

SIZE = 32


@pytest.fixture(scope="module")
def lfw_case(tmp_path_factory):
    """12 real LFW pairs, the evaluator's embeddings and result, and a checkpoint holding the
    threshold that evaluation chose (as the LFW handler saves it)."""
    lfw = shared_path("lfw", "lfw-mtcnn-160")
    lines = shared_path("lfw", "pairs.txt").read_text().splitlines()
    tmp = tmp_path_factory.mktemp("lfw_case")
    pairs_file = tmp / "pairs.txt"
    pairs_file.write_text("\n".join(lines[1:7] + lines[301:307]) + "\n")  # 6 same + 6 different
    torch.manual_seed(0)
    model = build_model("tiny", 32).eval()
    evaluator = create_pairs_evaluator(model, str(lfw), "cpu", SIZE, str(pairs_file), batch_size=8)
    rows = {}

    @evaluator.engine.on(Events.ITERATION_COMPLETED)
    def collect(engine):
        embeddings, index = engine.state.output
        rows.update(zip(index.tolist(), embeddings.numpy()))

    result = evaluator.run()
    pairs = evaluator.pairs
    embeddings = np.stack([rows[i] for i in range(len(pairs.keys))])
    images = tmp / "images"  # the pairs' images, as a user's folder of faces
    for key, path in zip(pairs.keys, evaluator.paths):
        (images / os.path.dirname(key)).mkdir(parents=True, exist_ok=True)
        (images / f"{key}.jpg").symlink_to(path)
    checkpoint = tmp / "checkpoint.pt"
    torch.save({"model_state_dict": model.state_dict(), "model_architecture": "tiny",
                "embedding_dimension": 32, "image_size": SIZE, "lfw_threshold": result.threshold,
                "config": {"distance": "l2", "lfw_flip": False, "image_size": SIZE}}, checkpoint)
    return dict(pairs=pairs, paths=evaluator.paths, embeddings=embeddings, result=result,
                images=images, checkpoint=checkpoint, pairs_file=pairs_file, tmp=tmp,
                distances=pair_distances(embeddings, pairs.left, pairs.right))


def test_embed_writes_the_evaluators_embeddings_and_names(lfw_case, tmp_path):
    out, names = embed.main(["--checkpoint", str(lfw_case["checkpoint"]), str(lfw_case["images"]),
                             "--out", str(tmp_path / "faces.npy"), "--device", "cpu"])
    array = np.load(out)
    listed = open(names).read().split()
    keys = lfw_case["pairs"].keys
    assert sorted(listed) == listed and sorted(listed) == sorted(f"{k}.jpg" for k in keys)
    rows = [listed.index(f"{k}.jpg") for k in keys]
    assert array.dtype == np.float32 and np.allclose(np.linalg.norm(array, axis=1), 1, atol=1e-5)
    assert np.allclose(array[rows], lfw_case["embeddings"], atol=1e-5)
    # the pair (.npy, names) is what the stand-alone evaluation reads: same protocol result
    again = evaluate.main(["--embeddings", out, "--names", names, "--lfw_pairs",
                           str(lfw_case["pairs_file"]), "--output_dir", str(tmp_path / "eval")])
    assert again.accuracy == pytest.approx(lfw_case["result"].accuracy)
    assert again.threshold == pytest.approx(lfw_case["result"].threshold, abs=1e-6)


def test_verify_decides_at_the_checkpoint_threshold_like_the_evaluator(lfw_case, capsys):
    pairs, paths, threshold = lfw_case["pairs"], lfw_case["paths"], lfw_case["result"].threshold
    for p in (0, 1, 6, 7):  # two same-person pairs, two different-person pairs
        result = verify.main([paths[pairs.left[p]], paths[pairs.right[p]], "--device", "cpu",
                              "--checkpoint", str(lfw_case["checkpoint"])])
        expected = lfw_case["distances"][p]
        assert result.distance == pytest.approx(expected, abs=1e-5)
        assert result.threshold == pytest.approx(threshold) and result.same == (expected <= threshold)
        assert ("SAME" if result.same else "DIFFERENT") in capsys.readouterr().out


def test_verify_reads_an_exported_model_folder_too(lfw_case):
    folder = export_embedding_model(str(lfw_case["checkpoint"]), str(lfw_case["tmp"] / "export"))
    pairs, paths = lfw_case["pairs"], lfw_case["paths"]
    result = verify.main([paths[pairs.left[6]], paths[pairs.right[6]], "--checkpoint", folder,
                          "--device", "cpu"])
    assert result.distance == pytest.approx(lfw_case["distances"][6], abs=1e-5)
    assert result.threshold == pytest.approx(lfw_case["result"].threshold)


def test_bad_inputs_give_one_line_errors(lfw_case, tmp_path, caplog, capsys):
    good = lfw_case["paths"][0]
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a picture")
    caplog.set_level(logging.ERROR)
    with pytest.raises(SystemExit) as exc:
        verify.main([good, str(not_image), "--checkpoint", str(lfw_case["checkpoint"])])
    assert exc.value.code == 2 and f"cannot decode image {not_image}" in caplog.text
    ckpt = torch.load(lfw_case["checkpoint"], weights_only=True)
    del ckpt["lfw_threshold"]
    torch.save(ckpt, tmp_path / "no_threshold.pt")
    with pytest.raises(SystemExit):
        verify.main([good, good, "--checkpoint", str(tmp_path / "no_threshold.pt")])
    assert "distance 0.0000 (l2), no threshold" in capsys.readouterr().out
    assert "no lfw_threshold" in caplog.text and "--threshold" in caplog.text
    assert verify.main([good, good, "--checkpoint", str(tmp_path / "no_threshold.pt"),
                        "--threshold", "0.5"]).same is True
    with pytest.raises(SystemExit):
        embed.main(["--checkpoint", str(lfw_case["checkpoint"]), str(tmp_path / "missing"),
                    "--out", str(tmp_path / "x.npy")])
    assert f"images folder not found: {tmp_path / 'missing'}" in caplog.text
