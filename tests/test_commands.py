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
    assert result["bigram_bpc"] < result["unigram_bpc"]


def test_unknown_names_are_rejected():
    with pytest.raises(SystemExit):
        bench.main(["nope"])
    with pytest.raises(SystemExit):
        train.main(["nope"])


def test_main_job_runs_headless():
    out = subprocess.run([sys.executable, "-m", "minimal", "--tokens", "20", "--device", "cpu"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert out.startswith("The for statement") and "tokens/s" in out
