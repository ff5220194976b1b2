"""`pipeline train`: the model/config listing, config mix-ups, the runs folder and the progress output."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from tests.test_face2diffusion import expression_output
from training.catalog import MODELS, resolve_config, shipped_configs
from training.progress import StepProgress
from training.train import run_root, train

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    return expression_output(tmp_path_factory.getbasetemp()) / "shards"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_help_lists_every_model_with_its_configs():
    out = ANSI.sub("", invoke("train", "--help").output)
    for name, entry in MODELS.items():
        assert name in out and entry.paper in out and entry.tiny in out, name
    assert "--runs-dir" in out and "OUT/runs" in out
    listing = invoke("train", "configs")
    assert listing.exit_code == 0 and "portraitbooth_tiny" in listing.output and "sefi_ide_tiny" in listing.output
    assert all(name in listing.output for name in shipped_configs())  # none left unlisted


def test_config_aliases_and_mixups():
    assert resolve_config("portraitbooth", "tiny") == "portraitbooth_tiny"
    assert resolve_config("dense-face", "tiny") == "tiny" and resolve_config("msid", None) == "msid"
    with pytest.raises(ValueError, match="portraitbooth_tiny"):
        resolve_config("portraitbooth", "face2diffusion_tiny")
    res = invoke("train", "portraitbooth", "--shards", "x", "--base", "tiny", "--config", "dense_face")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "dense_face" in res.output and "portraitbooth_tiny" in res.output
    res = invoke("train", "face2diffusion", "--shards", "x")
    assert res.exit_code == 2 and "--base" in res.output
    res = invoke("train", "nosuch", "--shards", "x", "--base", "tiny")
    assert res.exit_code == 2 and "sefi-ide" in res.output


def test_runs_dir_default_is_beside_the_shards(tmp_path):
    shards = tmp_path / "out" / "shards"
    assert run_root("msid", "", shards, None) == (tmp_path / "out" / "runs" / "msid").resolve()
    assert run_root("sefi-ide", "mine", shards, tmp_path / "r") == tmp_path / "r" / "mine"
    assert run_root("msid", str(tmp_path / "abs"), shards, tmp_path / "r") == tmp_path / "abs"


def test_cli_trains_into_runs_dir_with_progress_lines(shards, tmp_path):
    res = invoke("train", "msid", "--shards", str(shards), "--config", "tiny", "--runs-dir", str(tmp_path),
                 "--set", "trainer.progress_interval=0")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "msid_tiny" / "checkpoints" / "final.ckpt").is_file()
    assert (tmp_path / "msid_tiny" / "train_summary.json").is_file()
    text = res.output
    assert "Epoch" not in text and "done: 3 steps" in text and "held-out AUC: depth1" in text
    steps = re.findall(r"step (\d+)/3 +loss [0-9.e+-]+ depth1 [0-9.e+-]+.* it/s", text)
    assert steps == ["1", "2", "3"], text  # one line per step with interval 0, not a tty
    assert "trained 3 steps (3/3)" in text and not ANSI.search(text)
    assert "GPU available" not in text and "eval mode" not in text  # Lightning's own lines: only with -v


def test_progress_bar_on_a_terminal(shards, tmp_path, monkeypatch):
    import training.train as tt

    stream = io.StringIO()
    bars: list[StepProgress] = []

    class Captured(StepProgress):
        def __init__(self, interval: float = 10.0):
            super().__init__(stream=stream, interval=interval, tty=True)
            bars.append(self)

    monkeypatch.setattr(tt, "StepProgress", Captured)
    summary = train("msid", shards, "", "tiny", ["trainer.max_steps=2"], runs_dir=tmp_path)
    out = stream.getvalue()
    assert summary["steps"] == 2 and bars
    assert "2/2" in out and "depth4" in out and "it/s" in out and "Epoch" not in out
    ckpt = torch.load(summary["checkpoint"], weights_only=False)
    assert ckpt["global_step"] == 2


@pytest.mark.parametrize("module", ["infer_face2diffusion", "infer_portraitbooth", "infer_sefi_ide"])
def test_inference_commands_share_their_options_and_say_what_they_cannot_read(module, tmp_path, capsys):
    import importlib

    main = importlib.import_module(f"training.{module}").main
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for option in ("--base", "--prompt", "--out", "--device", "--steps", "--seed", "--guidance-scale"):
        assert option in text, (module, option)
    assert ("--reference" in text) == (module != "infer_sefi_ide")


def test_inference_images_in_and_out_fail_in_one_line(tmp_path):
    import numpy as np

    from training.infer_common import read_rgb, write_rgb

    with pytest.raises(SystemExit, match=r"^error: cannot read .*nope\.jpg as an image$"):
        read_rgb(str(tmp_path / "nope.jpg"))
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(SystemExit, match="cannot read"):
        read_rgb(str(tmp_path / "text.jpg"))
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 255  # red in, red out (RGB on both sides)
    write_rgb(str(tmp_path / "out.png"), image)
    assert (read_rgb(str(tmp_path / "out.png")) == image).all()
    with pytest.raises(SystemExit, match="cannot write"):
        write_rgb(str(tmp_path / "no" / "such" / "out.png"), image)
