"""scripts/visualize.py and rcca.visualization: figures of tiny untrained checkpoints on a tiny video, what the
maps compute (attention at a point, its reach after R passes, class activation maps), and one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CLASSES, load_script, run_entry
from conftest import save_tiny_checkpoint as save_checkpoint
from conftest import write_square_video as write_video
from PIL import Image
from torch import nn

from rcca.errors import UserError
from rcca.models.attention import RCCA3D
from rcca.visualization import load_model
from rcca.visualization.drawing import (
    cam_grid_image,
    confusion_matrix_image,
    feature_rows,
    grid_size,
    matplotlib_parts,
)
from rcca.visualization.maps import (
    attention_at_point,
    class_activation_maps,
    context_features,
    display_frames,
    effective_context,
    frame_slices,
)

# TSM ResNet-18 at width 8, 64-pixel crops, 8 frames: RCCA-3D at conv3_1 sees 16 x 8 x 8 x 8.
FRAMES = 8
CLASSES = TINY_CLASSES


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints with RCCA-3D at conv3_1 and without any module, and a video."""
    root = tmp_path_factory.mktemp("visualize")
    return {
        "rcca": save_checkpoint(root / "rcca" / "last.pt"),
        "none": save_checkpoint(root / "none" / "last.pt", "module=none"),
        "video": write_video(root / "clip.mp4"),
        "root": root,
    }


@pytest.fixture(scope="module")
def script():
    return load_script("visualize")


def png_size(path: Path) -> tuple[int, int]:
    """(height, width) of a PNG file, which must be a valid, non-blank RGB image."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # drawn, not blank
    return pixels.shape[:2]


def run_script(script, files: dict[str, Path], *arguments: str) -> None:
    script.main(
        [arguments[0], f"ckpt={files['rcca']}", f"video={files['video']}", "trainer.device=cpu", *arguments[1:]]
    )


def test_features_png_has_a_row_per_map(script, files, capsys):
    output = files["root"] / "figures" / "features.png"
    run_script(script, files, "features", f"output={output}", "channels=0,5")
    assert str(output) in capsys.readouterr().out
    # the frames, then conv3_1's mean and channels 0 and 5, each as input and output
    assert png_size(output) == grid_size(1 + 2 * 3, FRAMES)


def test_feature_rows_default_to_the_most_varying_channels(files):
    trained = load_model(str(files["rcca"]), ["trainer.device=cpu"])
    clip = torch.randn(3, FRAMES, 64, 64)
    maps = context_features(trained.model, clip)
    assert [entry.position for entry in maps] == ["conv3_1"]
    assert maps[0].input.shape == maps[0].output.shape == (16, FRAMES, 8, 8)
    rows = feature_rows(display_frames(clip), maps, {"conv3_1": [1, 2, 3]})
    assert len(rows) == 1 + 2 * 4 and all(len(row.panels) == FRAMES for row in rows)
    assert rows[1].title == "conv3_1 input, mean over channels" and rows[2].title.startswith("conv3_1 output")


def test_cam_script_compares_two_checkpoints_and_writes_a_gif(files):
    output = files["root"] / "figures" / "cam.png"
    result = run_entry(
        "scripts/visualize.py",
        "cam",
        f"ckpt={files['rcca']}",
        f"compare={files['none']}",
        f"video={files['video']}",
        "class=action 2",
        "gif=true",
        f"output={output}",
        "trainer.device=cpu",
        timeout=120,
    )
    assert str(output) in result.stdout
    assert png_size(output) == grid_size(2, FRAMES)
    with Image.open(output.with_suffix(".gif")) as gif:
        assert gif.n_frames == FRAMES


def test_default_output_is_beside_the_checkpoint_and_kept(script, files, capsys):
    run_script(script, files, "attention", "point=3,2,5")
    output = files["rcca"].parent / "visualize" / "clip-attention.png"
    assert png_size(output) == grid_size(2 * 3, FRAMES)  # R = 3: each pass's weights, then the reach after 1..3
    with pytest.raises(SystemExit) as stop:
        run_script(script, files, "attention", "point=3,2,5")
    assert stop.value.code == 2 and "overwrite=true" in capsys.readouterr().err
    run_script(script, files, "attention", "point=0,0,0", "overwrite=true")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["attention", "point=8,0,0"], "outside the conv3_1 feature map, T x H x W = 8 x 8 x 8"),
        (["attention", "point=1,2"], "point=1,2: expected t,h,w"),
        (["attention", "point=0,0,0", "module=conv2_1"], "RCCA-3D at conv3_1 only"),
        (["attention", "point=0,0,0", "ckpt=NONE"], "has no RCCA-3D module"),
        (["cam", "class=dancing"], "class=dancing: not a class of"),
        (["cam", "class=8"], "index 0..7"),
        (["features", "channels=16"], "has 16 channels"),
        (
            ["features", "colour=red"],
            "colour=red: not an argument of this script; its keys are ckpt=, video=, output=, overwrite=, ckpt_format=, channels=",  # noqa: E501
        ),
        (["features", "video=BROKEN"], "broken.mp4: cannot be decoded"),
    ],
)
def test_bad_input_is_one_line(script, files, capsys, arguments, message):
    subcommand, *rest = arguments
    broken = files["root"] / "broken.mp4"
    broken.write_text("not a video")
    given = {argument.split("=", 1)[0] for argument in rest}
    defaults = {"ckpt": files["rcca"], "video": files["video"]}
    replaced = [a.replace("NONE", str(files["none"])).replace("BROKEN", str(broken)) for a in rest]
    keys = [f"{key}={value}" for key, value in defaults.items() if key not in given]
    output = f"output={files['root'] / 'errors' / 'figure.png'}"
    with pytest.raises(SystemExit) as stop:
        script.main([subcommand, *keys, *replaced, output, "trainer.device=cpu"])
    error = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(error) == 1 and message in error[0], error


def line_mask(shape: tuple[int, int, int], point: tuple[int, int, int]) -> torch.Tensor:
    """The query's temporal, vertical and horizontal lines in a T x H x W volume."""
    t, h, w = point
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[:, h, w] = mask[t, :, w] = mask[t, h, :] = True
    return mask


def test_attention_at_a_point_lies_on_its_lines_and_three_passes_reach_the_clip():
    torch.manual_seed(0)
    module = RCCA3D(16, recurrence=3)
    shape, point = (4, 5, 6), (1, 3, 2)
    weights = module.attention_weights(torch.randn(1, 16, *shape))
    lines = line_mask(shape, point)
    for volume in attention_at_point(weights, point):
        assert torch.isclose(volume.sum(), torch.tensor(1.0), atol=1e-5)
        assert int((volume > 0).sum()) == sum(shape) - 2  # the T + H + W - 2 distinct line positions
        assert not volume[~lines].any()
    contexts = effective_context(weights, point)
    planes = torch.zeros(shape, dtype=torch.bool)
    planes[point[0]], planes[:, point[1]], planes[:, :, point[2]] = True, True, True
    for context, reached in zip(contexts, (lines, planes, torch.ones(shape, dtype=torch.bool))):
        assert torch.isclose(context.sum(), torch.tensor(1.0), atol=1e-5)
        assert torch.equal(context > 0, reached)


class ToyNetwork(nn.Module):
    """A one-class TSM-like network: per frame, its feature map is the red channel at a quarter of the size."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 1)
        nn.init.ones_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)
        features = nn.functional.avg_pool2d(frames[:, :1], 4).relu()
        return self.fc(self.pool(features).flatten(1)).view(n, t, -1).mean(dim=1)


def test_cam_lights_the_region_that_drives_the_class():
    clip = torch.zeros(3, 4, 32, 32)
    clip[0, :, 16:, :16] = 2.0  # red in the bottom-left quarter of every frame
    result = class_activation_maps(ToyNetwork(), clip)
    cam = result.maps[0]
    assert cam.shape == (4, 8, 8) and torch.equal(result.scores, torch.ones(1))
    assert (cam[:, 4:, :4] == 2.0).all() and not cam[:, :4].any() and not cam[:, :, 4:].any()


def test_cam_mean_plus_bias_is_the_logit(files):
    trained = load_model(str(files["rcca"]), ["trainer.device=cpu"])
    clip = torch.randn(3, FRAMES, 64, 64)
    result = class_activation_maps(trained.model, clip)
    with torch.no_grad():
        logits = trained.model(clip[None])[0]
    bias = trained.model.get_classifier().bias
    assert result.maps.shape == (len(CLASSES), FRAMES, 2, 2)
    assert torch.allclose(result.maps.mean(dim=(1, 2, 3)) + bias, logits, atol=1e-4)


def test_map_slices_cover_the_frames():
    assert frame_slices(4, 8) == [0, 0, 1, 1, 2, 2, 3, 3]  # MF-Net: half as many time steps as frames
    assert frame_slices(8, 8) == list(range(8))


def test_images_for_tensorboard_need_no_checkpoint():
    frames = np.random.default_rng(0).integers(0, 255, (4, 32, 40, 3), dtype=np.uint8)
    image = cam_grid_image(frames, [torch.rand(2, 4, 5), np.random.rand(4, 4, 5)], ["model a", "model b"])
    assert image.shape == (*grid_size(2, 4), 3) and image.dtype == np.uint8
    matrix = confusion_matrix_image(torch.tensor([[3, 1], [0, 4]]), ["walk", "run"])
    assert matrix.ndim == 3 and matrix.shape[2] == 3 and matrix.dtype == np.uint8 and matrix.std() > 10


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(UserError, match=r'pip install "rcca\[plot\]"'):
        matplotlib_parts()
