import pytest
import torch
import torchvision

from smec_fast.errors import CheckpointError
from smec_fast.model import FerResNet18, load_pretrained


def test_forward_returns_logits_and_layer4_features():
    logits, feat = FerResNet18(7)(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 7) and feat.shape == (2, 512, 7, 7)
    _, half = FerResNet18(7)(torch.randn(2, 3, 224, 112))
    assert half.shape == (2, 512, 7, 4)


def test_loads_torchvision_state_dict_and_reports_fc_shape(tmp_path):
    source = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    model = FerResNet18(7)
    report = load_pretrained(model, path)
    assert report.shape_mismatch == ["fc.weight", "fc.bias"]
    assert set(report.missing) == {"fc.weight", "fc.bias"} and not report.unexpected
    torch.testing.assert_close(model.layer3[1].conv2.weight, source.layer3[1].conv2.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.bn1.running_var, source.bn1.running_var, rtol=0, atol=0)


def test_loads_msceleb_style_checkpoint_with_module_prefix(tmp_path):
    source = FerResNet18(7)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.extra.weight"] = torch.zeros(3)
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save({"epoch": 12, "state_dict": state}, path)
    model = FerResNet18(7)
    report = load_pretrained(model, path)
    assert report.unexpected == ["module.extra.weight"] and not report.missing
    torch.testing.assert_close(model.fc.weight, source.fc.weight, rtol=0, atol=0)


def test_loads_scn_features_layout(tmp_path):
    source = torchvision.models.resnet18()
    features = torch.nn.Sequential(*list(source.children())[:-2])
    path = tmp_path / "scn.pth"
    torch.save({"features." + k: v for k, v in features.state_dict().items()}, path)
    model = FerResNet18(7)
    report = load_pretrained(model, path)
    assert len(report.loaded) == len(features.state_dict())
    torch.testing.assert_close(model.layer4[0].conv1.weight, source.layer4[0].conv1.weight, rtol=0, atol=0)


def test_refuses_files_that_match_nothing(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match="none of its 1 tensors matches"):
        load_pretrained(FerResNet18(7), path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="garbage.pth: not a readable PyTorch weight file"):
        load_pretrained(FerResNet18(7), garbage)
    empty = tmp_path / "empty.pth"
    torch.save({"note": "no tensors"}, empty)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_pretrained(FerResNet18(7), empty)
    with pytest.raises(CheckpointError, match="file not found"):
        load_pretrained(FerResNet18(7), tmp_path / "missing.pth")
