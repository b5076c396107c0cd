"""`python -m minimal play`: the real-time pipeline as a game in the terminal.

Every frame is drawn with 24-bit colour half blocks: the character "▀" painted with the upper pixel as
its foreground and the lower pixel as its background shows two pixels per character cell, each pixel
repeated `scale` times so the sprites stay square. The arrow keys steer the player (space: stand
still; an action holds until the next key), 1-4 switch the scene, q quits. Frames are shown on a steady
30 FPS clock (pipeline.Pacer) with the measured rate under the picture. The terminal is put in cbreak
mode (keys arrive one by one, unechoed) and restored on exit, on q and on Ctrl-C alike.
"""

from __future__ import annotations

import os
import select
import sys
import time

import torch

from .data import SCENE_NAMES

KEYS = {"\x1b[A": "up", "\x1b[B": "down", "\x1b[C": "right", "\x1b[D": "left", " ": "none"}
SCENE_KEYS = {str(i + 1): name for i, name in enumerate(SCENE_NAMES)}
HELP = ("arrows steer, space stands still, 1-4 scene (" + ", ".join(f"{k} {v}" for k, v in SCENE_KEYS.items())
        + "), q quits")


def render(frame: torch.Tensor, scale: int = 2) -> str:
    """A frame (H, W, 3) uint8 as lines of 24-bit colour half blocks, each pixel scale x scale characters' worth."""
    big = frame.repeat_interleave(scale, 0).repeat_interleave(scale, 1).tolist()  # (scale H, scale W, 3)
    lines = []
    for top, bottom in zip(big[0::2], big[1::2], strict=True):
        cells = (f"\x1b[38;2;{a[0]};{a[1]};{a[2]}m\x1b[48;2;{b[0]};{b[1]};{b[2]}m\u2580" for a, b in zip(top, bottom,
                                                                                                       strict=True))
        lines.append("".join(cells) + "\x1b[0m")
    return "\n".join(lines)


def parse_keys(data: str) -> list[str]:
    """Split what the terminal sent into keys: arrow escape sequences whole, anything else one character."""
    keys, i = [], 0
    while i < len(data):
        n = 3 if data.startswith("\x1b[", i) and i + 2 < len(data) else 1
        keys.append(data[i:i + n])
        i += n
    return keys


def _terminal():
    """termios and tty, or a clear error where the terminal cannot be driven key by key."""
    try:
        import termios
        import tty
    except ImportError:
        raise SystemExit("python -m minimal play needs a POSIX terminal (the termios module); on Windows run it in "
                         "WSL, or use the headless `python -m minimal`") from None
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise SystemExit("python -m minimal play needs an interactive terminal (a TTY) for its keys and picture; "
                         "for a headless stream run `python -m minimal`")
    return termios, tty


def play(args) -> dict:
    """Run the game until q, Ctrl-C or args.frames frames (0: no limit); returns the pipeline's stats."""
    termios, tty = _terminal()
    from .pipeline import Pacer, load_pipeline

    fd, out = sys.stdin.fileno(), sys.stdout
    saved = termios.tcgetattr(fd)
    pipe = load_pipeline(args.model, args.steps, args.n_sink, args.stagger, device=args.device)
    action, scene, shown, stamps = "none", SCENE_NAMES[0], 0, []
    pipe.reset(scene=scene, seed=args.seed)
    try:
        tty.setcbreak(fd)
        out.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear the screen
        pacer = Pacer(30)
        while args.frames == 0 or shown < args.frames:
            while select.select([fd], [], [], 0)[0]:
                for key in parse_keys(os.read(fd, 64).decode(errors="ignore")):
                    if key == "q":
                        return pipe.stats()
                    action = KEYS.get(key, action)
                    if key in SCENE_KEYS:
                        scene = SCENE_KEYS[key]
                        pipe.set_scene(scene)
            frame = pipe.next_frame(action)
            pacer.wait()
            stamps = [*stamps[-30:], time.perf_counter()]
            rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
            out.write(f"\x1b[H{render(frame)}\n{rate:5.1f} frames/s  action {action:<5}  scene {scene:<6}\n{HELP}\n")
            out.flush()
            shown += 1
        return pipe.stats()
    except KeyboardInterrupt:
        return pipe.stats()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        out.write("\x1b[0m\x1b[?25h\n")  # colours off, cursor back
        out.flush()
        pipe.close()
