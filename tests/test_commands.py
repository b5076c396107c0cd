"""The command-line entry points run end to end (tiny sizes: the figures themselves live in benchmarks)."""

import json
import subprocess
import sys

import pytest

from minimal import bench, train


def test_bench_kv_cache_quick_prints_table_and_json(capsys):
    figures = bench.main(["kv-cache", "--quick", "--json", "--device", "cpu"])
    out = capsys.readouterr().out.strip().splitlines()
    assert "KV cache vs recompute" in out[0]
    assert json.loads(out[-1]) == figures
    assert figures["tokens"] == 64 and figures["speedup"] > 0


def test_train_text_gpt_runs_a_few_steps(tmp_path, capsys):
    result = train.main(["text-gpt", "--steps", "3", "--out", str(tmp_path / "t.pt"), "--device", "cpu"])
    assert (tmp_path / "t.pt").is_file() and result["val_bpc"] > 0
    assert result["bigram_bpc"] < result["unigram_bpc"] and result["recipe"]["steps"] == 3
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["val_bpc"] == result["val_bpc"] and "val_curve" not in printed  # lists are left out
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        train.main(["text-gpt", "--steps", "0", "--out", str(tmp_path / "zero.pt")])
    assert not (tmp_path / "zero.pt").exists()


def test_unknown_names_are_rejected():
    with pytest.raises(SystemExit):
        bench.main(["nope"])
    with pytest.raises(SystemExit):
        train.main(["nope"])


def test_main_job_streams_headless_and_writes_a_gif(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minimal", "--frames", "16", "--steps", "2", "--out",
                          str(tmp_path / "s.gif"), "--device", "cpu"], capture_output=True, text=True, check=True,
                         timeout=300).stdout
    assert "time to first frame" in out and "frames/s" in out and "toybench: validity" in out
    from PIL import Image

    with Image.open(tmp_path / "s.gif") as im:
        assert im.n_frames == 16 and im.size == (128, 128)


def test_text_demo():
    out = subprocess.run([sys.executable, "-m", "minimal", "text", "--tokens", "20", "--device", "cpu"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert out.startswith("The for statement") and "tokens/s" in out


def _pty_session(args, keys, seconds=120.0):
    """Run `python -m minimal play ARGS` on a pseudo-terminal, send each (delay, bytes) key, read the screen;
    returns (exit code, everything written, the terminal's local-mode flags afterwards)."""
    import os
    import pty
    import select
    import termios
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "minimal", "play", *args], stdin=slave, stdout=slave,
                            stderr=slave, close_fds=True)
    screen, deadline = b"", time.time() + seconds

    def pump(done):  # keep reading (a full terminal buffer would block the game) until done() or the deadline
        nonlocal screen
        while not done() and time.time() < deadline:
            if select.select([master], [], [], 0.05)[0]:
                screen += os.read(master, 1 << 16)

    try:
        pump(lambda: b"frames/s" in screen or proc.poll() is not None)  # the game is up
        for delay, key in keys:
            until = time.time() + delay
            pump(lambda until=until: time.time() > until)
            os.write(master, key)
        pump(lambda: proc.poll() is not None)
        while select.select([master], [], [], 0.1)[0]:  # what is left on the screen
            screen += os.read(master, 1 << 16)
        return proc.wait(timeout=10), screen.decode(errors="ignore"), termios.tcgetattr(slave)[3]
    finally:
        if proc.poll() is None:  # a failed test leaves no game running
            proc.kill()
        os.close(master)
        os.close(slave)


def test_play_in_a_pseudo_terminal():
    """Keys steer (the status line reads them back), 3 switches to the forest, q quits, and the terminal
    comes back in canonical mode with echo."""
    import termios

    code, screen, lflag = _pty_session(["--steps", "2", "--frames", "0"], [(1.0, b"\x1b[C"), (1.0, b"3"), (1.0, b"q")])
    assert code == 0 and "\u2580" in screen and "action right" in screen and "scene forest" in screen
    assert lflag & termios.ECHO and lflag & termios.ICANON


def test_play_stops_after_its_frames_and_refuses_a_pipe():
    code, screen, _ = _pty_session(["--steps", "2", "--frames", "5"], [])
    assert code == 0 and screen.count("frames/s") == 5
    proc = subprocess.run([sys.executable, "-m", "minimal", "play"], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "needs an interactive terminal" in proc.stderr
    no_termios = "import sys; sys.modules['termios'] = None; from minimal.__main__ import main; main(['play'])"
    proc = subprocess.run([sys.executable, "-c", no_termios], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "needs a POSIX terminal" in proc.stderr
