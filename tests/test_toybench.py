import math

import pytest
import torch

from minimal.data import SCENES, VIDEO_WORLD, SpriteWorld
from minimal.toybench import (
    SCORE_METRICS,
    detect_sprites,
    frame_scores,
    frame_validity,
    score_curves,
    score_interval,
    score_video,
    validity_rate,
)

FLIP = torch.tensor([0, 2, 1, 4, 3])  # none, up <-> down, left <-> right


@pytest.fixture(scope="module")
def real():
    """Real SpriteWorld video: frames (16, 64, 3, 16, 16), actions (16, 64), scenes (16,)."""
    return SpriteWorld(VIDEO_WORLD).sample_batch(16, 64, generator=torch.Generator().manual_seed(0))


def test_real_video_scores_high(real):
    frames, actions, scenes = real
    scores = score_video(frames, scenes, actions)
    assert set(scores) == set(SCORE_METRICS)
    assert all(scores[m] >= 0.95 for m in SCORE_METRICS), scores


def test_frame_scores_shapes_and_undefined_steps(real):
    frames, actions, scenes = real
    per_frame = frame_scores(frames[0], int(scenes[0]), actions[0])
    assert set(per_frame) == {*SCORE_METRICS, "brightness"}
    assert all(v.shape == (64,) for v in per_frame.values())
    assert per_frame["smoothness"][:2].isnan().all() and not per_frame["smoothness"][2:].isnan().any()
    assert per_frame["motion"][0].isnan() and per_frame["action"][0].isnan()
    assert frame_scores(frames[0], int(scenes[0]))["action"].isnan().all()  # no actions given
    curves = score_curves(frames, scenes, actions)
    assert all(v.shape == (64,) for v in curves.values())
    one = score_curves(frames[0], int(scenes[0]), actions[0])
    assert all(torch.equal(one[m].nan_to_num(-1), per_frame[m].nan_to_num(-1)) for m in per_frame)


def test_noise_video_scores_low(real):
    frames, actions, scenes = real
    noise = torch.rand(frames.shape, generator=torch.Generator().manual_seed(1))
    scores = score_video(noise, scenes, actions)
    assert scores["validity"] < 0.05 and scores["count"] < 0.05 and scores["background"] < 0.05, scores


def test_motion_falls_when_motion_stalls(real):
    """Frozen video scores 0 on motion, video slowed to half speed (every frame twice) half, shuffled frames
    (a sprite jumping about) low: motion counts legal steps of the simulator, not any change."""
    frames, actions, scenes = real
    frozen = frames[:, :1].expand_as(frames)
    scores = score_video(frozen, scenes, actions)
    assert scores["motion"] < 0.01 and scores["smoothness"] < 0.01 and scores["action"] < 0.5, scores
    slowed = score_video(frames[:, torch.arange(64) // 2], scenes, actions)["motion"]
    shuffled = score_video(frames[:, torch.randperm(64, generator=torch.Generator().manual_seed(0))], scenes,
                           actions)["motion"]
    assert abs(slowed - 0.5) < 0.05 and shuffled < 0.25 < 0.95 < score_video(frames, scenes, actions)["motion"]


def test_one_validity_on_real_and_corrupted_frames():
    """frame_validity, the one definition: real frames of every world the library generates are valid (but
    for a sprite fully hidden), and pixel noise, a colour shift, a missing or misshapen sprite are not."""
    from minimal.toybench_bench import WORLDS, corruptions

    for world, config in WORLDS.items():
        rates = {name: validity_rate(f, s, config) for name, (f, s) in corruptions(config, 16).items()}
        assert rates["real"] >= 0.95 and rates["shift 0.15"] >= 0.95, (world, rates)
        for bad in ("noise 0.1", "shift 0.25", "sprite erased", "sprite short", "blurred"):
            assert rates[bad] == 0.0, (world, bad, rates)
    frames, states = SpriteWorld(VIDEO_WORLD).rollout(4, scene=2, seed=3)
    assert frame_validity(frames, 2).tolist() == [True] * 4
    assert frame_validity(frames, torch.tensor([2, 2, 1, 2])).tolist() == [True, True, False, True]  # wrong scene


def test_bootstrap_interval_brackets_the_score(real):
    frames, actions, scenes = real
    broken = frames.clone()
    broken[::2, ::3] += 0.3  # a third of the frames of half the videos drift out of the palette
    scores, interval = score_video(broken, scenes, actions), score_interval(broken, scenes, actions)
    for m in ("validity", "count", "action", "motion"):
        lo, hi = interval[m]
        assert lo <= scores[m] <= hi and hi - lo < 0.5, (m, scores[m], interval[m])
    assert interval["validity"][1] - interval["validity"][0] > 0.01  # the videos differ: a real spread
    assert score_interval(broken, scenes, actions) == interval  # seeded


def test_colour_drift_lowers_background_and_raises_brightness(real):
    frames, actions, scenes = real
    ramp = torch.linspace(0, 1, frames.shape[1])[:, None] * torch.tensor([0.5, 0.4, 0.3])  # (T, 3)
    drifted = frames + ramp[None, :, :, None, None]
    scores = score_video(drifted, scenes, actions)
    assert scores["background"] < 0.6 and scores["validity"] < 0.6, scores
    brightness = score_curves(drifted, scenes, actions)["brightness"]  # (T,)
    assert (brightness.diff() > 0).all() and brightness[-1] - brightness[0] > 0.35


def test_swapped_scene_label_scores_low(real):
    frames, actions, scenes = real
    scores = score_video(frames, (scenes + 1) % len(SCENES), actions)
    assert scores["scene"] < 0.05, scores


def test_player_moving_against_actions_scores_low(real):
    _, actions, scenes = real
    world = SpriteWorld(VIDEO_WORLD)
    against = torch.stack([world.rollout(64, scene=int(s), actions=FLIP[a], seed=i)[0]
                           for i, (s, a) in enumerate(zip(scenes, actions, strict=True))])
    assert score_video(against, scenes, actions)["action"] < 0.5
    assert score_video(against, scenes, FLIP[actions])["action"] > 0.95


@pytest.mark.parametrize("offset", [(0, 0), (1, 1), (0, 2), (-3, 0), (2, -1), (-1, 3)])
def test_detect_sprites_sees_through_occlusion(offset):
    sprite, player = torch.tensor([6, 5]), torch.tensor([6, 5]) + torch.tensor(offset)
    states = {"positions": sprite.reshape(1, 1, 2), "velocities": torch.ones(1, 1, 2, dtype=torch.long),
              "colors": torch.arange(1), "scene": torch.tensor([2]), "actions": torch.tensor([0]),
              "player": player.reshape(1, 2)}
    frame = SpriteWorld(VIDEO_WORLD).render(states)[0]
    found = detect_sprites(frame, 2)
    assert found["player"] == tuple(player.tolist())
    if offset == (0, 0):  # fully hidden: absent, and the frame is not valid
        assert found["sprites"] == [None] and found["count"] == 1 and not found["valid"]
    else:
        assert found["sprites"] == [tuple(sprite.tolist())] and found["count"] == 2 and found["valid"]


def test_detect_sprites_on_real_frames_and_a_misdrawn_one():
    world = SpriteWorld(VIDEO_WORLD)
    frames, states = world.rollout(8, scene=3, actions=[4, 4, 1, 1, 0, 3, 2, 2], seed=5)
    for t in range(8):
        found = detect_sprites(frames[t], 3)
        assert found["valid"] and found["unknown"] == 0
        assert found["sprites"] == [tuple(states["positions"][t, 0].tolist())]
        assert found["player"] == tuple(states["player"][t].tolist())
    frame = torch.tensor(SCENES[0].background)[:, None, None].repeat(1, 16, 16)
    frame[:, 2:5, 2:5] = torch.tensor(SCENES[0].palette[0])[:, None, None]  # a 3 x 3 sprite
    frame[:, 9:13, 9:13] = torch.tensor(SCENES[0].player)[:, None, None]
    frame[:, 0, 15] = 0.5  # a pixel of no scene colour
    found = detect_sprites(frame, 0)
    assert found["sprites"] == [None] and found["player"] == (9, 9) and found["unknown"] == 1
    assert not found["valid"]


def test_out_of_range_frames_are_scored_not_rejected(real):
    frames, actions, scenes = real
    scores = score_video(frames[:2] * 3 - 1, scenes[:2], actions[:2])
    assert all(0 <= scores[m] <= 1 for m in SCORE_METRICS if not math.isnan(scores[m]))


VIDEO = torch.zeros(2, 4, 3, 16, 16)


@pytest.mark.parametrize("call, error, match", [
    (lambda: score_video(VIDEO[0, 0], 0), ValueError, "frames"),
    (lambda: score_video(torch.zeros(2, 4, 3, 32, 32), 0), ValueError, "frames"),
    (lambda: score_video(torch.zeros(2, 4, 1, 16, 16), 0), ValueError, "frames"),
    (lambda: score_video(VIDEO.long(), 0), TypeError, "frames"),
    (lambda: frame_scores(VIDEO, 0), ValueError, "frames"),
    (lambda: detect_sprites(VIDEO[0], 0), ValueError, "frame"),
    (lambda: score_video(VIDEO, 4), ValueError, "scene"),
    (lambda: score_video(VIDEO, -1), ValueError, "scene"),
    (lambda: score_video(VIDEO, torch.zeros(3, dtype=torch.long)), ValueError, "scene"),
    (lambda: frame_scores(VIDEO[0], torch.zeros(5, dtype=torch.long)), ValueError, "scene"),
    (lambda: score_video(VIDEO, 0.0), TypeError, "scene"),
    (lambda: detect_sprites(VIDEO[0, 0], 7), ValueError, "scene"),
    (lambda: score_video(VIDEO, 0, torch.full((4,), 5)), ValueError, "actions"),
    (lambda: score_video(VIDEO, 0, torch.zeros(3, dtype=torch.long)), ValueError, "actions"),
    (lambda: frame_scores(VIDEO[0], 0, torch.zeros(2, 4, dtype=torch.long)), ValueError, "actions"),
    (lambda: score_curves(VIDEO, 0, tol=0), ValueError, "tol"),
    (lambda: frame_scores(VIDEO[0], 0, tol=-0.1), ValueError, "tol"),
    (lambda: detect_sprites(VIDEO[0, 0], 0, tol=0.0), ValueError, "tol"),
    (lambda: score_video(VIDEO, 0, config="video"), TypeError, "config"),
    (lambda: frame_validity(VIDEO[0, 0], 0), ValueError, "frames"),
    (lambda: frame_validity(VIDEO[0], torch.zeros(3, dtype=torch.long)), ValueError, "scene"),
    (lambda: validity_rate(VIDEO[0], 0, tol=0), ValueError, "tol"),
])
def test_bad_inputs_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_the_calibration_bench_runs():
    from minimal.toybench_bench import bench

    table, figures = bench(quick=True)
    assert "toybench validity" in table and figures["tol"] == 0.2
    assert figures["motion"]["frozen"] == 0.0 and figures["validity"]["video"]["sprite erased"] == 0.0
