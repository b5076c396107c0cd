"""The frame autoencoder: exact reconstruction, standardised latents, robustness to latent noise."""

import pytest
import torch

from minimal.autoencoder import (
    AutoencoderConfig,
    AutoencoderRecipe,
    FrameAutoencoder,
    load_autoencoder,
    train,
    world_frames,
)


@pytest.fixture(scope="module")
def shipped():
    ae, meta = load_autoencoder()
    frames = world_frames(1024, torch.Generator().manual_seed(11))  # not the training stream (seed 0)
    with torch.no_grad():
        z = ae.encode(frames)
    return ae, meta, frames, z


def exact_share(x_hat, x):
    """Share of frames whose every pixel is within toybench's tolerance 0.2."""
    return ((x_hat - x).abs().amax((1, 2, 3)) <= 0.2).float().mean().item()


@pytest.mark.slow
def test_shipped_autoencoder_reconstructs_frames_exactly(shipped):
    ae, meta, frames, z = shipped
    assert z.shape == (1024, 8, 4, 4)
    with torch.no_grad():
        assert exact_share(ae.decode(z), frames) >= 0.99
    assert meta["recipe"]["steps"] == AutoencoderRecipe().steps


def test_nearby_latents_decode_to_the_same_frame(shipped):
    """The decoder was trained on noisy latents: a latent 0.2 standard deviations off still decodes right."""
    ae, _, frames, z = shipped
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        assert exact_share(ae.decode(z + 0.2 * torch.randn(z.shape, generator=g)), frames) >= 0.95
        assert exact_share(ae.decode(z + 1.0 * torch.randn(z.shape, generator=g)), frames) < 0.5  # not trivially


def test_latents_are_standardised(shipped):
    _, _, _, z = shipped
    mean, std = z.mean((0, 2, 3)), z.std((0, 2, 3))
    assert mean.abs().max() < 0.1 and (std - 1).abs().max() < 0.1, (mean, std)


def test_video_helpers_fold_the_frame_axis(shipped):
    ae, _, frames, _ = shipped
    clips = frames[:32].view(2, 16, 3, 16, 16)
    z = ae.encode_video(clips)
    assert z.shape == (2, 16, 8, 4, 4) and not z.requires_grad
    with torch.no_grad():
        assert torch.allclose(z[1, 3], ae.encode(clips[1, 3:4])[0], atol=1e-5)
        assert torch.allclose(ae.decode_video(z)[0, 5], ae.decode(z[0, 5:6])[0], atol=1e-5)
    assert ae.decode_video(z).shape == clips.shape


def test_training_lowers_the_reconstruction_error_and_standardises():
    x = world_frames(256, torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    model = FrameAutoencoder(AutoencoderConfig(width=32))
    with torch.no_grad():
        before = ((model.decode(model.raw(x), raw=True) - x) ** 2).mean().item()
    model, losses, _ = train(model, AutoencoderRecipe(steps=300, batch_size=16, lr=3e-3), device="cpu", progress=False)
    with torch.no_grad():
        z = model.encode(x)
        after = ((model.decode(z) - x) ** 2).mean().item()
    assert after < 0.8 * before, (before, after)
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10]) and not model.training
    assert z.mean((0, 2, 3)).abs().max() < 0.3 and (z.std((0, 2, 3)) - 1).abs().max() < 0.3


def test_bad_input_raises_clear_errors(shipped):
    ae = shipped[0]
    with pytest.raises(ValueError, match=r"frames must be \(N, 3, 16, 16\)"):
        ae.encode(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"latents must be \(N, 8, 4, 4\)"):
        ae.decode(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="clips must be"):
        ae.encode_video(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="latent clips must be"):
        ae.decode_video(torch.zeros(2, 8, 4, 4))
    with pytest.raises(ValueError, match="size must be a multiple of 4"):
        AutoencoderConfig(size=18)
    with pytest.raises(ValueError, match="channels must be an int >= 1"):
        AutoencoderConfig(channels=0)
