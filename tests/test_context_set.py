"""The context set and its benchmark presets: the generator's invariants, and the property that makes the
benchmark mean something: a plain TSM ResNet-18's test-time logits are a sum of one term per square, so it
cannot tell `same` from `different`, while a context module makes the squares interact.

The interaction of the two squares in a model's logits is measured on four videos that share their middle
frames: the first frames of video a or a', the last frames of video b or b'. For a model whose features each
see one square, logit(a, b) - logit(a, b') - logit(a', b) + logit(a', b') is zero for any weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rcca.config import BackboneConfig, ModuleConfig, compose_config, validate_config
from rcca.data import context
from rcca.data.build import read_annotations
from rcca.data.context import CLASSES, COLOURS, SHOWN, min_frames, render_video, tsm_reach
from rcca.data.decoding import read_frames_pyav
from rcca.data.synthetic import SyntheticSpec
from rcca.errors import UserError
from rcca.models.build import build_model

SPEC = SyntheticSpec(dataset="context", frames=20, size=64)
SIDE = round(context.SQUARE_FRACTION * SPEC.size)
MARGIN = round(context.MARGIN_FRACTION * SPEC.size)
PRESETS = ["context_bench", "context_structures", "context_gamma", "context_recurrence", "context_inner"]


def squares(video: np.ndarray) -> list[tuple[int, int, int, tuple[int, ...]]]:
    """(frame, row, column, colour) of the top-left pixel of every square in a video: pixels brighter than any
    background level whose upper and left neighbours are not part of a square."""
    bright = video.max(axis=-1) >= context.BACKGROUND_LEVELS
    found = []
    for frame, row, col in zip(*np.nonzero(bright)):
        if (row == 0 or not bright[frame, row - 1, col]) and (col == 0 or not bright[frame, row, col - 1]):
            found.append((int(frame), int(row), int(col), tuple(int(v) for v in video[frame, row, col])))
    return found


@pytest.mark.parametrize("label", [0, 1])
def test_videos_show_one_square_in_the_first_and_one_in_the_last_frames(label: int) -> None:
    rng = np.random.default_rng(label)
    for _ in range(50):
        video = render_video(label, SPEC, rng)
        assert video.shape == (SPEC.frames, SPEC.size, SPEC.size, 3) and video.dtype == np.uint8
        found = squares(video)
        frames = sorted(frame for frame, *_ in found)
        assert frames == [*range(SHOWN), *range(SPEC.frames - SHOWN, SPEC.frames)]  # one square per frame shown
        first, second = found[0], found[-1]
        assert all(square[1:] == first[1:] for square in found[:SHOWN])  # still: same place and colour
        assert all(square[1:] == second[1:] for square in found[SHOWN:])
        assert (first[3] == second[3]) == (label == 1) == (CLASSES[label] == "same")
        assert abs(first[1] - second[1]) >= SIDE and abs(first[2] - second[2]) >= SIDE  # no shared row or column
        for _, row, col, colour in (first, second):
            assert MARGIN <= row <= SPEC.size - MARGIN - SIDE and MARGIN <= col <= SPEC.size - MARGIN - SIDE
            assert colour in {tuple(c) for c in COLOURS.tolist()}
            assert (video[SHOWN, row : row + SIDE, col : col + SIDE].max(axis=-1) < context.BACKGROUND_LEVELS).all()


def test_colour_pairs_are_balanced_and_depend_on_the_label_only() -> None:
    rng = np.random.default_rng(0)
    pairs = {label: [context.square_colours(label, rng) for _ in range(6000)] for label in (0, 1)}
    assert all(a == b for a, b in pairs[1]) and all(a != b for a, b in pairs[0])
    for label, count in ((1, len(COLOURS)), (0, len(COLOURS) * (len(COLOURS) - 1))):
        seen = np.unique(np.array(pairs[label]), axis=0, return_counts=True)[1]
        assert len(seen) == count and seen.min() > 0.7 * 6000 / count  # every pair of its kind, about equally often
        firsts = np.bincount([a for a, _ in pairs[label]], minlength=len(COLOURS))
        assert firsts.min() > 0.85 * 6000 / len(COLOURS)  # a square alone says nothing of the label


def test_the_squares_are_further_apart_in_time_than_a_tsm_r18_feature_reaches() -> None:
    """The reach is measured on the model: changing frame 0 changes the pre-pooling features of frames 0..8 and
    no others. With positive weights and inputs no ReLU cuts a path, so every frame that can depend on frame 0
    does (float64, so that the long paths' small changes stay above rounding)."""
    model = build_model(BackboneConfig(depth=18, width=8, num_frames=min_frames(18)), ModuleConfig(), 2).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.abs_()
    features = {}
    model.layer4.register_forward_hook(lambda module, args, output: features.__setitem__("out", output))
    clip = torch.rand(1, 3, min_frames(18), 32, 32, dtype=torch.float64)
    changed = clip.clone()
    changed[:, :, 0] += 1.0
    with torch.no_grad():
        model(clip)
        before = features["out"]
        model(changed)
        moved = (features["out"] - before).abs().flatten(1).amax(dim=1)  # per frame
    assert moved[: tsm_reach(18) + 1].min() > 1e-4 and moved[tsm_reach(18) + 1 :].max() == 0
    assert (min_frames(18) - SHOWN) - (SHOWN - 1) > 2 * tsm_reach(18)  # no frame within reach of both squares


def spliced_clips(seed: int) -> torch.Tensor:
    """Clips (a, b), (a, b'), (a', b), (a', b'), 4 x 3 x T x H x W, normalised: the first SHOWN frames of video
    a or a', the last SHOWN of b or b' (all of label 0), the frames between from one background."""
    rng = np.random.default_rng(seed)
    firsts, lasts = ([render_video(0, SPEC, rng) for _ in range(2)] for _ in range(2))
    middle = render_video(0, SPEC, rng)[SHOWN]
    clips = []
    for first in firsts:
        for last in lasts:
            video = np.repeat(middle[None], SPEC.frames, axis=0)
            video[:SHOWN], video[-SHOWN:] = first[:SHOWN], last[-SHOWN:]
            clips.append(video)
    frames = torch.from_numpy(np.stack(clips)).float().div(255).permute(0, 4, 1, 2, 3)
    return (frames - 0.45) / 0.225


def interaction(model: torch.nn.Module, clips: torch.Tensor) -> tuple[float, float]:
    """The squares' interaction in the logits, and the logits' scale (their largest absolute value)."""
    with torch.no_grad():
        logits = model.eval()(clips)
    return (logits[0] - logits[1] - logits[2] + logits[3]).abs().max().item(), logits.abs().max().item()


def context_model(module: str, seed: int = 0, **settings: float) -> torch.nn.Module:
    """The benchmark's model at width 8 with `module` after conv3_1, random weights from `seed`; a non-local
    block's output norm scales by 1 (its zero initial scale makes a new block the identity)."""
    torch.manual_seed(seed)
    positions = [] if module == "none" else ["conv3_1"]
    backbone = BackboneConfig(depth=18, width=8, num_frames=SPEC.frames)
    model = build_model(backbone, ModuleConfig(name=module, positions=positions, **settings), 2)
    if module == "nl":
        with torch.no_grad():
            model.context_modules()["conv3_1"].bn.weight.fill_(1.0)
    return model


def trained_a_little(model: torch.nn.Module, clips: torch.Tensor, frozen_gamma: bool = False) -> torch.nn.Module:
    """A few SGD steps on the spliced clips labelled 0, 1, 1, 0, so that BatchNorm's statistics and the weights
    move away from their initial values (with `frozen_gamma`, RCCA-3D's gamma stays where it is)."""
    parameters = [p for name, p in model.named_parameters() if not (frozen_gamma and name.endswith("gamma"))]
    optimizer = torch.optim.SGD(parameters, lr=0.05, momentum=0.9)
    torch.manual_seed(0)  # the same dropout masks for every model
    model.train()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(clips), torch.tensor([0, 1, 1, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("seed", [0, 1])
def test_a_plain_backbone_adds_one_term_per_square(seed: int) -> None:
    clips = spliced_clips(seed)
    for model in (context_model("none", seed), trained_a_little(context_model("none", seed), clips)):
        between, scale = interaction(model, clips)
        assert scale > 1e-3 and between < 1e-5 * scale


def test_rcca_with_a_frozen_gamma_of_zero_is_the_plain_backbone() -> None:
    clips = spliced_clips(0)
    plain = trained_a_little(context_model("none"), clips)
    rcca = context_model("rcca", gamma_init=0.0)
    rcca.load_state_dict(plain.state_dict(), strict=False)  # the same backbone weights and statistics
    trained_a_little(rcca, clips, frozen_gamma=True)
    plain = trained_a_little(plain, clips)  # the same three steps again
    assert rcca.context_modules()["conv3_1"].gamma.item() == 0.0
    with torch.no_grad():
        torch.testing.assert_close(rcca.eval()(clips), plain.eval()(clips), rtol=1e-5, atol=1e-6)
    between, scale = interaction(rcca, clips)
    assert between < 1e-5 * scale


@pytest.mark.parametrize(("module", "settings"), [("rcca", {}), ("rcca", {"recurrence": 1}), ("nl", {})])
def test_a_context_module_makes_the_squares_interact(module: str, settings: dict) -> None:
    clips = spliced_clips(0)
    between, scale = interaction(trained_a_little(context_model(module, **settings), clips), clips)
    assert between > 1e-4 * scale  # 10 times the bound a plain backbone stays under


def test_the_set_is_written_balanced_and_read_back_as_videos(tmp_path) -> None:
    cfg = compose_config(
        [
            "experiment=context_bench",
            f"data.cache_dir={tmp_path}",
            "dataset.synthetic.num_train=4",
            "dataset.synthetic.num_test=2",
            "dataset.synthetic.size=32",
        ]
    )
    OmegaConf.resolve(cfg)
    root, annotations = read_annotations(cfg.dataset, progress=False)
    assert root.parent == tmp_path / "context" and root.name.startswith("context_train4_test2_frames20_size32")
    assert annotations.classes == CLASSES
    assert [r.label for r in annotations.train] == [0, 1, 0, 1] and [r.label for r in annotations.test] == [0, 1]
    frames = read_frames_pyav(root / annotations.train[1].path, lambda count: list(range(count)))
    bright = (frames.amax(dim=1) > 2 * context.BACKGROUND_LEVELS).sum(dim=(1, 2))  # pixels per frame
    side = round(context.SQUARE_FRACTION * 32)
    assert len(frames) == 20 and (bright[2:18] == 0).all()  # squares survive MPEG-4 coding where they were drawn
    assert all(0.5 * side**2 <= count <= 1.5 * side**2 for count in [*bright[:2], *bright[18:]])


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_compare_modules_at_one_place_with_every_frame(preset: str) -> None:
    cfg = compose_config([f"experiment={preset}"])
    validate_config(cfg)
    assert cfg.dataset.name == "context" and cfg.backbone.num_frames == cfg.dataset.synthetic.frames >= min_frames(18)
    assert (cfg.backbone.name, cfg.backbone.depth, list(cfg.module.positions)) == ("tsm", 18, ["conv3_1"])


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (
            ["dataset.synthetic.frames=16"],
            "dataset.synthetic.frames=16: with a TSM ResNet-18 the context set needs 20 "
            "frames or more, so that no feature sees both squares; set dataset.synthetic.frames=20",
        ),
        (
            ["backbone=tsm_r50", "backbone.num_frames=20"],
            "dataset.synthetic.frames=20: with a TSM ResNet-50 the context set needs 36 frames or more, so that no "
            "feature sees both squares; set dataset.synthetic.frames=36",
        ),
        (
            ["backbone.num_frames=8"],
            "backbone.num_frames=8: the context set's clips are whole videos; set it to dataset.synthetic.frames=20",
        ),
        (
            ["backbone=mfnet", "backbone.num_frames=20", "module.positions=[conv3_1]"],
            "backbone.name=mfnet: the context set is sized by a TSM backbone's reach in time (rcca/data/context.py); "
            "use experiment=context_bench or backbone=tsm_r18",
        ),
    ],
)
def test_a_model_that_could_see_both_squares_is_refused_with_the_key(overrides: list[str], error: str) -> None:
    cfg = compose_config(["experiment=context_bench", *overrides])
    with pytest.raises(UserError) as raised:
        validate_config(cfg)
    assert str(raised.value) == error


def test_the_reach_of_deeper_tsm_resnets_asks_for_longer_videos() -> None:
    assert [min_frames(depth) for depth in (18, 34, 50)] == [20, 36, 36]  # 2 x 2 shown + 2 x 8 or 16 blocks
    cfg = compose_config(["experiment=context_bench", "backbone=tsm_r50", "dataset.synthetic.frames=36"])
    validate_config(cfg)  # num_frames follows the frames
