"""Verification .bin files (three variants written from the pickle format), the restricted
unpickler against malicious files, and .bin vs LFW-folder evaluation of the same pairs."""
from __future__ import annotations

import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch.nn.functional as F

from conftest import fold_pairs, pair_files, shared_path
from faceignite.errors import FaceIgniteError
from faceignite.verification import create_pairs_evaluator, save_roc_curve
from faceignite.verification.bin_set import load_bin
from faceignite.verification.targets import create_target_evaluator, load_target, load_targets

PER_FOLD = 2  # same and different pairs per fold: 10 folds x (2 + 2) = 40 pairs


# --------------------------------------------------------------- Python 2 pickles, by opcode
def py2_str(data: bytes) -> bytes:
    """Python 2 ``str``: SHORT_BINSTRING (< 256 bytes) or BINSTRING."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def py2_list(items: list[bytes]) -> bytes:
    return b"](" + b"".join(items) + b"e"  # EMPTY_LIST MARK … APPENDS


def py2_bool(value: bool) -> bytes:
    return b"\x88" if value else b"\x89"  # NEWTRUE / NEWFALSE


def py2_uint8_array(data: bytes) -> bytes:
    """A numpy 1.x array pickled by Python 2 (protocol 2), ``numpy.core.multiarray`` names."""
    dtype = (b"cnumpy\ndtype\n" + py2_str(b"u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85"
            + py2_str(b"b") + b"\x87R"
            + b"(K\x01" + b"J" + struct.pack("<i", len(data)) + b"\x85" + dtype + b"\x89"
            + py2_str(data) + b"tb")


def py2_bin(images: list[bytes], issame: list[bool], arrays: bool = False) -> bytes:
    """``pickle.dump((bins, issame_list), f, protocol=2)`` as Python 2 wrote it."""
    encode = py2_uint8_array if arrays else py2_str
    return (b"\x80\x02" + py2_list([encode(b) for b in images])
            + py2_list([py2_bool(s) for s in issame]) + b"\x86.")


# --------------------------------------------------------------- fixtures: real LFW pairs
@pytest.fixture(scope="module")
def pairs_set(tmp_path_factory):
    """An LFW-format folder with the first 2 same + 2 different pairs of each of LFW's 10 folds
    (real MTCNN crops), and the same pairs as (image bytes, issame) in file order."""
    lfw = shared_path("lfw", "lfw-mtcnn-160")
    chosen = fold_pairs(shared_path("lfw", "pairs.txt"), PER_FOLD)
    root = tmp_path_factory.mktemp("lfw_small")
    (root / "pairs.txt").write_text(f"10\t{PER_FOLD}\n" + "\n".join(chosen) + "\n")
    images, issame = [], []
    for line in chosen:
        files, same = pair_files(line)
        for person, name in files:
            src = lfw / person / name
            (root / person).mkdir(exist_ok=True)
            shutil.copy(src, root / person / src.name)
            images.append(src.read_bytes())
        issame.append(same)
    return root, images, issame


def variants(images, issame) -> dict[str, bytes]:
    arrays = [np.frombuffer(b, dtype=np.uint8) for b in images]
    return {
        "py2_str": py2_bin(images, issame),
        "py2_numpy": py2_bin(images, issame, arrays=True),
        "py3_bytes": pickle.dumps((images, issame), protocol=2),
        "py3_numpy": pickle.dumps((arrays, np.array(issame)), protocol=2),
        "py3_numpy_p5": pickle.dumps((arrays, [np.bool_(s) for s in issame]), protocol=5),
    }


def test_the_variants_use_the_opcodes_they_claim(pairs_set):
    _, images, issame = pairs_set
    v = variants(images[:2], issame[:1])
    assert b"_codecs\nencode" in v["py3_bytes"] and b"numpy._core.multiarray" in v["py3_numpy"]
    assert v["py2_str"].startswith(b"\x80\x02]") and b"_codecs" not in v["py2_str"]
    assert b"numpy.core.multiarray\n_reconstruct" in v["py2_numpy"]


@pytest.mark.parametrize("variant", ["py2_str", "py2_numpy", "py3_bytes", "py3_numpy",
                                     "py3_numpy_p5"])
def test_every_variant_reads_back_the_images_and_labels(pairs_set, tmp_path, variant):
    _, images, issame = pairs_set
    path = tmp_path / f"{variant}.bin"
    path.write_bytes(variants(images, issame)[variant])
    data = load_bin(str(path))
    assert data.images == images and data.issame.tolist() == issame
    target = load_target(str(path))
    assert target.name == variant and len(target.pairs) == 40
    assert np.array_equal(target.pairs.folds, np.repeat(np.arange(10), 4))


# --------------------------------------------------------------- malicious files
class _Opens:
    """Unpickling this would create ``path`` (``open(path, 'w')``)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("how", ["open", "system", "hidden_in_images", "codec", "object_dtype",
                                 "huge_array"])
def test_a_malicious_bin_is_refused_and_runs_nothing(tmp_path, how):
    marker = tmp_path / "pwned"
    if how == "open":
        payload = pickle.dumps(([_Opens(str(marker))], [True]), protocol=2)
    elif how == "system":
        payload = pickle.dumps(([b"a", b"b"], [_System(f"touch {marker}")]), protocol=2)
    elif how == "hidden_in_images":  # after valid images, in the last slot
        payload = pickle.dumps(([b"\xff\xd8" * 10, _Opens(str(marker))], [True]), protocol=4)
    elif how == "codec":  # _codecs.encode is allowed for latin1 only
        payload = pickle.dumps(([b"x", b"y"], [True]), protocol=2).replace(
            b"X\x06\x00\x00\x00latin1", b"X\x06\x00\x00\x00base64", 1)
    elif how == "object_dtype":
        payload = pickle.dumps(([np.array([None], dtype=object), b"y"], [True]), protocol=2)
    else:  # numpy.ndarray((10**9,)) called directly: 1 GB from a few bytes of pickle
        payload = b"\x80\x02(cnumpy\nndarray\nJ\x00\xca\x9a\x3b\x85\x85R]\x86."
    path = tmp_path / "evil.bin"
    path.write_bytes(payload)
    with pytest.raises(FaceIgniteError) as exc:
        load_bin(str(path))
    message = str(exc.value)
    assert "\n" not in message and str(path) in message and "refused" in message
    expected = {"open": "global io.open", "system": "system", "hidden_in_images": "open",
                "codec": "base64", "object_dtype": "O", "huge_array": "numpy.ndarray"}[how]
    assert expected in message
    assert not marker.exists()


def test_damaged_or_wrong_content_is_one_line(tmp_path):
    for name, payload in {"cut": pickle.dumps(([b"a", b"b"], [True]))[:-5],
                          "odd": pickle.dumps(([b"a", b"b", b"c"], [True])),
                          "dict": pickle.dumps({"a": 1})}.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(payload)
        with pytest.raises(FaceIgniteError) as exc:
            load_bin(str(path))
        assert "\n" not in str(exc.value) and str(path) in str(exc.value)


# --------------------------------------------------------------- same pairs, same numbers
def pixels(x):
    """A fixed 'model': 8x8 average-pooled pixels (deterministic, no training needed)."""
    return F.adaptive_avg_pool2d(x, 8).flatten(1)


@pytest.mark.parametrize("flip", [False, True])
def test_bin_and_lfw_folder_give_the_same_result(pairs_set, tmp_path, flip):
    root, images, issame = pairs_set
    path = tmp_path / "lfw.bin"
    path.write_bytes(py2_bin(images, issame))
    kwargs = dict(image_size=32, batch_size=16, flip=flip)
    from_bin = create_target_evaluator(pixels, load_target(str(path)), "cpu", **kwargs).run()
    from_dir = create_pairs_evaluator(pixels, str(root), "cpu", **kwargs).run()
    from_target = create_target_evaluator(pixels, load_target(str(root)), "cpu", **kwargs).run()
    for result in (from_bin, from_target):
        assert result.auc == pytest.approx(from_dir.auc, abs=1e-12)
        assert result.accuracy == pytest.approx(from_dir.accuracy, abs=1e-12)
        assert np.allclose(result.fold_accuracies, from_dir.fold_accuracies)
        assert result.num_pairs == 40 and result.num_folds == 10
    assert 0.5 < from_bin.auc < 1.0  # pixels tell some pairs apart, not all
    png = save_roc_curve(from_bin, str(tmp_path / "roc_lfw.png"), title="lfw.bin")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_targets_are_named_by_stem_or_folder_and_names_must_differ(pairs_set, tmp_path):
    root, images, issame = pairs_set
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "agedb_30.bin").write_bytes(pickle.dumps((images, issame), protocol=2))
    targets = load_targets([str(tmp_path / "a" / "agedb_30.bin"), str(root)])
    assert [t.name for t in targets] == ["agedb_30", root.name]
    assert [t.kind for t in targets] == ["bin", "lfw"]
    shutil.copy(tmp_path / "a" / "agedb_30.bin", tmp_path / "agedb_30.bin")
    with pytest.raises(FaceIgniteError, match="both named 'agedb_30'"):
        load_targets([str(tmp_path / "a" / "agedb_30.bin"), str(tmp_path / "agedb_30.bin")])
    with pytest.raises(FaceIgniteError, match="not a .bin file nor an LFW-format folder"):
        load_target(str(tmp_path / "missing.bin"))
