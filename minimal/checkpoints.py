"""Tiny pretrained weights, saved and loaded safely.

A checkpoint is one `torch.save`d dict of plain types and tensors:
    {"format_version": 1, "model": class name, "config": dataclass fields, "state_dict": tensors,
     "meta": {...}}            # meta: tokenizer characters, training recipe, measured quality
It is read with `torch.load(..., weights_only=True)`, which refuses to unpickle arbitrary objects, so a
checkpoint can never run code. Weights may be stored in half precision to stay small; they are cast
back to float32 on load. A file that is corrupt, of another format version, or whose tensors do not
fit the model named by its config raises a `ValueError` that says which.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from .transformer import GPT, GPTConfig

FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
# Foundation models known by name; a technique's model is loaded by passing its classes explicitly.
MODEL_CLASSES = {"GPT": (GPT, GPTConfig)}


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
        model_cls, config_cls = MODEL_CLASSES[ckpt["model"]]
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


def load_pretrained(name: str, model_cls=None, config_cls=None, device=None) -> tuple[nn.Module, dict]:
    """Load a shipped checkpoint from minimal/pretrained/NAME.pt -> (model, meta)."""
    available = sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))
    if name not in available:
        raise ValueError(f"unknown pretrained model {name!r}; available: {available}")
    return load_checkpoint(PRETRAINED_DIR / f"{name}.pt", model_cls, config_cls, device)
