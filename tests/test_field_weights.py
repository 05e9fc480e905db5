"""The field's networks and weight files: an arcface_torch backbone file (r18, r50, mbf) and a
facenet-pytorch Inception-ResNet-v1 file load into faceignite and give the reference network's
embeddings (< 1e-4 relative) from the same image file, each side through its own preprocessing;
``export --format insightface`` writes back a file arcface_torch loads strictly; bad files get one
line naming the architecture they hold.

The references are insightface's own ``iresnet.py`` / ``mobilefacenet.py`` (verbatim copies in
``tests/reference/``) and facenet-pytorch's installed class."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from faceignite.embed import embed_images
from faceignite.errors import FaceIgniteError
from faceignite.export import main as export_main
from faceignite.models import build_model

REFERENCE = Path(__file__).parent / "reference"
FACE = ("lfw", "lfw-mtcnn-160", "Aaron_Eckhart", "Aaron_Eckhart_0001.jpg")


def _reference(name: str):
    spec = importlib.util.spec_from_file_location(f"insightface_{name}",
                                                  REFERENCE / f"insightface_{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def insightface_get_model(name: str) -> torch.nn.Module:
    """arcface_torch ``backbones.get_model(name)`` for the names tested here (its own code)."""
    if name == "mbf":
        return _reference("mobilefacenet").get_mbf(fp16=False, num_features=512)
    units = {"r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100",
             "r200": "iresnet200"}[name]
    return getattr(_reference("iresnet"), units)(False)


def trained_looking(net: torch.nn.Module, size: int, seed: int = 0) -> torch.nn.Module:
    """Random weights with non-trivial BN running statistics (a forward pass of 3 random images
    in train mode) and perturbed BN/PReLU parameters; eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.momentum = None
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.1 * torch.randn_like(m.bias))
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(0.25 + 0.1 * torch.randn_like(m.weight))
        net.train()
        net(torch.randn(3, 3, size, size) * 0.8 + 0.1)
    return net.eval()


def face_file(tmp_path: Path, size: int) -> Path:
    """A real aligned LFW face written losslessly at ``size`` px: the one input of both sides."""
    image = cv2.imread(str(shared_path(*FACE)))
    path = tmp_path / f"face{size}.png"
    cv2.imwrite(str(path), cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
    return path


def insightface_preprocess(path: Path) -> torch.Tensor:
    """arcface_torch ``inference.py``: cv2 BGR → resize 112 → RGB → CHW → /255 − 0.5 → /0.5."""
    img = cv2.imread(str(path))
    img = cv2.resize(img, (112, 112))
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img = np.transpose(img, (2, 0, 1))
    img = torch.from_numpy(img).unsqueeze(0).float()
    img.div_(255).sub_(0.5).div_(0.5)
    return img


def facenet_preprocess(path: Path) -> torch.Tensor:
    """facenet-pytorch: PIL RGB → float tensor CHW → ``fixed_image_standardization``."""
    from facenet_pytorch.models.mtcnn import fixed_image_standardization

    img = np.float32(Image.open(path).convert("RGB"))
    return fixed_image_standardization(torch.from_numpy(img).permute(2, 0, 1)).unsqueeze(0)


def relative_error(ours: np.ndarray, theirs: torch.Tensor) -> float:
    theirs = torch.nn.functional.normalize(theirs.float(), dim=1).numpy()
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def ours_from_file(model, path: Path, size: int) -> np.ndarray:
    embeddings, rows = embed_images(model, [str(path)], size)
    assert rows == [0]
    return embeddings


@pytest.mark.parametrize("name", ["r18", "r50", "mbf"])
def test_an_arcface_torch_file_loads_exactly(tmp_path, name):
    reference = trained_looking(insightface_get_model(name), 112)
    weights = tmp_path / "model.pt"
    torch.save(reference.state_dict(), weights)  # arcface_torch: backbone.module.state_dict()
    model = build_model(name, 512, pretrained=str(weights)).eval()
    for key, value in model.state_dict().items():  # every tensor came from the file
        assert key.split(".", 1)[0] in ("backbone", "embedding")
    loaded = sum(v.numel() for v in model.state_dict().values())
    assert loaded == sum(v.numel() for v in reference.state_dict().values())
    image = face_file(tmp_path, 112)
    with torch.no_grad():
        theirs = reference(insightface_preprocess(image))
    assert relative_error(ours_from_file(model, image, 112), theirs) < 1e-4
    if name == "r50":
        return  # the way back is the same code for every iResNet: r18 tests it
    # and back: export --format insightface loads strictly into insightface's own network
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model_state_dict": model.state_dict(), "model_architecture": name,
                "embedding_dimension": 512, "config": {"normalize": "insightface"}}, ckpt)
    out = tmp_path / "back.pt"
    assert export_main(["--checkpoint", str(ckpt), "--format", "insightface",
                        "--out", str(out)]) == str(out)
    again = insightface_get_model(name)
    again.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        assert relative_error(ours_from_file(model, image, 112),
                              again.eval()(insightface_preprocess(image))) < 1e-4


def test_a_facenet_pytorch_file_loads_exactly(tmp_path):
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    # a VGGFace2-style file: 8,631-class logits included, as facenet-pytorch's files are
    reference = trained_looking(InceptionResnetV1(pretrained=None, classify=True,
                                                  num_classes=8631), 160)
    weights = tmp_path / "20180402-114759-vggface2.pt"
    torch.save(reference.state_dict(), weights)
    model = build_model("inception_resnet_v1", 512, pretrained=str(weights)).eval()
    assert model.normalization.name == "facenet"
    image = face_file(tmp_path, 160)
    reference.classify = False  # facenet-pytorch's embedding mode
    with torch.no_grad():
        theirs = reference(facenet_preprocess(image))
    assert relative_error(ours_from_file(model, image, 160), theirs) < 1e-4
    # its logits: the classifier of a run on the same 8,631 classes, else unused
    from faceignite.losses import SoftmaxCenterLoss
    from faceignite.models.weight_files import load_field_classifier

    same, other = SoftmaxCenterLoss(8631, 512), SoftmaxCenterLoss(100, 512)
    assert load_field_classifier(same, str(weights)) and not load_field_classifier(other,
                                                                                   str(weights))
    assert torch.equal(same.classifier.weight, reference.logits.weight)


@pytest.mark.parametrize("name", ["r100", "r200"])
def test_deep_iresnets_take_arcface_torch_keys(name):
    # built on the meta device (shapes, no memory, no initialising), not compared (slow on a
    # CPU): the file's keys and shapes are ours under the mapping
    from faceignite.models.weight_files import to_faceignite

    with torch.device("meta"):
        theirs = {k: tuple(v.shape) for k, v in insightface_get_model(name).state_dict().items()}
        ours = {k: tuple(v.shape) for k, v in build_model(name, 512).state_dict().items()}
        assert build_model(f"iresnet{name[1:]}", 512).architecture == f"iresnet{name[1:]}"
    assert {k: v for k, v in to_faceignite("iresnet", theirs).items()} == ours


def test_a_file_of_another_architecture_names_it(tmp_path):
    weights = tmp_path / "model.pt"
    torch.save(insightface_get_model("r50").state_dict(), weights)
    with pytest.raises(FaceIgniteError) as err:
        build_model("r18", 512, pretrained=str(weights))
    assert "insightface r50 (layer3: 14 units): use --model r50" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(FaceIgniteError, match="use --model r50"):
        build_model("mbf", 512, pretrained=str(weights))
    with pytest.raises(FaceIgniteError, match="use --embedding_dim 512"):
        build_model("r50", 128, pretrained=str(weights))
    # unknown to identify: the first tensor that does not fit is named
    state = insightface_get_model("mbf").state_dict()
    state["conv_sep.layers.0.weight"] = torch.zeros(3, 3)
    torch.save(state, weights)
    with pytest.raises(FaceIgniteError, match="does not fit mbf: tensor backbone.conv_sep"):
        build_model("mbf", 512, pretrained=str(weights))


class Payload:
    """Stands for code a weights file must not run."""


def test_a_weights_file_holding_code_is_refused(tmp_path):
    weights = tmp_path / "model.pt"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload()}, weights)
    with pytest.raises(FaceIgniteError, match="refusing to load"):
        build_model("r18", 512, pretrained=str(weights))
