"""Mistakes on the command line and in the files a command reads: one line, exit code 2, naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import warm
from helpers.evaluation import TINY_MODEL, make_predictions, save_checkpoint, tiny_model, write_image_folder
from helpers.runs import cli_env

from delving.cli.command_line import check_command_line, override_problem
from delving.errors import ConfigError
from delving.evaluation.config import EvalConfig, check_eval
from delving.evaluation.predictions import load_predictions, save_predictions
from delving.report.runs import RunDirectoryError, load_run


def _command(module: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = cli_env(**env)
    environment.pop("HYDRA_FULL_ERROR", None)
    return warm.run(  # forked warm (helpers/warm.py)
        [sys.executable, "-m", f"delving.cli.{module}", *args],
        timeout=120,
        cwd=cwd,
        env=environment,
    )


def _one_line_exit_2(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    ("config", "override", "expected"),
    [
        (
            "train",
            "model.widht=1",
            "model.widht is not a key of delving-train's config: did you mean model.width?",
        ),
        (
            "train",
            "+model.widht=1",
            "model.widht is not a key of delving-train's config: did you mean model.width?",
        ),
        (
            "evaluate",
            "eval.scalez=[1]",
            "eval.scalez is not a key of delving-eval's config: did you mean eval.scales?",
        ),
        (
            "evaluate",
            "+model.widht=1",
            "model.widht is not a key of delving-eval's config: delving-eval --cfg job",
        ),
        ("evaluate", "eval.flips=maybe", "eval.flips: Value 'maybe' is not a valid bool"),
        ("train", "optim.lr=abc", "optim.lr: Value 'abc' of type 'str' could not be converted to Float"),
        ("train", "experiment=dmeo", "experiment=dmeo: no such option; did you mean experiment=demo?"),
        ("train", "seed=-1", "seed=-1: give a seed from 0 to 4294967295"),
        ("ensemble", "seed=-1", "seed=-1: give a seed from 0 to"),
        ("train", "data.synthetic_seed=-3", "data.synthetic_seed=-3: give a seed"),
        ("train", "optim.lr=inf", "optim.lr=inf: give a finite number"),
        ("train", "optim.weight_decay=nan", "optim.weight_decay=nan: give a finite number"),
    ],
)
def test_a_wrong_override_is_one_line_naming_the_key(config: str, override: str, expected: str) -> None:
    problem = override_problem(config, (["checkpoint=x"] if config == "evaluate" else []) + [override])
    assert problem is not None and expected in problem and "\n" not in problem


def test_good_overrides_pass(tmp_path: Path) -> None:
    assert override_problem("train", ["experiment=demo", "optim.lr=1e-2", "eval.scales=[256,384]"]) is None
    assert override_problem("train", ["hydra.run.dir=/tmp/x", "hydra/launcher=basic"]) is None
    assert override_problem("ensemble", ["files=[a.npz,b.npz]", "weights=[0.5,0.5]"]) is None


@pytest.mark.slow
def test_the_checks_compose_answers_hydras_mode_question_as_hydra_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hydra's main composes a command's config once only to read `hydra.mode`, then again to run it; the check
    has just composed it, and its answer spares that compose. A config's sweep must still run as a multirun."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from delving.config_files import config_dir

    composes = []
    load = ConfigLoaderImpl.load_configuration
    monkeypatch.setattr(
        ConfigLoaderImpl,
        "load_configuration",
        lambda self, *a, **k: composes.append(k) or load(self, *a, **k),
    )
    modes = {}
    for overrides in (["experiment=demo", "optim.lr=0.02"], ["hparams_search=lr_wd"]):
        check_command_line("train", overrides)
        hydra = Hydra.create_main_hydra2("train", create_config_search_path(f"file://{config_dir()}"))
        try:
            composes.clear()
            answered = hydra.get_mode(config_name="train", overrides=overrides)
            assert composes == []  # answered from the check's compose
            asked = hydra.get_mode(config_name="train", overrides=overrides)  # the answer is used once
            assert len(composes) == 1 and answered == asked
        finally:
            GlobalHydra.instance().clear()
        modes[overrides[0]] = answered
    assert modes["experiment=demo"] != RunMode.MULTIRUN and modes["hparams_search=lr_wd"] == RunMode.MULTIRUN


def test_train_plus_typo_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    result = _command("train", "experiment=demo", "+model.widht=1", cwd=tmp_path)
    _one_line_exit_2(result, "model.widht is not a key of delving-train's config: did you mean model.width?")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("scales", "limit", "expected"),
    [
        ([], None, "eval.scales=[] with model.input_size=64: eval.scales is empty"),
        ([0], None, "eval.scales=[0] with model.input_size=64: scales are shorter sides"),
        ([-256], None, "must be positive"),
        ([256], -1, "eval.limit=-1: evaluate 1 image or more, or null (all)"),
        ([256], 0, "eval.limit=0"),
    ],
)
def test_eval_values_that_cannot_work_are_refused(
    scales: list[int], limit: int | None, expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        check_eval(EvalConfig(scales=scales, limit=limit), 64)
    assert expected in str(error.value)


@pytest.mark.slow
def test_delving_eval_refuses_bad_scales_and_limit_in_one_line(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", [(80, 70)] * 3)
    data = {"name": "folder", "root": str(root), "crop_size": 64, "num_workers": 0}
    checkpoint = save_checkpoint(tmp_path / "ck.pt", tiny_model(), dict(TINY_MODEL), data)
    for override, expected in (
        ("eval.scales=[-256]", "eval.scales=[-256] with model.input_size=64: scales are shorter sides"),
        ("eval.limit=-1", "eval.limit=-1: evaluate 1 image or more"),
    ):
        result = _command("eval", f"checkpoint={checkpoint}", "eval.protocol=center", override, cwd=tmp_path)
        _one_line_exit_2(result, expected)
    assert not list(tmp_path.glob("predictions*.npz"))


@pytest.mark.slow
def test_ensemble_of_a_non_utf8_class_folder_writes_its_report(tmp_path: Path) -> None:
    classes = ["caf\udcff", "b", "c"]  # how Python lists a folder named b"caf\xff"
    rng = np.random.default_rng(0)
    files = []
    for k in range(2):
        probs = rng.dirichlet(np.ones(3), size=6).astype(np.float32)
        preds = make_predictions(probs, [0, 1, 2, 0, 1, 2], classes=classes)
        files.append(save_predictions(tmp_path / f"m{k}.npz", preds))
    out = tmp_path / "ens"
    result = _command(
        "ensemble", f"files=[{files[0]},{files[1]}]", f"output_dir={out}", "worst_classes=3", cwd=tmp_path,
        LC_ALL="C.UTF-8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| caf\\xff |" in (out / "ensemble.md").read_text(encoding="utf-8")
    assert "caf\\xff" in result.stdout
    assert "caf\\udcff" in (out / "ensemble.json").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("damage", [b"- model=net14\n- [unclosed", b"\xff\xfe\x00garbage", b"model: net14\n"])
def test_a_damaged_overrides_file_is_one_error_naming_it(tmp_path: Path, damage: bytes) -> None:
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("experiment_name: demo\nmodel: {name: model_a}\n")
    (run_dir / ".hydra" / "overrides.yaml").write_bytes(damage)
    (run_dir / "metrics.jsonl").write_text('{"type": "val", "epoch": 0, "step": 2, "val_top1_error": 50.0}\n')
    with pytest.raises(RunDirectoryError, match=r"overrides\.yaml: (damaged|not a list)"):
        load_run(run_dir)
    if damage != b"model: net14\n":
        return  # the command itself once
    result = _command("report", f"runs=[{run_dir}]", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    _one_line_exit_2(result, str(run_dir / ".hydra" / "overrides.yaml"))


# ---------------------------------------------------------------- delving-eval, as users type it (issue 26)


def _console(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = cli_env(CUDA_VISIBLE_DEVICES="")
    environment.pop("HYDRA_FULL_ERROR", None)
    return warm.run(  # forked warm (helpers/warm.py)
        [str(Path(sys.executable).parent / command), *args], timeout=300, cwd=cwd, env=environment
    )


@pytest.fixture
def trained_elsewhere(tmp_path: Path) -> tuple[Path, Path]:
    """(a checkpoint whose saved data config names a folder that is gone, a folder of 6 val images)."""
    root = write_image_folder(tmp_path / "data", [(80, 70)] * 6)
    data = {"name": "folder", "root": str(tmp_path / "moved_away"), "crop_size": 64, "num_workers": 2}
    return save_checkpoint(tmp_path / "ck.pt", tiny_model(), dict(TINY_MODEL), data), root


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("device=cuda", "device=cuda: no CUDA GPU is usable"),
        ("output=/proc/x.npz", "output=/proc/x.npz: cannot write in /proc (No such file or directory)"),
        (
            "eval.scales=[300000]",
            "eval.scales=[300000]: scale 300000 (85714 px shorter side for model.input_size=64) needs at least",
        ),
        ("data.rooot=/x", "data.rooot is not a key of the data config: did you mean data.root?"),
    ],
)
def test_delving_eval_refuses_before_the_work_in_one_line(
    trained_elsewhere: tuple[Path, Path], override: str, expected: str
) -> None:
    """Each ran the evaluation first (output=), died with a traceback (device, scales) or an OmegaConf error."""
    checkpoint, root = trained_elsewhere
    result = _console(
        "delving-eval", f"checkpoint={checkpoint}", f"data.root={root}", override, cwd=root.parent
    )
    _one_line_exit_2(result, expected)
    assert "images to go" not in result.stderr and not list(root.parent.glob("predictions*.npz"))


@pytest.mark.slow
def test_delving_eval_takes_data_keys_without_data_onto_the_checkpoints_data_config(
    trained_elsewhere: tuple[Path, Path],
) -> None:
    """data.root=DIR data.num_workers=0 without data=: "Unexpected type for root: NoneType". Now they are set
    over the checkpoint's saved data config (its crop size and the rest kept), and the default output name says
    the data differ from the checkpoint's own."""
    checkpoint, root = trained_elsewhere
    result = _console(
        "delving-eval", f"checkpoint={checkpoint}", f"data.root={root}", "data.num_workers=0", "eval=center",
        cwd=root.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (written,) = root.parent.glob("predictions-center-s256-*data*-ck.npz")
    meta = load_predictions(written).metadata
    assert meta["data_config"]["root"] == str(root) and meta["data_config"]["num_workers"] == 0
    assert meta["data_config"]["crop_size"] == 64 and meta["num_images"] == 6


@pytest.mark.slow
def test_ctrl_c_in_delving_eval_is_one_line_and_ends_on_sigint(tmp_path: Path) -> None:
    """It printed ~50 lines of KeyboardInterrupt traceback. Large images, so the evaluation takes a while."""
    import signal

    from helpers.interrupt import ctrl_c_after

    root = write_image_folder(tmp_path / "data", [(1600, 1200)] * 60)
    data = {"name": "folder", "root": str(root), "crop_size": 64, "num_workers": 1, "use_draft": False}
    checkpoint = save_checkpoint(tmp_path / "ck.pt", tiny_model(), dict(TINY_MODEL), data)
    command = ["delving-eval", f"checkpoint={checkpoint}", "eval.scales=[2000]", "eval.batch_size=1"]
    code, _, stderr = ctrl_c_after(command, "images to go", tmp_path)
    assert code == -signal.SIGINT, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (
        "delving-eval: interrupted (Ctrl-C); no predictions file was written (it is written when the evaluation ends)"
    )
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob(".*.tmp"))
