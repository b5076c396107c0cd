import pytest
import torch

from minimal.data import (
    ACTIONS,
    SCENES,
    CharTokenizer,
    SpriteWorld,
    SpriteWorldConfig,
    text_corpus,
    toy_2d,
)


def test_text_corpus_is_deterministic_and_split():
    full, train, val = text_corpus(), text_corpus("train"), text_corpus("val")
    assert len(full) > 400_000 and full == text_corpus()
    assert full == train + "\n\n" + val
    assert 0.05 < len(val) / len(full) < 0.2
    with pytest.raises(ValueError, match="split"):
        text_corpus("test")


def test_tokenizer_round_trip_and_unknown_char():
    tok = CharTokenizer.from_text(text_corpus())
    text = text_corpus("val")[:2000]
    ids = tok.encode(text)
    assert ids.dtype == torch.long and tok.decode(ids) == text
    with pytest.raises(ValueError, match=r"text\[3\] = '€'"):
        tok.encode("abc€")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="repeat"):
        CharTokenizer("aab")


def test_spriteworld_frames_and_states():
    world = SpriteWorld(n_sprites=3, player=True)
    frames, states = world.rollout(20, scene=1, actions=[4] * 20, seed=0)
    assert frames.shape == (20, 3, 32, 32) and frames.min() >= 0 and frames.max() <= 1
    assert states["positions"].shape == (20, 3, 2)
    # deterministic by seed, different across seeds
    assert torch.equal(frames, world.rollout(20, scene=1, actions=[4] * 20, seed=0)[0])
    assert not torch.equal(frames, world.rollout(20, scene=1, actions=[4] * 20, seed=1)[0])
    # sprites stay inside the frame and move by their velocity (|v| <= max_speed, never 0)
    high = 32 - 4
    assert states["positions"].min() >= 0 and states["positions"].max() <= high
    v = states["velocities"]
    assert v.abs().min() >= 1 and v.abs().max() <= 2
    # the player moves right until the wall
    x = states["player"][:, 1]
    assert x[0] == high // 2 + 2 and x[-1] == high and (x.diff() >= 0).all()


def test_render_matches_states_pixelwise():
    world = SpriteWorld(n_sprites=1)
    frames, states = world.rollout(5, scene=2, seed=3)
    for t in range(5):
        y, x = states["positions"][t, 0].tolist()
        assert torch.allclose(frames[t, :, y:y + 4, x:x + 4], torch.tensor(SCENES[2].palette[0])[:, None, None])
        mask = torch.ones(32, 32, dtype=torch.bool)
        mask[y:y + 4, x:x + 4] = False
        assert torch.allclose(frames[t][:, mask], torch.tensor(SCENES[2].background)[:, None])


def test_scene_switch_mid_stream():
    world = SpriteWorld()
    scenes = [0] * 5 + [3] * 5
    frames, states = world.rollout(10, scene=scenes, seed=0)
    assert states["scene"].tolist() == scenes
    assert not torch.allclose(frames[4].mean((1, 2)), frames[5].mean((1, 2)))


def test_sample_batch_shapes():
    world = SpriteWorld(player=True)
    g = torch.Generator().manual_seed(0)
    frames, actions, scenes = world.sample_batch(3, 9, generator=g, hold=3)
    assert frames.shape == (3, 9, 3, 32, 32) and actions.shape == (3, 9) and scenes.shape == (3,)
    assert actions.max() < len(ACTIONS) and scenes.max() < len(SCENES)
    assert (actions[:, 0] == actions[:, 2]).all()  # held for 3 frames


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=4), "size"),
    (dict(sprite_size=20), "sprite_size"),
    (dict(sprite_size=0), "sprite_size"),
    (dict(n_sprites=9), "n_sprites"),
    (dict(n_sprites=-1), "n_sprites"),
    (dict(max_speed=0), "max_speed"),
    (dict(max_speed=40), "max_speed"),
    (dict(player_speed=0), "player_speed"),
])
def test_invalid_spriteworld_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpriteWorldConfig(**kwargs)


def test_invalid_rollout_arguments_raise():
    world = SpriteWorld()
    with pytest.raises(TypeError, match="size"):
        SpriteWorldConfig(size=32.0)
    with pytest.raises(ValueError, match="n_frames"):
        world.rollout(0)
    with pytest.raises(ValueError, match="scene"):
        world.rollout(4, scene=len(SCENES))
    with pytest.raises(ValueError, match="actions"):
        world.rollout(4, actions=[0, 1, 7, 0])
    with pytest.raises(ValueError, match="actions"):
        world.rollout(4, actions=[0, 1])


@pytest.mark.parametrize("name", ["checkerboard", "moons", "spirals"])
def test_toy_2d(name):
    x = toy_2d(name, 4000, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2) and x.abs().max() < 3
    assert torch.equal(x, toy_2d(name, 4000, torch.Generator().manual_seed(0)))


def test_checkerboard_occupies_alternate_squares():
    x = toy_2d("checkerboard", 10_000, torch.Generator().manual_seed(0))
    cells = torch.floor(x + 2).long()  # integer square coordinates in 0..3
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    assert len({tuple(c) for c in cells.tolist()}) == 8


def test_toy_2d_rejects_bad_arguments():
    with pytest.raises(ValueError, match="name"):
        toy_2d("swissroll", 10)
    with pytest.raises(ValueError, match="n must"):
        toy_2d("moons", 0)
