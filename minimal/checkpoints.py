"""Tiny pretrained weights, saved and loaded safely, and the registry of the shipped ones.

A checkpoint is one `torch.save`d dict of plain types and tensors:
    {"format_version": 1, "model": class name, "config": dataclass fields, "state_dict": tensors,
     "meta": {...}}            # meta: tokenizer characters, training recipe, measured quality
It is read with `torch.load(..., weights_only=True)`, which refuses to unpickle arbitrary objects, so a
checkpoint can never run code. Weights may be stored in half precision to stay small; they are cast
back to float32 on load. A file that is corrupt, of another format version, or whose tensors do not
fit the model named by its config raises a `ValueError` that says which.

The registry `SHIPPED` maps every checkpoint name in minimal/pretrained/ to what it is (its kind), the
recipe that trains it (`python -m minimal.train NAME` calls `train_shipped`, the one place a shipped
checkpoint is written), the checkpoints that recipe starts from, and, for generators, the number of
denoising steps (or jumps) it samples with by default. A recipe is a function (device, steps) ->
(model, meta). Classes and recipes are named as "module:attribute" strings and imported on use, so this
foundation imports no technique.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .training import check_steps

FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
# The model classes a checkpoint may hold, by the class name stored in it: (model, config) "module:name".
MODEL_CLASSES = {
    "GPT": ("minimal.transformer:GPT", "minimal.transformer:GPTConfig"),
    "FlowMLP": ("minimal.flow_matching:FlowMLP", "minimal.flow_matching:FlowMLPConfig"),
    "FrameUNet": ("minimal.flow_matching:FrameUNet", "minimal.flow_matching:FrameUNetConfig"),
    "FrameAutoencoder": ("minimal.autoencoder:FrameAutoencoder", "minimal.autoencoder:AutoencoderConfig"),
    "VideoTransformer": ("minimal.video_model:VideoTransformer", "minimal.video_model:VideoConfig"),
}


def _resolve(path: str):
    """"module:attribute" -> the attribute, imported."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def save_checkpoint(path, model: nn.Module, meta: dict | None = None, half: bool = True) -> Path:
    """Save model (with a dataclass `config` attribute) and meta; floats stored as fp16 if `half`."""
    if not dataclasses.is_dataclass(getattr(model, "config", None)):
        raise TypeError("model must have a dataclass `config` attribute")
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format_version": FORMAT_VERSION, "model": type(model).__name__,
                "config": dataclasses.asdict(model.config), "state_dict": state, "meta": meta or {}}, path)
    return path


def load_checkpoint(path, model_cls=None, config_cls=None, device=None) -> tuple[nn.Module, dict]:
    """Load a checkpoint file -> (model in eval mode, meta). Classes default to the name stored inside."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a zip, unsafe pickle...
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or unsafe): {e}") from e
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise ValueError(f"{path} is not a minimal checkpoint (no format_version)")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {ckpt['format_version']}; this code reads {FORMAT_VERSION}")
    if model_cls is None:
        if ckpt["model"] not in MODEL_CLASSES:
            raise ValueError(f"{path} holds a {ckpt['model']!r}; pass model_cls and config_cls to load it")
        model_cls, config_cls = map(_resolve, MODEL_CLASSES[ckpt["model"]])
    elif ckpt["model"] != model_cls.__name__:
        raise ValueError(f"{path} holds a {ckpt['model']!r}, not a {model_cls.__name__!r}")
    try:
        config = config_cls(**ckpt["config"])
    except TypeError as e:
        raise ValueError(f"{path}: config does not match {config_cls.__name__}: {e}") from e
    model = model_cls(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit {model_cls.__name__}({config}): {e}") from e
    return model.to(device).eval(), ckpt["meta"]


@dataclass(frozen=True)
class Shipped:
    """A shipped checkpoint: what it is and how it is made."""

    kind: str  # "text", "image-tokens", "flow-2d", "flow-frames", "autoencoder" or "video"
    recipe: str  # "module:function", (device=None, steps=None) -> (model, meta)
    steps: int | None = None  # denoising steps (flow: Euler steps, MeanFlow: jumps) it samples with by default
    needs: tuple[str, ...] = ()  # checkpoints the recipe starts from
    half: bool = True  # weights stored in fp16


SHIPPED = {
    "text-gpt": Shipped("text", "minimal.text_gpt:train_text_gpt_recipe"),
    "text-draft": Shipped("text", "minimal.text_gpt:train_text_draft_recipe"),
    "text-gpt-sink": Shipped("text", "minimal.sinks_recipes:train_sink_gpt"),
    "bb-gpt": Shipped("text", "minimal.sink_emergence:train_recipe"),
    "image-gpt": Shipped("image-tokens", "minimal.image_tokens:train_recipe"),
    "flow-2d": Shipped("flow-2d", "minimal.flow_recipes:train_flow_2d", steps=32),
    "mean-flow-2d": Shipped("flow-2d", "minimal.flow_recipes:train_mean_flow_2d", steps=1),
    "flow-frames": Shipped("flow-frames", "minimal.flow_recipes:train_flow_frames", steps=32),
    "mean-flow-frames": Shipped("flow-frames", "minimal.flow_recipes:train_mean_flow_frames", steps=1,
                                needs=("flow-frames",)),
    "frame-ae": Shipped("autoencoder", "minimal.autoencoder:train_autoencoder", half=False),
    "video-tf": Shipped("video", "minimal.video_recipes:train_teacher_forcing", steps=8, needs=("frame-ae",)),
    "video-df": Shipped("video", "minimal.video_recipes:train_diffusion_forcing", steps=8, needs=("frame-ae",)),
    "video-tfn": Shipped("video", "minimal.video_recipes:train_noisy_teacher_forcing", steps=8, needs=("frame-ae",)),
    "video-sf": Shipped("video", "minimal.self_forcing_recipes:train_video_sf", steps=4,
                        needs=("video-df", "frame-ae")),
    "video-sf1": Shipped("video", "minimal.self_forcing_recipes:train_video_sf1", steps=1,
                         needs=("video-df", "frame-ae")),
    "video-sfpp": Shipped("video", "minimal.self_forcing_recipes:train_video_sfpp", steps=4,
                          needs=("video-sf", "video-df", "frame-ae")),
}


def shipped(name: str, kind: str | None = None) -> Shipped:
    """The registry entry of a shipped checkpoint (optionally of one kind), or a ValueError naming the choices."""
    names = sorted(n for n, entry in SHIPPED.items() if kind is None or entry.kind == kind)
    if name not in names:
        what = f"{kind} model" if kind else "pretrained model"
        raise ValueError(f"unknown {what} {name!r}; available: {names}")
    return SHIPPED[name]


def load_pretrained(name: str, model_cls=None, config_cls=None, device=None, kind: str | None = None):
    """Load a shipped checkpoint minimal/pretrained/NAME.pt -> (model, meta); `kind` restricts the names."""
    shipped(name, kind)
    return load_checkpoint(PRETRAINED_DIR / f"{name}.pt", model_cls, config_cls, device)


def train_shipped(name: str, out=None, device=None, steps: int | None = None) -> dict:
    """Run NAME's recipe (its own step count, or `steps`) and save the checkpoint to `out`, by default
    minimal/pretrained/NAME.pt. Returns the meta, with the path it was saved to."""
    entry = shipped(name)
    if steps is not None:
        check_steps(steps)
    model, meta = _resolve(entry.recipe)(device=device, steps=steps)
    path = save_checkpoint(out or PRETRAINED_DIR / f"{name}.pt", model, meta, half=entry.half)
    return {"path": str(path), **meta}
