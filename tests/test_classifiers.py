"""bench.classifiers: architectures, published accuracies, checkpoint safety, robustbench zoo, specs."""

from __future__ import annotations

import argparse
import shutil

import pytest
import torch

from bench.classifiers import load_classifier, parse_spec
from bench.classifiers.autoattack_resnet18 import ResNet18
from bench.classifiers.checkpoint import checkpoint_model
from bench.classifiers.resnet_cifar import CheckpointError, ResNetCIFAR, resnet20
from bench.classifiers.robustbench_zoo import ZooModelError, expected_files
from bench.datasets import CIFAR10
from bench.registry import CLASSIFIERS, PluginError


@pytest.fixture(scope="module")
def cifar(data_dir):
    return CIFAR10(root=data_dir)


@pytest.fixture
def weights(data_dir):
    return data_dir / "weights"


def correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 250) -> int:
    with torch.inference_mode():
        return sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))


# -- architectures ----------------------------------------------------------------------------
def cifar_resnet_params(n: int) -> int:
    """Parameter count of He et al.'s 6n+2 CIFAR ResNet with option-A (parameter-free) shortcuts."""
    conv_bn = lambda cin, cout: cin * cout * 9 + 2 * cout  # 3x3 conv without bias + BN affine
    total = conv_bn(3, 16)
    for cin, width in ((16, 16), (16, 32), (32, 64)):
        total += conv_bn(cin, width) + conv_bn(width, width)  # first block of the stage
        total += (n - 1) * 2 * conv_bn(width, width)
    return total + 64 * 10 + 10


@pytest.mark.parametrize("name, n, published", [("resnet20", 3, 0.27), ("resnet32", 5, 0.46), ("resnet44", 7, 0.66), ("resnet56", 9, 0.85)])
def test_cifar_resnet_parameter_counts(name, n, published):
    model = CLASSIFIERS.get(name)(pretrained=False)
    count = sum(p.numel() for p in model.parameters())
    assert count == cifar_resnet_params(n)
    assert round(count / 1e6, 2) == published  # the figures in akamaster's README
    # The checkpoints' keys: no normalisation buffers (and BN's num_batches_tracked, which they lack).
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(keys) == 5 + (3 * n) * 10 + 2


def test_resnet18_parameter_count_and_shapes():
    model = ResNet18().eval()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # kuangliu ResNet-18 for CIFAR
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut_pads_channels_with_zeros():
    block = ResNetCIFAR(3).layer2[0]
    x = torch.rand(1, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


# -- published weights ------------------------------------------------------------------------
@pytest.mark.slow  # ~15 s of CPU on one thread (benchmarks/classifier_accuracy.py measures it)
def test_resnet20_reaches_published_accuracy(cifar, weights):
    # The published figure for resnet20-12fca82f.th: 91.73% on the 10,000 test images. Exact count:
    # a wrong shortcut, normalisation or padding order costs whole percentage points.
    x, y = cifar.images()
    assert correct(resnet20(model_dir=weights), x, y, batch=500) == 9173


def test_resnet18_accuracy_on_first_200(cifar):
    x, y = cifar.images(range(200))
    model = load_classifier("autoattack-resnet18")
    assert correct(model, x, y) == 188  # 94.0% (93.7% on the first 1000 per the data README)


def test_resnet18_matches_the_wheels_own_architecture():
    # Agreement with the reference: pyautoattack/examples/resnet.py with the same weights.
    import importlib.util

    from bench.classifiers.autoattack_resnet18 import bundled_checkpoint

    spec = importlib.util.spec_from_file_location("aa_example_resnet", bundled_checkpoint().parent / "resnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = module.ResNet18()
    reference.load_state_dict(torch.load(bundled_checkpoint(), map_location="cpu", weights_only=True))
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(load_classifier("autoattack-resnet18")(x), reference.eval()(x))


def test_pretrained_false_is_random(weights):
    trained, random = resnet20(model_dir=weights), resnet20(pretrained=False)
    assert not torch.equal(trained.conv1.weight, random.conv1.weight)


def test_sha256_mismatch_is_refused(tmp_path, weights):
    src = next(weights.glob("resnet20-*.th"))
    shutil.copy(src, tmp_path / "resnet20-deadbeef.th")
    with pytest.raises(CheckpointError, match="does not match the deadbeef"):
        resnet20(model_dir=tmp_path)


def test_missing_and_mismatched_checkpoints(tmp_path, weights):
    # Missing files are FileNotFoundError (the CLI maps them to exit code 2) as well as CheckpointError.
    with pytest.raises(FileNotFoundError, match=r"no resnet20 checkpoint .* in " + str(tmp_path)):
        resnet20(model_dir=tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        resnet20(checkpoint=tmp_path / "nothing.th")
    with pytest.raises(CheckpointError, match="does not fit ResNetCIFAR"):
        checkpoint_model(next(weights.glob("resnet20-*.th")), "resnet32")  # strict: missing blocks


# -- generic checkpoints ----------------------------------------------------------------------
@pytest.mark.parametrize("wrap", ["plain", "state_dict+module", "model+module", "model"])
def test_checkpoint_model_accepts_common_layouts(tmp_path, wrap):
    reference = resnet20(pretrained=False)
    sd = reference.state_dict()
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    obj = {"plain": sd, "state_dict+module": {"state_dict": prefixed, "epoch": 3}, "model+module": {"model": prefixed}, "model": {"model": sd}}[wrap]
    torch.save(obj, tmp_path / "c.pt")
    model = load_classifier({"name": "checkpoint", "path": str(tmp_path / "c.pt"), "arch": "resnet20"})
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(model(x), reference.eval()(x))


def test_checkpoint_model_refuses_pickled_objects_unless_trusted(tmp_path):
    sd = resnet20(pretrained=False).state_dict()
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="weights_only: false"):
        checkpoint_model(tmp_path / "c.pt", "resnet20")
    model = checkpoint_model(tmp_path / "c.pt", "resnet20", weights_only=False)
    assert torch.equal(model.conv1.weight, sd["conv1.weight"])


def test_checkpoint_unknown_architecture():
    with pytest.raises(ValueError, match="Did you mean .*'resnet20'"):
        checkpoint_model("x.pt", "resnet2O")


# -- robustbench zoo --------------------------------------------------------------------------
def test_robustbench_standard_offline_matches_the_network(tmp_path):
    from bench.classifiers.checkpoint import build_architecture

    torch.manual_seed(0)
    net = build_architecture("wrn-28-10").eval()
    for m in net.modules():  # non-trivial BN statistics, so the buffers must load too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    # robustbench 1.1.1 reads <model_dir>/<dataset>/<threat>/<name>.pt, {'state_dict': ...} with
    # DataParallel's 'module.' prefix (robustbench.utils.load_model).
    (path,) = expected_files("Standard", tmp_path, "cifar10", "Linf")
    assert path == tmp_path / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    model = load_classifier("robustbench:Standard", model_dir=tmp_path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(model(x), net(x), rtol=0, atol=1e-6)


def test_robustbench_missing_file_without_download(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_classifier("robustbench:Standard", model_dir=tmp_path)
    assert isinstance(err.value, ZooModelError)
    message = str(err.value)
    assert str(tmp_path / "cifar10" / "Linf" / "Standard.pt") in message and "allow_download: true" in message
    with pytest.raises(ZooModelError, match="Did you mean 'Standard'"):
        load_classifier("robustbench:Standart", model_dir=tmp_path)


# -- specs ------------------------------------------------------------------------------------
def test_registered_names():
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "autoattack-resnet18", "robustbench", "checkpoint"} <= set(CLASSIFIERS.names())


def test_parse_spec_forms():
    assert parse_spec("resnet20") == ("resnet20", {})
    assert parse_spec("robustbench:Standard") == ("robustbench", {"name": "Standard"})
    assert parse_spec({"name": "robustbench:Standard", "threat_model": "L2"}) == ("robustbench", {"name": "Standard", "threat_model": "L2"})
    assert parse_spec({"name": "checkpoint", "path": "a.pt", "arch": "resnet20"}) == ("checkpoint", {"path": "a.pt", "arch": "resnet20"})
    assert parse_spec("resnet32:my.th") == ("resnet32", {"checkpoint": "my.th"})


def test_parse_spec_errors():
    with pytest.raises(PluginError, match="Did you mean .*'resnet20'"):
        parse_spec("resnet21")
    with pytest.raises(PluginError, match="no parameter 'depth'.*allowed: checkpoint, model_dir"):
        parse_spec({"name": "resnet20", "depth": 3})
    with pytest.raises(PluginError, match="no 'name' field"):
        parse_spec({"arch": "resnet20"})
    with pytest.raises(PluginError, match="given twice"):
        parse_spec({"name": "resnet20:a.th", "checkpoint": "b.th"})


def test_load_classifier_default_dir_is_frozen_eval(monkeypatch, data_dir, cifar):
    monkeypatch.setenv("BENCH_DATA_DIR", str(data_dir))
    model = load_classifier("resnet20")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x, y = cifar.images(range(8))
    same = load_classifier(f"resnet20:{next((data_dir / 'weights').glob('resnet20-*.th'))}")
    with torch.inference_mode():
        assert torch.equal(model(x), same(x))
