"""RecordIO training data: fixtures written from the format's specification with ``struct``
(dmlc-core recordio chunks, MXNet's IRHeader), both layouts, damage, and the packer round trip."""
from __future__ import annotations

import os
import pickle
import shutil
import struct

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import copy_subset, shared_path
from faceignite.checkpoint import load_checkpoint
from faceignite.config import options_group, parse_args
from faceignite.data import DataOptions, build_face_data
from faceignite.data.dataset import FaceImageDataset
from faceignite.data.index import scan_identity_folders
from faceignite.data.pack import main as pack_main
from faceignite.data.record_index import RecordImageReader, load_or_build_record_index
from faceignite.data.recordio import IndexedRecordReader, encode_record
from faceignite.errors import FaceIgniteError

MAGIC = 0xCED7230A


# --------------------------------------------------------------- the specification, in struct
def spec_chunk(cflag: int, data: bytes) -> bytes:
    """One dmlc chunk: LE magic, lrec = cflag << 29 | length, data, zero padding to 4 bytes."""
    return struct.pack("<II", MAGIC, cflag << 29 | len(data)) + data + b"\0" * (-len(data) % 4)


def ir_header(label, image: bytes = b"", id_: int = 0, id2: int = 0) -> bytes:
    """MXNet IRHeader 'IfQQ' (flag, label, id, id2), float32 labels after it when flag > 0."""
    if isinstance(label, (list, tuple)):
        return struct.pack("<IfQQ", len(label), 0.0, id_, id2) + struct.pack(
            f"<{len(label)}f", *label) + image
    return struct.pack("<IfQQ", 0, float(label), id_, id2) + image


def write_rec(folder, records: list[tuple[int, bytes]], name: str = "train") -> str:
    """``records`` as ``(key, already-chunked bytes)`` in file order, plus the ``.idx``."""
    os.makedirs(folder, exist_ok=True)
    rec, idx = os.path.join(folder, f"{name}.rec"), os.path.join(folder, f"{name}.idx")
    with open(rec, "wb") as r, open(idx, "w") as i:
        for key, chunks in records:
            i.write(f"{key}\t{r.tell()}\n")
            r.write(chunks)
    return rec


def whole(payload: bytes) -> bytes:
    return spec_chunk(0, payload)


def split_at_magic_record(label: int, image: bytes) -> tuple[bytes, bytes]:
    """A record whose header holds the magic number three times (id's low word, both words of
    id2), chunked by hand as the spec says: parts [0:8] (flag 1), [12:16] (2), [20:20] (2),
    [24:] (3).  Returns (payload, chunks)."""
    payload = ir_header(label, image, id_=MAGIC, id2=MAGIC | MAGIC << 32)
    assert payload[8:12] == payload[16:20] == payload[20:24] == struct.pack("<I", MAGIC)
    chunks = (spec_chunk(1, payload[0:8]) + spec_chunk(2, payload[12:16])
              + spec_chunk(2, payload[20:20]) + spec_chunk(3, payload[24:]))
    return payload, chunks


def rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Real aligned faces: 4 identities x 3 JPEGs (CelebA subset)."""
    src = shared_path("celeba_subset", "aligned-160")
    return copy_subset(src, tmp_path_factory.mktemp("faces"), identities=4, images=3)


def face_files(root) -> list[tuple[str, int]]:
    return [(p, label) for p, label in scan_identity_folders(str(root)).samples()]


# --------------------------------------------------------------- chunks
def test_writer_splits_where_the_magic_occurs_as_the_spec_says(faces):
    path, _ = face_files(faces)[0]
    image = open(path, "rb").read()
    payload, chunks = split_at_magic_record(3, image)
    assert encode_record(payload) == chunks
    assert encode_record(ir_header(1, image)) == whole(ir_header(1, image))


# --------------------------------------------------------------- the two layouts
def test_insightface_layout_from_the_spec(faces, tmp_path):
    """Record 0 = header [N+1, N+1+K]; images 1..N; identity records [start, end); records in a
    shuffled file order (the .idx offsets are what count); one record split at the magic."""
    files = face_files(faces)
    n, k = len(files), 4
    records, key, ranges = [], 1, []
    for label in range(k):
        mine = [p for p, lab in files if lab == label]
        first = key
        for p in mine:
            image = open(p, "rb").read()
            chunks = (split_at_magic_record(label, image)[1] if key in (1, 6)
                      else whole(ir_header(label, image, id_=key)))
            records.append((key, chunks))
            key += 1
        ranges.append((first, key))
    records += [(n + 1 + i, whole(ir_header([a, b]))) for i, (a, b) in enumerate(ranges)]
    records.append((0, whole(ir_header([n + 1, n + 1 + k]))))
    order = np.random.default_rng(0).permutation(len(records))
    rec = write_rec(tmp_path / "ms1m", [records[i] for i in order])
    (tmp_path / "ms1m" / "property").write_text(f"{k},160,160\n")

    for root in (str(tmp_path / "ms1m"), rec):  # the folder, or the .rec itself
        index = load_or_build_record_index(root, str(tmp_path / f"cache{len(root)}.json"))
        assert index.classes == ["0", "1", "2", "3"]
        assert index.labels() == [lab for _, lab in files]
        reader = index.image_reader()
        for (key, label), (path, want) in zip(index.samples(), files):
            assert label == want
            assert np.array_equal(reader(key), rgb(path))  # keys 1, 6 split at the magic


def test_im2rec_layout_every_key_an_image(faces, tmp_path):
    """No header record: keys from 0, each an image with its label (key 0's has two values:
    the first counts; key 4 is split at the magic inside its header); labels 7, 3, 9, 5 become
    classes 0..3 in label order."""
    files = face_files(faces)
    raw_labels = [7, 3, 9, 5]
    records = [(key, whole(ir_header(raw_labels[label], open(p, "rb").read(), id_=key)))
               for key, (p, label) in enumerate(files)]
    # record 0 with a multi-value label (flag 2) and an image: an image, not a header record
    records[0] = (0, whole(ir_header([raw_labels[files[0][1]], 0.5], open(files[0][0], "rb").read())))
    records[4] = (4, split_at_magic_record(raw_labels[files[4][1]], open(files[4][0], "rb").read())[1])
    rec = write_rec(tmp_path / "im2rec", records, name="faces")
    index = load_or_build_record_index(rec)
    assert index.classes == ["3", "5", "7", "9"]
    reader = index.image_reader()
    got = {key: label for key, label in index.samples()}
    for key, (path, label) in enumerate(files):
        assert index.classes[got[key]] == str(raw_labels[label])
        assert np.array_equal(reader(key), rgb(path))


def test_decoded_channels_are_rgb_not_bgr(faces, tmp_path):
    """Checked against Pillow (an independent decoder that gives RGB)."""
    path, _ = face_files(faces)[0]
    rec = write_rec(tmp_path / "one", [(0, whole(ir_header(0, open(path, "rb").read())))])
    image = RecordImageReader(rec)(0).astype(float)
    pil = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    assert np.abs(image - pil).mean() < 2.0
    assert np.abs(image[..., ::-1] - pil).mean() > 5 * np.abs(image - pil).mean() + 1


def test_labels_beyond_float32_exactness_are_refused(faces, tmp_path):
    path, _ = face_files(faces)[0]
    image = open(path, "rb").read()
    rec = write_rec(tmp_path / "big", [(0, whole(ir_header(0, image))),
                                       (1, whole(ir_header(float(2 ** 24), image)))])
    with pytest.raises(FaceIgniteError, match="2\\^24"):
        load_or_build_record_index(rec)


# --------------------------------------------------------------- damage: one line, file and key
def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def _small_rec(faces, folder) -> str:
    files = face_files(faces)[:3]
    return write_rec(folder, [(key, whole(ir_header(0, open(p, "rb").read())))
                              for key, (p, _) in enumerate(files)])


def test_truncated_rec_names_file_and_key(faces, tmp_path):
    rec = _small_rec(faces, tmp_path / "cut")
    with open(rec, "r+b") as f:
        f.truncate(os.path.getsize(rec) - 100)
    with pytest.raises(FaceIgniteError) as exc:
        load_or_build_record_index(rec)
    message = one_line(exc)
    assert rec in message and "key 2" in message and "truncated" in message


def test_idx_offset_past_the_end_names_file_and_key(faces, tmp_path):
    rec = _small_rec(faces, tmp_path / "far")
    with open(rec[:-4] + ".idx", "a") as f:
        f.write(f"17\t{os.path.getsize(rec) + 4096}\n")
    with pytest.raises(FaceIgniteError) as exc:
        load_or_build_record_index(rec)
    message = one_line(exc)
    assert rec in message and "key 17" in message and "past the end" in message


def test_bad_magic_names_file_and_key_and_the_loader_skips_it(faces, tmp_path, caplog):
    rec = _small_rec(faces, tmp_path / "bad")
    reader = IndexedRecordReader(rec)
    with open(rec, "r+b") as f:
        f.seek(reader.offset(1))
        f.write(b"\0\0\0\0")
    with pytest.raises(FaceIgniteError) as exc:
        reader.read(1)
    assert "key 1" in one_line(exc) and "magic" in one_line(exc)
    dataset = FaceImageDataset([(0, 0), (1, 0), (2, 0)], read=RecordImageReader(rec))
    assert dataset[1] is None and dataset[0] is not None and dataset[2] is not None
    assert f"{rec} key 1" in caplog.text


# --------------------------------------------------------------- workers: one handle each
def test_any_number_of_workers_read_every_record(faces, tmp_path):
    from torch.utils.data import DataLoader

    out = tmp_path / "packed"
    assert pack_main([str(faces), str(out), "--no_progress"]) == 0
    index = load_or_build_record_index(str(out))
    reader = index.image_reader()
    reader(1)  # the parent opens its handle first: workers must not share it
    copy = pickle.loads(pickle.dumps(reader))  # how a spawned worker gets it: no handle inside
    assert copy.records._file is None and np.array_equal(copy(1), reader(1))
    dataset = FaceImageDataset(index.samples(), read=reader)
    want = [(rgb(p), lab) for p, lab in face_files(faces)]
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size=None, num_workers=workers)
        got = list(loader)
        assert len(got) == len(want)
        for (image, label), (ref, ref_label) in zip(got, want):
            assert int(label) == ref_label and np.array_equal(np.asarray(image), ref)


# --------------------------------------------------------------- pack → train
def test_pack_writes_insightface_layout_by_the_spec(faces, tmp_path):
    """Read the packed files back with a struct-only parser of the spec (not our reader)."""
    out = tmp_path / "packed"
    assert pack_main([str(faces), str(out), "--no_progress"]) == 0
    assert sorted(os.listdir(out)) == ["property", "train.idx", "train.rec"]
    files = face_files(faces)
    n, k = len(files), 4
    assert (out / "property").read_text().strip() == f"{k},160,160"
    offsets = dict(tuple(map(int, line.split("\t"))) for line in
                   (out / "train.idx").read_text().splitlines())
    assert sorted(offsets) == list(range(n + k + 1))
    data = (out / "train.rec").read_bytes()

    def payload(key):
        magic, lrec = struct.unpack_from("<II", data, offsets[key])
        assert magic == MAGIC and lrec >> 29 == 0  # no magic inside these records
        start = offsets[key] + 8
        return data[start:start + (lrec & (2 ** 29 - 1))]

    def header(key):
        flag, label, _, _ = struct.unpack_from("<IfQQ", payload(key))
        return (flag, label) if flag == 0 else (flag, struct.unpack_from(f"<{flag}f",
                                                                         payload(key), 24))
    assert header(0) == (2, (n + 1.0, n + 1.0 + k))
    for key, (path, label) in enumerate(files, start=1):
        assert header(key) == (0, float(label))
        assert payload(key)[24:] == open(path, "rb").read()
    first = 1
    for label in range(k):
        count = sum(1 for _, lab in files if lab == label)
        assert header(n + 1 + label) == (2, (float(first), float(first + count)))
        first += count


def test_pack_errors_are_one_line_and_leave_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert pack_main([str(tmp_path / "empty"), str(tmp_path / "out"), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_folder_and_packed_rec_give_the_same_data_split_and_pk_batches(tmp_path):
    """The labels, the stratified split and the P x K batches are those of the folder."""
    src = copy_subset(shared_path("celeba_subset", "aligned-160"), tmp_path / "src", 8, 5)
    assert pack_main([str(src), str(tmp_path / "dst"), "--no_progress"]) == 0
    common = ["--output_dir", str(tmp_path / "o"), "--image_size", "32", "--batch_size", "8",
              "--valid_split", "0.2", "--num_workers", "0", "--device", "cpu",
              "--augment", "box"]  # one pipeline for both (by default a .rec set gets flip)
    datas = []
    for root in (src, tmp_path / "dst", tmp_path / "dst" / "train.rec"):
        cfg = parse_args(["--dataroot", str(root)] + common)
        cfg.images_per_identity = 2
        datas.append(build_face_data(options_group(cfg, DataOptions)))
    folder = datas[0]
    for data in datas[1:]:
        assert data.num_classes == folder.num_classes == 8
        assert data.index.labels() == folder.index.labels()
        assert (data.train_indices, data.val_indices) == (folder.train_indices,
                                                          folder.val_indices)
        for (a, la, _), (b, lb, _) in zip(data.train_loader, folder.train_loader):
            assert la.tolist() == lb.tolist() and np.allclose(a.numpy(), b.numpy())


def test_round_trip_folder_pack_train(tmp_path):
    """Folder -> pack -> a one-epoch training run with --dataroot DST (~40 real faces, 32 px),
    resumed for a second; every packed image decodes to the source pixels with its label."""
    src = copy_subset(shared_path("celeba_subset", "aligned-160"), tmp_path / "src", 8, 5)
    dst = tmp_path / "dst"
    assert pack_main([str(src), str(dst), "--no_progress"]) == 0
    index = load_or_build_record_index(str(dst))
    reader = index.image_reader()
    folder = face_files(src)
    assert len(index.samples()) == len(folder) >= 36
    for (key, label), (path, want) in zip(index.samples(), folder):
        assert label == want and np.array_equal(reader(key), rgb(path))

    from handlers.training import main

    args = ["--dataroot", str(dst), "--output_dir", str(tmp_path / "runs"), "--model", "tiny",
            "--image_size", "32",
            "--batch_size", "8", "--valid_split", "0.2", "--num_workers", "0", "--clearml", "off",
            "--device", "cpu"]
    metrics = main(args + ["--epochs", "1"])
    assert "val_accuracy" in metrics
    run_dir = next((tmp_path / "runs").glob("resnet34_center-*"))
    first = load_checkpoint(str(run_dir))
    # every packed image was indexed and split between training and held out
    assert first["split"]["num_images"] == len(folder) and first["num_classes"] == 8
    assert first["epoch"] == 1
    # resume: the checkpoint's data digest matches the same .rec, the second epoch runs
    resumed = main(args + ["--epochs", "2", "--resume_path", str(run_dir)])
    assert "val_accuracy" in resumed
    assert load_checkpoint(str(run_dir))["epoch"] == 2
    shutil.rmtree(tmp_path / "runs")


def test_bench_recordio_runs_and_prints_its_tables(faces, capsys):
    import bench_recordio  # bench/ is on pytest's pythonpath

    results = bench_recordio.main(["--source", str(faces), "--images", "8", "--rounds", "1",
                                   "--cold"])
    out = capsys.readouterr().out
    assert "### Packing" in out and "ratio vs folder: cv2.imread per file (baseline)" in out
    assert len(results) == 4 and results[0].ratio == 1.0


def test_processes_share_out_the_rec_as_they_share_out_folders(tmp_path):
    """Two DDP ranks: step k of rank 0 and rank 1 together load the images of step k of a
    single process, read from the .rec with the right labels."""
    src = copy_subset(shared_path("celeba_subset", "aligned-160"), tmp_path / "src", 6, 4)
    assert pack_main([str(src), str(tmp_path / "dst"), "--no_progress"]) == 0
    cfg = parse_args(["--dataroot", str(tmp_path / "dst"), "--output_dir", str(tmp_path / "o"),
                      "--batch_size", "8", "--image_size", "32", "--valid_split", "0",
                      "--num_workers", "0", "--device", "cpu"])

    def steps(num_replicas: int, rank: int) -> list:
        loader = build_face_data(options_group(cfg, DataOptions), num_replicas=num_replicas, rank=rank).train_loader
        loader.sampler.set_epoch(1)
        return [sorted(labels.tolist()) for _, labels, _ in loader], list(loader.batch_sampler)

    single_labels, single = steps(1, 0)
    (labels0, shard0), (labels1, shard1) = steps(2, 0), steps(2, 1)
    assert len(single) == len(shard0) == len(shard1) > 1
    for k, keys in enumerate(single):
        assert sorted(shard0[k] + shard1[k]) == sorted(keys)
        assert sorted(labels0[k] + labels1[k]) == single_labels[k]
