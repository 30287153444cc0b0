"""The model zoo: parameter counts, shapes, skip connections, the registry's errors."""

import textwrap

import pytest
import torch

from losslandscape.errors import UserError
from losslandscape.inputs.models import ZOO, build_model, list_models
from losslandscape.inputs.models.resnet import BasicBlock

ZOO_ORDER = [
    *(f"resnet{d}" for d in (20, 32, 44, 56, 110)),
    *(f"resnet{d}_noshort" for d in (20, 32, 44, 56, 110)),
    *(f"wrn56_{k}" for k in (2, 4, 8)),
    *(f"wrn56_{k}_noshort" for k in (2, 4, 8)),
    "vgg9",
    "densenet121",
]
# forward passes of these cost seconds on one CPU core; they get one small input only
BIG = {"wrn56_4", "wrn56_4_noshort", "wrn56_8", "wrn56_8_noshort", "densenet121"}
SMALL = [n for n in ZOO_ORDER if n not in BIG]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cifar_resnet_count(depth: int, k: int = 1, classes: int = 10) -> int:
    """He et al.'s CIFAR ResNet, option-A shortcuts, counted by hand.

    Convs have no bias, each BN has 2 parameters per channel, the stem stays 16 wide.
    """
    n = (depth - 2) // 6
    count = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    c_in = 16
    for width in (16 * k, 32 * k, 64 * k):
        count += 9 * c_in * width + 9 * width * width  # first block
        count += (n - 1) * 2 * 9 * width * width  # other blocks
        count += 2 * n * 2 * width  # BN after each conv
        c_in = width
    return count + 64 * k * classes + classes


@pytest.fixture(scope="module")
def listed():
    return dict(list_models())


def test_zoo_order_and_list_models(listed):
    # then the original code's networks, "original_*" (tests/test_original_models.py)
    assert [n for n in ZOO if not n.startswith("original_")] == ZOO_ORDER
    assert list(listed) == list(ZOO)
    assert listed["resnet20"] == n_params(build_model("resnet20"))
    assert listed["vgg9"] == n_params(build_model("vgg9"))


def test_resnet_parameter_counts_are_he_et_al_option_a(listed):
    # option A is parameter-free; Li et al.'s code uses 1x1-conv projections
    # (option B), whose two conv+BN shortcuts add 2,752 (e.g. 855,770 for ResNet-56)
    assert listed["resnet20"] == 269_722  # He et al.: 0.27M
    assert listed["resnet56"] == 853_018  # 0.85M
    assert listed["resnet110"] == 1_727_962  # 1.7M
    for d in (20, 32, 44, 56, 110):
        assert listed[f"resnet{d}"] == cifar_resnet_count(d)
        assert listed[f"resnet{d}_noshort"] == listed[f"resnet{d}"]
    for k in (2, 4, 8):
        assert listed[f"wrn56_{k}"] == cifar_resnet_count(56, k)
        assert listed[f"wrn56_{k}_noshort"] == listed[f"wrn56_{k}"]


def test_vgg9_and_densenet121_parameter_counts(listed):
    # vgg9: Li et al.'s layers; densenet121: the usual CIFAR DenseNet-121 (6.96M)
    assert listed["vgg9"] == 2_789_706
    assert listed["densenet121"] == 6_956_298


@torch.no_grad()
@pytest.mark.parametrize("name", SMALL)
def test_forward_cifar_and_digits_shapes(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    model = build_model(name, num_classes=3, in_channels=1).eval()
    out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


@torch.no_grad()
def test_forward_big_models():
    torch.manual_seed(0)
    assert build_model("densenet121").eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    digits = build_model("densenet121", in_channels=1).eval()
    assert digits(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    for name in ("wrn56_4_noshort", "wrn56_8"):
        model = build_model(name, in_channels=1).eval()
        assert model(torch.randn(1, 1, 8, 8)).shape == (1, 10)


@torch.no_grad()
def test_odd_input_sizes():
    for name in ("resnet20", "vgg9", "densenet121"):
        assert build_model(name, in_channels=1).eval()(torch.randn(2, 1, 9, 11)).shape == (2, 10)


def blocks(model: torch.nn.Module) -> list[BasicBlock]:
    found = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert found
    return found


@torch.no_grad()
@pytest.mark.parametrize("base", ["resnet20", "wrn56_2"])
def test_noshort_blocks_have_no_skip(base):
    # with the last conv zeroed, a fresh eval-mode BN outputs exactly 0: what is
    # left of a block's output can only have come through a skip connection
    torch.manual_seed(0)
    for name, has_skip in ((base, True), (base + "_noshort", False)):
        for block in blocks(build_model(name).eval()):
            block.conv2.weight.zero_()
            x = torch.rand(2, block.conv1.in_channels, 8, 8) + 0.1  # > 0, survives the ReLU
            out = block(x)
            if has_skip:
                assert out.abs().sum() > 0
            else:
                assert torch.equal(out, torch.zeros_like(out))


@torch.no_grad()
def test_option_a_shortcut_subsamples_and_pads_symmetrically():
    block = build_model("resnet20").eval().layer2[0]  # 16 -> 32 channels, stride 2
    block.conv2.weight.zero_()
    x = torch.rand(2, 16, 8, 8)
    out = block(x)  # (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


@torch.no_grad()
def test_noshort_network_output_goes_through_every_last_conv():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    for name, constant in (("resnet20_noshort", True), ("resnet20", False)):
        model = build_model(name, in_channels=1).eval()
        model.layer3[-1].conv2.weight.zero_()
        out = model(x)
        assert torch.allclose(out, model.linear.bias.expand_as(out)) is constant


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "ll_user_models.py").write_text(textwrap.dedent("""
        import torch

        def tiny():
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

        def not_a_model():
            return 3

        value = 5
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ll_user_models"


def test_factory_string_builds_user_model(user_module):
    model = build_model(f"{user_module}:tiny")
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet21", "unknown model 'resnet21'; choose one of resnet20, resnet32,"),
        ("ResNet20", 'densenet121 or give "package.module:factory"'),
        ("", "unknown model ''"),
        (
            "no_such_pkg_ll.mod:f",
            "cannot import 'no_such_pkg_ll.mod' (No module named 'no_such_pkg_ll'; looked beside the job spec",
        ),
        ("{mod}:missing", "module 'll_user_models' has no attribute 'missing'"),
        ("{mod}:value", "'ll_user_models:value' is not callable"),
        ("{mod}:not_a_model", "returned int, expected a torch.nn.Module"),
        (":tiny", "is not of the form"),
        ("{mod}:", "is not of the form"),
        ("{mod}:tiny:x", "is not of the form"),
    ],
)
def test_bad_names_give_one_line_user_errors(user_module, name, expected):
    with pytest.raises(UserError) as info:
        build_model(name.format(mod=user_module))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model.name: ")
    assert expected in message
