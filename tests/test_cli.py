"""The console scripts as a user runs them: installed commands, from a folder outside the repository, from
the editable install and from a wheel installed on its own; one-line user errors; `import delving` and timm."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomllib
from helpers.runs import REPO, TINY_MODEL, cli_env
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from delving.cli.common import EXIT_USER_ERROR, user_errors
from delving.errors import ConfigError, UserError

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPTS = sorted(PYPROJECT["project"]["scripts"])
BIN = Path(sys.executable).parent  # the virtual environment's console scripts
TINY_SYNTHETIC = [
    "data=synthetic",
    "data.synthetic_classes=2",
    "data.synthetic_train_per_class=2",
    "data.synthetic_val_per_class=1",
    "data.synthetic_min_size=32",
    "data.synthetic_max_size=36",
    "data.num_workers=0",
    "processes=1",
]


def _env() -> dict[str, str]:
    env = cli_env()
    env.pop("DELVING_CONFIG_DIR", None)  # the package's own configs
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env or _env(), timeout=300)


def _run_all(commands: dict[str, list[str]], cwd: Path, env: dict[str, str] | None = None):
    """Each command once, three at a time (each start imports torch: seconds)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {key: pool.submit(_run, command, cwd, env) for key, command in commands.items()}
        return {key: future.result() for key, future in futures.items()}


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The refusal of a user's mistake: exit code 2, no traceback, one `error:` line on stderr."""
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


# ---------------------------------------------------------------- the installed commands, editable install
def _uses(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """A small real use of every console script, and what its output must contain."""
    missing = tmp / "missing"
    return {
        "delving-train": (["--cfg", "job", "experiment=demo"], "experiment_name: demo"),
        "delving-verify-data": (TINY_SYNTHETIC, "0 unreadable image(s)"),
        "delving-init-check": (
            [*TINY_MODEL, "batch_size=2", f"output_dir={tmp / 'init_check'}"],
            "written:",
        ),
        "delving-eval": ([f"checkpoint={missing}.pt"], f"error: checkpoint {missing}.pt"),
        "delving-ensemble": ([f"files=[{missing}.npz]"], f"error: {missing}.npz"),
        "delving-report": ([f"runs=[{missing}]", f"output_dir={tmp / 'report'}"], f"error: {missing}"),
        "delving-plan": (["--cfg", "job", "experiment=demo"], "budget_s: 180"),
    }


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("cli")  # outside the repository: no configs/ folder next to it
    commands = {}
    for name, (args, _) in _uses(tmp).items():
        commands[name, "--help"] = [str(BIN / name), "--help"]
        commands[name, "use"] = [str(BIN / name), *args]
    return tmp, _run_all(commands, tmp)


def test_every_console_script_has_a_use_here() -> None:
    assert sorted(_uses(Path("/tmp"))) == SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_console_script_help_from_another_folder(name: str, script_runs) -> None:
    result = script_runs[1][name, "--help"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "== Config ==" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("name", SCRIPTS)
def test_console_script_small_use_from_another_folder(name: str, script_runs) -> None:
    tmp, runs = script_runs
    result = runs[name, "use"]
    expected = _uses(tmp)[name][1]
    if expected.startswith("error: "):
        assert _one_error_line(result).startswith(expected)
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert expected in result.stdout, result.stdout[-2000:]


# ---------------------------------------------------------------- the packaging
def test_package_list_names_every_package_and_config_group() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    code = {
        ".".join(p.parent.relative_to(REPO / "src").parts)
        for p in (REPO / "src" / "delving").rglob("__init__.py")
    }
    configs = {
        ".".join(("delving", "configs", *d.relative_to(REPO / "configs").parts))
        for d in [REPO / "configs", *(REPO / "configs").rglob("*")]
        if d.is_dir() and any(d.glob("*.yaml"))
    }
    assert listed == code | configs, "pyproject.toml [tool.setuptools] packages is out of date"


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The project built as a wheel (from a copy: nothing is written into the repository) and installed
    on its own into a folder; returns (wheel, site folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(source)], tmp
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("delving-*.whl")
    site = tmp / "site"
    installed = _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], tmp)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return wheel, site


def test_wheel_ships_every_config(wheel_site) -> None:
    names = set(zipfile.ZipFile(wheel_site[0]).namelist())
    configs = {
        f"delving/configs/{p.relative_to(REPO / 'configs').as_posix()}"
        for p in REPO.glob("configs/**/*.yaml")
    }
    assert configs and configs <= names, sorted(configs - names)


def test_wheel_installed_alone_runs_from_another_folder(wheel_site, tmp_path: Path) -> None:
    site = wheel_site[1]
    env = {**_env(), "PYTHONPATH": str(site)}  # wins over the editable install
    results = _run_all(
        {
            "where": [sys.executable, "-c", "import delving, delving.configs; print(delving.__file__)"],
            "train": [str(site / "bin" / "delving-train"), "--cfg", "job", "experiment=demo"],
            "verify": [str(site / "bin" / "delving-verify-data"), *TINY_SYNTHETIC],
        },
        tmp_path,
        env,
    )
    assert Path(results["where"].stdout.strip()).is_relative_to(site), results["where"]
    assert results["train"].returncode == 0 and "experiment_name: demo" in results["train"].stdout, results[
        "train"
    ]
    assert results["verify"].returncode == 0 and "0 unreadable image(s)" in results["verify"].stdout, results[
        "verify"
    ]


# ---------------------------------------------------------------- one-line user errors
def _task(error: BaseException):
    @user_errors()
    def task() -> None:
        raise error

    return task


@pytest.fixture
def delving_log(tmp_path: Path):
    """The `delving` logger with a console handler (stdout) and a file handler, as the train app sets it."""
    logger = logging.getLogger("delving")
    saved = logger.handlers[:]
    console, file = logging.StreamHandler(sys.stdout), logging.FileHandler(tmp_path / "train.log")
    logger.handlers[:] = [console, file]
    yield tmp_path / "train.log"
    file.close()
    logger.handlers[:] = saved


def test_user_error_is_one_line_exit_2_and_in_the_log_file(monkeypatch, capsys, delving_log: Path) -> None:
    for key in ("RANK", "SLURM_PROCID", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(SystemExit) as exit_:
        _task(ConfigError("train.epochs=0: train for at least one epoch"))()
    assert exit_.value.code == EXIT_USER_ERROR
    out, err = capsys.readouterr()
    assert err == "error: train.epochs=0: train for at least one epoch\n" and out == ""
    assert "train.epochs=0: train for at least one epoch" in delving_log.read_text()


def test_user_error_prints_on_rank_0_only(monkeypatch, capsys, delving_log: Path) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit_:
        _task(UserError("same on every rank"))()
    assert exit_.value.code == EXIT_USER_ERROR
    assert capsys.readouterr() == ("", "") and delving_log.read_text() == ""


def test_hydra_full_error_keeps_the_traceback(monkeypatch) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="keep me"):
        _task(ConfigError("keep me"))()


def test_a_bug_is_not_a_user_error(monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(ZeroDivisionError):
        _task(ZeroDivisionError("a bug keeps its traceback"))()


def test_missing_value_names_the_key(monkeypatch, capsys) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    cfg = OmegaConf.create({"checkpoint": "???"})
    with pytest.raises(MissingMandatoryValue) as missing:
        _ = cfg.checkpoint
    with pytest.raises(SystemExit):
        _task(missing.value)()
    assert capsys.readouterr().err == "error: checkpoint is not set: add checkpoint=<value> to the command\n"


def test_no_message_passes_on_advice_to_load_unsafely(monkeypatch, capsys, tmp_path: Path) -> None:
    """Real refusals of PyTorch and NumPy, wrapped as a loader would: the path stays, the advice goes."""
    import fractions

    import numpy as np
    import torch

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    torch.save({"x": fractions.Fraction(1, 3)}, tmp_path / "last.pt")
    np.save(tmp_path / "p.npy", np.array([{}], dtype=object))
    for path, load in ((tmp_path / "last.pt", torch.load), (tmp_path / "p.npy", np.load)):
        with pytest.raises(Exception) as refused:  # whatever the library raises
            load(path)
        with pytest.raises(SystemExit):
            _task(UserError(f"{path}: unreadable: {refused.value}"))()
        err = capsys.readouterr().err
        assert (
            err.startswith(f"error: {path}: unreadable: it holds pickled Python object")
            and err.count("\n") == 1
        )
        for advice in ("weights_only", "allow_pickle", "safe_globals", "trust"):
            assert advice not in err, err


# ---------------------------------------------------------------- import delving
@pytest.mark.slow
def test_import_delving_registers_the_nets_in_timm_and_stays_light() -> None:
    code = (
        "import sys, delving; light = 'timm' not in sys.modules and 'torch' not in sys.modules\n"
        "import timm; net = timm.create_model('delving_model_a', num_classes=10)\n"
        "print(light, net.num_classes, timm.is_model('delving_net30'))"
    )
    result = _run([sys.executable, "-c", code], REPO, {**_env(), "PYTHONPATH": ""})
    assert result.stdout.split() == ["True", "10", "True"], result.stderr[-3000:]


def test_config_dir_override(monkeypatch, tmp_path: Path) -> None:
    from delving.config_files import config_dir, config_path

    monkeypatch.delenv("DELVING_CONFIG_DIR", raising=False)
    assert config_path() == "pkg://delving.configs" and (config_dir() / "train.yaml").is_file()
    monkeypatch.setenv("DELVING_CONFIG_DIR", os.fspath(tmp_path))
    assert config_path() == str(tmp_path.resolve()) and config_dir() == tmp_path.resolve()
