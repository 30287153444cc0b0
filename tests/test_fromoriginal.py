"""`losslandscape from-original`: command lines of the original code's plot_surface.py as job specs.

The command lines are those of the original README (tomgoldstein/loss-landscape), as written
there, continuation backslashes and all. The surface names it would have written are checked
against the figure names in that README, which its plotting scripts made from them. Two
translated lines are run on a CIFAR-10 folder written here, with checkpoints saved the way the
original code saves them ({'state_dict', 'acc', 'epoch'}, DataParallel "module." keys); their
values are compared with a spec written by hand and with plain forward passes.
"""

from __future__ import annotations

import pickle
import shlex
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_one_line_error, console, losslandscape

# the original README's three plot_surface.py lines, as written there
README_INTERPOLATION = r"""mpirun -n 4 python plot_surface.py --mpi --cuda --model vgg9 --x=-0.5:1.5:401 --dir_type states \
--model_file cifar10/trained_nets/vgg9_sgd_lr=0.1_bs=128_wd=0.0_save_epoch=1/model_300.t7 \
--model_file2 cifar10/trained_nets/vgg9_sgd_lr=0.1_bs=8192_wd=0.0_save_epoch=1/model_300.t7 --plot"""
README_CURVE = r"""mpirun -n 4 python plot_surface.py --mpi --cuda --model vgg9 --x=-1:1:51 \
--model_file cifar10/trained_nets/vgg9_sgd_lr=0.1_bs=128_wd=0.0_save_epoch=1/model_300.t7 \
--dir_type weights --xnorm filter --xignore biasbn --plot"""
README_CONTOUR = r"""mpirun -n 4 python plot_surface.py --mpi --cuda --model resnet56 --x=-1:1:51 --y=-1:1:51 \
--model_file cifar10/trained_nets/resnet56_sgd_lr=0.1_bs=128_wd=0.0005/model_300.t7 \
--dir_type weights --xnorm filter --xignore biasbn --ynorm filter --yignore biasbn  --plot"""

ORIGINAL_MEAN = [v / 255.0 for v in (125.3, 123.0, 113.9)]  # the original dataloader.py's constants
ORIGINAL_STD = [v / 255.0 for v in (63.0, 62.1, 66.7)]
N_PER_BATCH = 4


def words(line: str) -> list[str]:
    """A shell line's words: a backslash-newline continues the line, as in sh."""
    return shlex.split(line.replace("\\\n", " "))


def translate(args, cwd, dashes: bool = True) -> tuple[dict, str]:
    result = losslandscape("from-original", *(["--"] if dashes else []), *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return tomllib.loads(result.stdout), result.stdout


def value_lines(text: str) -> dict[str, str]:
    """{"table.key": its comment} for every value line of the printed TOML."""
    table, out = "", {}
    for line in text.splitlines():
        if line.startswith("["):
            table = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, rest = line.partition(" = ")
            assert "  # " in rest, f"no comment on {line!r}"
            out[f"{table}.{key}"] = rest.split("  # ", 1)[1]
    return out


def test_readme_interpolation_line(tmp_path):
    spec, text = translate(words(README_INTERPOLATION), tmp_path)
    a = "cifar10/trained_nets/vgg9_sgd_lr=0.1_bs=128_wd=0.0_save_epoch=1/model_300.t7"
    b = "cifar10/trained_nets/vgg9_sgd_lr=0.1_bs=8192_wd=0.0_save_epoch=1/model_300.t7"
    assert spec["model"] == {"name": "original_vgg9", "checkpoint": a, "checkpoint2": b}
    assert spec["directions"] == {"kind": "interpolate", "dir_type": "states"}
    assert spec["grid"] == {"x": "-0.5:1.5:401"}  # no y: a curve
    assert spec["data"] == {"name": "cifar10", "root": "cifar10/data/cifar-10-batches-py", "transform": "original",
                            "splits": ["train"]}
    # the README's figure of this line (made with x = -1:1:401) is named after the surface file
    figure = ("vgg9_sgd_lr=0.1_bs=128_wd=0.0_save_epoch=1_model_300.t7_vgg9_sgd_lr=0.1_bs=8192_wd=0.0_save_epoch=1_"
              "model_300.t7_states.h5_[-1.0,1.0,401].h5_1d_loss_acc.jpg")
    expected = "cifar10/trained_nets/" + figure.removesuffix("_1d_loss_acc.jpg").replace("[-1.0,1.0,", "[-0.5,1.5,")
    assert spec["output"]["surface"] == expected
    comments = value_lines(text)
    assert comments["grid.x"] == "--x=-0.5:1.5:401"
    assert comments["model.checkpoint2"] == f"--model_file2={b}"
    assert "# --mpi: mpirun -n 5 losslandscape surface job.toml" in text  # 4 workers and a coordinator
    assert f"render {shlex.quote(expected)} --kind curve" in text


def test_readme_curve_line(tmp_path):
    spec, text = translate(words(README_CURVE), tmp_path)
    assert spec["model"]["name"] == "original_vgg9"
    assert spec["directions"] == {"kind": "random", "norm": "filter", "ignore": "biasbn", "dir_type": "weights"}
    assert spec["grid"] == {"x": "-1:1:51"}
    figure = "vgg9_sgd_lr=0.1_bs=128_wd=0.0_save_epoch=1/model_300.t7_weights_xignore=biasbn_xnorm=filter.h5_" \
             "[-1.0,1.0,51].h5_1d_loss_acc.jpg"
    assert spec["output"]["surface"] == "cifar10/trained_nets/" + figure.removesuffix("_1d_loss_acc.jpg")
    comments = value_lines(text)
    assert comments["directions.norm"] == "--xnorm=filter"
    assert comments["directions.ignore"] == "--xignore=biasbn"


def test_readme_contour_line(tmp_path):
    spec, text = translate(words(README_CONTOUR), tmp_path)
    assert spec["model"] == {"name": "original_resnet56",
                             "checkpoint": "cifar10/trained_nets/resnet56_sgd_lr=0.1_bs=128_wd=0.0005/model_300.t7"}
    assert spec["directions"] == {"kind": "random", "norm": "filter", "ignore": "biasbn", "dir_type": "weights"}
    assert spec["grid"] == {"x": "-1:1:51", "y": "-1:1:51"}
    figure = ("resnet56_sgd_lr=0.1_bs=128_wd=0.0005/model_300.t7_weights_xignore=biasbn_xnorm=filter_yignore=biasbn_"
              "ynorm=filter.h5_[-1.0,1.0,51]x[-1.0,1.0,51].h5_train_loss_2dcontour.jpg")
    assert spec["output"]["surface"] == "cifar10/trained_nets/" + figure.removesuffix("_train_loss_2dcontour.jpg")
    # --plot with the original's vmin 0.1, vmax 10, a contour every 0.5: 20 levels
    assert "--kind contour,filled,heatmap,surface3d --vmin 0.1 --vmax 10 --levels 20" in text
    # its arguments alone, without the launcher, and without "--" before them, give the same spec
    alone, _ = translate(words(README_CONTOUR)[4:], tmp_path, dashes=False)
    assert alone == spec


def test_the_originals_defaults_are_written_out(tmp_path):
    """Without --xnorm, --xignore, --dir_type the original does not normalise, keeps 1-D entries as
    the weights, and moves weights: not our defaults, so the spec says so."""
    spec, text = translate(["--model_file", "m.t7", "--batch_size", "256", "--idx", "3"], tmp_path)
    assert spec["model"] == {"name": "original_resnet56", "checkpoint": "m.t7"}
    assert spec["directions"] == {"kind": "random", "norm": "none", "ignore": "none", "seed": 3,
                                  "dir_type": "weights"}
    assert spec["grid"] == {"x": "-1:1:51"}
    assert spec["evaluation"] == {"loss": "cross_entropy", "batch_size": 256}
    assert spec["output"]["surface"] == "m.t7_weights_idx=3.h5_[-1.0,1.0,51].h5"
    assert "run: losslandscape surface job.toml" in text


@pytest.mark.parametrize("args, expected", [
    (["--raw_data"], {"data.transform": "raw"}),
    (["--dataset", "imagenet", "--datapath", "/data/imagenet"],
     {"data.name": "imagefolder", "data.root": "/data/imagenet"}),
    (["--datapath", "/data/c10", "--data_split", "4", "--split_idx", "2"],
     {"data.root": "/data/c10/cifar-10-batches-py", "data.parts": 4, "data.part": 2}),
    (["-l", "mse"], {"evaluation.loss": "mse"}),
    (["--x", "-2:2:5", "--y=-1:3:9", "--same_dir"], {"grid.x": "-2:2:5", "grid.y": "-1:3:9",
                                                     "directions.same_dir": True}),
    (["--model_file", "a.t7", "--model_file2", "b.t7", "--model_file3", "c.t7", "--y=-0.5:1.5:5"],
     {"directions.kind": "interpolate", "model.checkpoint2": "b.t7", "model.checkpoint3": "c.t7",
      "directions.dir_type": "weights"}),
    (["--dir_file", "d.h5", "--dir_type", "states", "--xnorm", "filter"],
     {"directions.kind": "file", "directions.file": "d.h5", "directions.dir_type": "states"}),
    (["--surf_file", "out/s.h5", "--model", "resnet20_noshort"],
     {"output.surface": "out/s.h5", "model.name": "original_resnet20_noshort"}),
])
def test_arguments_map_to_fields(tmp_path, args, expected):
    spec, text = translate(args, tmp_path)
    comments = value_lines(text)
    for key, value in expected.items():
        table, name = key.split(".")
        assert spec[table][name] == value, key
        assert comments[key], key
    if "--dir_file" in args:
        assert "norm" not in spec["directions"]  # the file's directions: --xnorm does nothing, as there
        assert "# --xnorm=filter: no effect on these directions" in text


@pytest.mark.parametrize("args, named", [
    (["--model_file", "a.t7", "--no_such_flag", "1"], "--no_such_flag"),
    (["--x=-1:1:5", "--y=-1:1:5", "--xnorm", "filter", "--ynorm", "layer"], "--ynorm=layer"),
    (["--x=-1:1:5", "--y=-1:1:5", "--xnorm", "filter", "--xignore", "biasbn"], "no --ynorm"),
    (["--model_file", "a.t7", "--model_file2", "b.t7", "--y=-1:1:5"], "--model_file3"),
    (["--model", "resnet57"], "--model=resnet57"),
    (["--trainloader", "tr.pt", "--testloader", "te.pt"], "--trainloader"),
    (["--x=1:-1:5"], "--x=1:-1:5"),
    (["python", "plot_2D.py", "--surf_file", "s.h5"], "losslandscape render"),
])
def test_refused_with_one_line_and_nothing_printed(tmp_path, args, named):
    result = losslandscape("from-original", "--", *args, cwd=tmp_path)
    assert_one_line_error(result, named)
    assert result.stdout == ""


# --- the translated lines run ------------------------------------------------------------------

def write_cifar(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """A cifar-10-batches-py folder of N_PER_BATCH images per batch file; the train pixels
    (N, 3072) and labels."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(7)
    pixels, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        p = rng.integers(0, 256, size=(N_PER_BATCH, 3072), dtype=np.uint8)
        lab = [int(v) for v in rng.integers(0, 10, size=N_PER_BATCH)]
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": p, b"labels": lab}, fh)
        if name != "test_batch":
            pixels.append(p)
            labels += lab
    return np.concatenate(pixels), np.array(labels)


def save_original_checkpoint(path: Path, seed: int) -> dict[str, torch.Tensor]:
    """original_resnet20's weights (BatchNorm statistics too) drawn from `seed`, saved as the
    original code saves them; returns the plain state dict."""
    from losslandscape.inputs.models import build_model

    torch.manual_seed(seed)
    model = build_model("original_resnet20")
    state = {k: (v + 0.05 * torch.randn_like(v)).abs() if k.endswith("running_var") else
             v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "acc": 91.5, "epoch": 300}, path)
    return state


def plain_pass(state: dict[str, torch.Tensor], pixels: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of original_resnet20 with `state` on the images,
    normalised with the original code's constants."""
    from losslandscape.inputs.models import build_model

    model = build_model("original_resnet20")
    model.load_state_dict(state)
    x = torch.from_numpy(pixels.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    x = (x - torch.tensor(ORIGINAL_MEAN).view(1, 3, 1, 1)) / torch.tensor(ORIGINAL_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model.eval()(x)
    y = torch.from_numpy(labels)
    return F.cross_entropy(out, y).item(), 100.0 * (out.argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def original_folder(tmp_path_factory):
    """A folder laid out like a checkout of the original code: its CIFAR-10 data and two trained nets."""
    root = tmp_path_factory.mktemp("original")
    pixels, labels = write_cifar(root / "cifar10" / "data" / "cifar-10-batches-py")
    a = save_original_checkpoint(root / "cifar10/trained_nets/bs128/model_300.t7", 1)
    b = save_original_checkpoint(root / "cifar10/trained_nets/bs4096/model_300.t7", 2)
    return root, pixels, labels, a, b


def run_surface(job_text: str, name: str, cwd: Path) -> dict[str, np.ndarray]:
    (cwd / name).write_text(job_text)
    result = losslandscape("surface", name, "--evaluation.device=cpu", "--evaluation.threads=1", cwd=cwd)
    assert result.returncode == 0, result.stderr
    surface = tomllib.loads(job_text)["output"]["surface"]
    with h5py.File(cwd / surface, "r") as f:
        return {k: f[k][()] for k in ("xcoordinates", "train_loss", "train_acc") if k in f} | (
            {"ycoordinates": f["ycoordinates"][()]} if "ycoordinates" in f else {})


@pytest.mark.slow
def test_translated_contour_line_runs_as_a_hand_written_spec(original_folder):
    root, pixels, labels, a, _ = original_folder
    line = ("python plot_surface.py --model resnet20 --x=-1:1:3 --y=-1:1:3 --model_file "
            "cifar10/trained_nets/bs128/model_300.t7 --dir_type weights --xnorm filter --xignore biasbn "
            "--ynorm filter --yignore biasbn --idx 4 --surf_file out/translated.h5")
    _, text = translate(words(line), root)
    translated = run_surface(text, "translated.toml", root)
    by_hand = run_surface("""
[model]
name = "original_resnet20"
checkpoint = "cifar10/trained_nets/bs128/model_300.t7"
[data]
name = "cifar10"
root = "cifar10/data/cifar-10-batches-py"
transform = "original"
[directions]
norm = "filter"
ignore = "biasbn"
seed = 4
[grid]
x = "-1:1:3"
y = "-1:1:3"
[output]
surface = "out/by_hand.h5"
""", "by_hand.toml", root)
    assert translated.keys() == by_hand.keys() == {"xcoordinates", "ycoordinates", "train_loss", "train_acc"}
    for key in translated:
        np.testing.assert_array_equal(translated[key], by_hand[key], err_msg=key)
    # the centre is the trained net on the original's normalisation, loaded from its checkpoint format
    loss, acc = plain_pass(a, pixels, labels)
    np.testing.assert_allclose(translated["train_loss"][1, 1], loss, rtol=1e-4)
    assert translated["train_acc"][1, 1] == pytest.approx(acc)
    assert np.ptp(translated["train_loss"]) > 1e-3  # the directions move the net


@pytest.mark.slow
def test_translated_interpolation_line_ends_at_both_nets(original_folder):
    """The README's interpolation line with a small grid, as a console command: x = 0 is the first
    net, x = 1 the second (states: BatchNorm statistics move along)."""
    root, pixels, labels, a, b = original_folder
    line = README_INTERPOLATION.replace("vgg9", "resnet20", 1).replace("-0.5:1.5:401", "0:1:2")
    line = line.replace("vgg9_sgd_lr=0.1_bs=128_wd=0.0_save_epoch=1", "bs128")
    line = line.replace("vgg9_sgd_lr=0.1_bs=8192_wd=0.0_save_epoch=1", "bs4096")
    result = console("from-original", "--", *words(line), cwd=root)
    assert result.returncode == 0, result.stderr
    values = run_surface(result.stdout, "interpolation.toml", root)
    np.testing.assert_array_equal(values["xcoordinates"], [0.0, 1.0])
    for i, state in enumerate((a, b)):
        loss, acc = plain_pass(state, pixels, labels)
        np.testing.assert_allclose(values["train_loss"][i], loss, rtol=1e-4)
        assert values["train_acc"][i] == pytest.approx(acc)


def test_readme_section_example_prints_what_it_shows(tmp_path):
    """docs/from-original.md: its command prints the lines it shows."""
    from helpers import REPO

    text = (REPO / "docs" / "from-original.md").read_text()
    section = text.split("# Coming from the original code\n", 1)[1].split("\n## ", 1)[0]
    command = section.split("```sh\n", 1)[1].split("```", 1)[0]
    shown = section.split("```toml\n", 1)[1].split("```", 1)[0]
    first = words(command.split("\nmpirun", 1)[0])
    assert first[:3] == ["losslandscape", "from-original", "--"] and first[-2:] == [">", "job.toml"]
    spec, printed = translate(first[3:-2], tmp_path)
    for line in shown.splitlines():
        assert line in printed.splitlines(), line
    assert "mpirun -n 5 losslandscape surface job.toml" in printed
    assert spec["directions"]["norm"] == "filter" and spec["grid"]["y"] == "-1:1:51"
