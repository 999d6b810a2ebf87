"""preflight: every training value is checked before the net is built, each refusal one line naming the key,
the value and what to do; model.num_classes comes from the data set unless it is set."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import warm
from helpers.configs import compose_config
from helpers.runs import TINY_DATA, TINY_MODEL, TINY_TRAIN, cli_env

from delving.config import register_all
from delving.config_files import config_dir
from delving.engine.preflight import preflight
from delving.errors import UserError

register_all()
TINY = [*TINY_DATA, *TINY_MODEL, *TINY_TRAIN]  # 4 synthetic classes, 12 training images each, 24-px crops
EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def compose_train(*overrides: str):
    return compose_config(overrides)


def refusal(*overrides: str, world_size: int = 1) -> str:
    cfg = compose_train(*overrides)
    with pytest.raises(UserError) as error:
        preflight(cfg, world_size)
    message = str(error.value)
    assert "\n" not in message
    return message


def on_folder(root: Path, *overrides: str) -> list[str]:
    """The tiny settings on an image-folder data set at `root`."""
    return [*(o for o in TINY if o != "data=synthetic"), "data=folder", f"data.root={root}", *overrides]


def class_folders(root: Path, split: str, classes: list[str], images: int = 4) -> None:
    """Class folders holding `images` empty .JPEG files each (preflight counts the names, reads none)."""
    for name in classes:
        (root / split / name).mkdir(parents=True)
        for i in range(images):
            (root / split / name / f"{i}.JPEG").touch()


def test_tiny_config_passes_and_takes_the_class_count_from_the_data_set() -> None:
    cfg = compose_train(*TINY, "model.num_classes=null")
    preflight(cfg, world_size=1)
    assert cfg.model.num_classes == 4


def test_folder_class_count_fills_model_num_classes(tmp_path: Path) -> None:
    for split in ("train", "val"):
        class_folders(tmp_path, split, ["cat", "dog", "owl"])
    cfg = compose_train(*on_folder(tmp_path, "model.num_classes=null"))
    preflight(cfg, world_size=1)
    assert cfg.model.num_classes == 3


def test_a_set_class_count_that_differs_from_the_data_set_is_refused() -> None:
    message = refusal(*TINY, "model.num_classes=7")
    assert (
        message.startswith("model.num_classes=7 (set by ") and "but data=synthetic has 4 classes" in message
    )
    assert "model.num_classes=4" in message


def test_bare_train_config_names_data_root_and_the_demo() -> None:
    message = refusal()
    assert message.startswith("data.root is not set: data=imagenet")
    assert "data.root=/" in message and "delving-train experiment=demo" in message


@pytest.mark.parametrize(
    ("override", "start"),
    [
        ("train.batch_size=0", "train.batch_size=0: give the global batch size"),
        ("train.grad_accum_steps=0", "train.grad_accum_steps=0: "),
        ("train.epochs=0", "train.epochs=0: train for at least one epoch"),
        ("train.val_every_epochs=0", "train.val_every_epochs=0: "),
        ("logger.log_every_steps=0", "logger.log_every_steps=0: "),
        ("train.val_max_images=0", "train.val_max_images=0: "),
        ("train.keep_best=-1", "train.keep_best=-1: "),
        ("optim.lr=0", "optim.lr=0.0: "),
        ("optim.lr=inf", "optim.lr=inf: the learning rate must be positive and finite"),
        ("optim.weight_decay=nan", "optim.weight_decay=nan: give 0 or more"),
        ("seed=-1", "seed=-1: give a seed from 0 to 4294967295"),
        ("eval.scales=[0]", "eval.scales=[0] with model.input_size=24: scales are shorter sides"),
        ("eval.limit=-1", "eval.limit=-1: evaluate 1 image or more"),
        ("sched.milestones=[5,3]", "sched.milestones=[5, 3]: "),
        ("model.spp_levels=[5,1]", "model=net14 model.input_size=24: SPP levels [5]"),
        ("eval.scales=[100]", "eval.scales=[100] with model.input_size=24: eval.scales [100] are smaller"),
        ("eval.scales=[]", "eval.scales=[] with model.input_size=24: eval.scales is empty"),
        ("data.crop_size=20", "data.crop_size=20 and model.input_size=24 differ"),
        ("data.scale_min=20", "data: need 0 < crop_size <= scale_min"),
        ("train.batch_size=64", "train.batch_size=64 is more than the 48 training images of data=synthetic"),
        ("resume=/no/such/last.pt", "resume=/no/such/last.pt: no such checkpoint"),
    ],
)
def test_each_bad_value_is_refused_naming_the_key(override: str, start: str) -> None:
    assert refusal(*TINY, override).startswith(start)


def test_batch_that_does_not_split_over_ranks_names_the_nearest_sizes() -> None:
    message = refusal(*TINY, "train.batch_size=10", world_size=4)
    assert message.startswith("train.batch_size=10 (global) does not split evenly: give a multiple of 4")
    assert message.endswith("e.g. 8 or 12")
    assert "multiple of 1" not in refusal(*TINY, "train.batch_size=0")


def test_data_root_missing_a_file_or_without_a_split(tmp_path: Path) -> None:
    assert refusal(*on_folder(tmp_path / "nope")).startswith(f"data.root={tmp_path / 'nope'}: no such folder")
    (tmp_path / "file").write_text("x")
    message = refusal(*on_folder(tmp_path / "file"))
    assert "is a file, not a folder" in message and "not found" not in message
    class_folders(tmp_path / "set", "train", ["a", "b"])
    assert "has no val/ folder (data.val_split=val)" in refusal(*on_folder(tmp_path / "set"))


def test_train_and_val_classes_that_differ_are_refused(tmp_path: Path) -> None:
    class_folders(tmp_path, "train", ["a", "b"])
    class_folders(tmp_path, "val", ["a", "c"])
    assert "differ" in refusal(*on_folder(tmp_path))


def _shard_index(root: Path, split: str, classes: list[str], keys: int) -> None:
    shard = {
        "file": f"{split}-000000.tar",
        "keys": [f"k{i}" for i in range(keys)],
        "offsets": [512 * i for i in range(keys)],
        "sizes": [100] * keys,
        "labels": [i % len(classes) for i in range(keys)],
    }
    (root / f"{split}.json").write_text(json.dumps({"classes": classes, "shards": [shard]}))


def test_shards_need_both_indexes_with_the_same_classes(tmp_path: Path) -> None:
    shards = [
        *(o for o in TINY if o != "data=synthetic"),
        "data=shards",
        f"data.root={tmp_path}",
        "model.num_classes=null",
    ]
    _shard_index(tmp_path, "train", ["a", "b"], keys=20)
    assert "has no shard index val.json (data.val_split=val)" in refusal(*shards)
    _shard_index(tmp_path, "val", ["a", "c"], keys=4)
    assert "list different classes" in refusal(*shards)
    _shard_index(tmp_path, "val", ["a", "b"], keys=4)
    assert refusal(*shards, "train.batch_size=32").startswith(
        "train.batch_size=32 is more than the 20 training"
    )
    cfg = compose_train(*shards)
    preflight(cfg, world_size=1)
    assert cfg.model.num_classes == 2


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 class folders per split with an empty file each: enough for preflight, which reads names only."""
    root = tmp_path_factory.mktemp("imagenet")
    for split in ("train", "val"):
        class_folders(root, split, [f"n{i:08d}" for i in range(1000)], images=1)
    return root


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_passes_preflight(experiment: str, imagenet_like: Path) -> None:
    cfg = compose_train(f"experiment={experiment}")
    if cfg.data.name.value != "synthetic":
        cfg = compose_train(f"experiment={experiment}", f"data.root={imagenet_like}")
    preflight(cfg, world_size=1)
    assert cfg.model.num_classes >= 1


@pytest.mark.slow
def test_bare_delving_train_fails_at_once_with_one_line(tmp_path: Path) -> None:
    """The console script, from an empty folder: one line naming data.root= and experiment=demo (it built
    model A for 12 s, then failed with a traceback). The time is printed, not asserted (a shared machine's
    clock is no test); the next test checks what it costs."""
    command = [str(Path(sys.executable).parent / "delving-train")]
    start = time.perf_counter()
    result = warm.run(command, env=cli_env(), cwd=tmp_path, timeout=120)
    print(f"bare delving-train: {time.perf_counter() - start:.2f} s")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "data.root=" in line and "experiment=demo" in line


@pytest.mark.slow
def test_bare_delving_train_refuses_before_importing_the_model_code(tmp_path: Path) -> None:
    """What a bare command may cost: Python, Hydra and torch (~2 s), not torchvision or timm (+2-3 s on two
    cores), which only the model, the loaders and the evaluation need. Counted by module, not by the clock."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('HEAVY', sorted({'timm', 'torchvision'} & set(sys.modules))))\n"
        "from delving.cli.train import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=cli_env(), timeout=120
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "HEAVY []" in result.stdout, result.stdout[-2000:]


@pytest.mark.slow
def test_a_wrong_key_is_refused_by_every_command_before_torch_is_imported() -> None:
    """The config schemas import no torch (delving.models.specs holds the nets as data): a mistyped key costs
    a second, not the 3 s of importing torch. Counted by module, not by the clock."""
    code = (
        "import importlib, sys\n"
        "for command in ('train', 'eval', 'ensemble', 'report', 'plan', 'verify_data', 'init_check'):\n"
        "    sys.argv = [command, 'seeed=1']\n"
        "    try:\n"
        "        importlib.import_module(f'delving.cli.{command}').main()\n"
        "    except SystemExit as stop:\n"
        "        print(command, stop.code)\n"
        "print('HEAVY', sorted({'torch', 'numpy', 'timm', 'torchvision'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120
    )
    lines = result.stdout.splitlines()
    assert lines[:-1] == [
        f"{c} 2" for c in ("train", "eval", "ensemble", "report", "plan", "verify_data", "init_check")
    ]
    assert lines[-1] == "HEAVY []", result.stdout + result.stderr[-2000:]
    assert result.stderr.count("error: seeed is not a key") == 7, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.label_smoothing=1.5", "train.label_smoothing=1.5"),
        ("train.clip_grad_norm=-1", "train.clip_grad_norm=-1"),
        ("train.ema_decay=1.0", "train.ema_decay=1.0"),
        ("sched.warmup_epochs=-1", "sched.warmup_epochs"),
        ("sched.warmup_unit=step", "sched.warmup_unit=step with sched.warmup_epochs=0"),
        (
            "optim.reference_batch_size=0",
            "optim.reference_batch_size=0: give the batch optim.lr was tuned for",
        ),
        ("train.ddp.bucket_cap_mb=0", "train.ddp.bucket_cap_mb=0.0: give a bucket size"),
    ],
)
def test_the_opt_in_knobs_are_checked_before_any_work(override: str, key: str) -> None:
    assert key in refusal(*TINY, override)


def test_ddp_static_graph_refuses_gradient_accumulation() -> None:
    message = refusal(*TINY, "train.ddp.static_graph=true", "train.grad_accum_steps=2")
    assert message.startswith(
        "train.ddp.static_graph=true with train.grad_accum_steps=2: PyTorch's DDP breaks"
    )


def test_a_plateau_schedule_refuses_a_warm_up_before_any_work() -> None:
    assert "plateau rule takes no warm-up" in refusal(*TINY, "sched=plateau", "sched.warmup_epochs=1")


def test_a_cosine_schedule_needs_epochs_after_its_warm_up() -> None:
    assert "cosine needs epochs after the warm-up" in refusal(*TINY, "sched=cosine", "sched.warmup_epochs=2")


# ---------------------------------------------------------------- refused before the run folder (issue 26)


def _console_train(cwd: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    """delving-train as users type it, from `cwd`, its runs under cwd/outputs (forked warm: helpers/warm.py)."""
    environment = cli_env(**env)
    environment.pop("HYDRA_FULL_ERROR", None)
    command = [str(Path(sys.executable).parent / "delving-train"), f"paths.outputs={cwd / 'outputs'}"]
    return warm.run([*command, *overrides], cwd=cwd, env=environment, timeout=300)


def _refused_before_the_run_folder(result: subprocess.CompletedProcess, cwd: Path) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert not (cwd / "outputs").exists(), sorted(str(p) for p in (cwd / "outputs").rglob("*"))
    return lines[0]


def _folder_set(root: Path, train_per_class: int) -> Path:
    class_folders(root, "train", ["a", "b", "c"], images=train_per_class)
    class_folders(root, "val", ["a", "b", "c"], images=1)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("cuda", "train.device=cuda: no CUDA GPU is usable"),
        ("escape", "run_name='../../../escape_run': a run name is a folder inside paths.outputs"),
        ("resume_garbage", "is unreadable: corrupt or not a torch checkpoint"),
        ("init_from_truncated", "is unreadable: corrupt or not a torch checkpoint"),
        ("mean_image", "data.normalize=mean_image needs the mean image"),
        ("small_folder", "train.batch_size=64 is more than the 35 training images of data=folder"),
    ],
)
def test_a_launch_that_cannot_work_is_refused_before_its_run_folder(
    tmp_path: Path, case: str, expected: str
) -> None:
    """Each of these made the run folder (.hydra/, .lock, train.log) and then failed, most with a traceback."""
    good = tmp_path / "good.pt"
    if case in ("resume_garbage", "init_from_truncated"):
        from delving.checkpoint import Checkpoint

        Checkpoint({"w": torch.zeros(4)}, {"model": {"name": "net14"}}).save(good)
        (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint\n" * 10)
        (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    if case == "small_folder":  # 35 images: 12 + 12 + 11
        _folder_set(tmp_path / "set", 12)
        (tmp_path / "set" / "train" / "c" / "0.JPEG").unlink()
    overrides = {
        "cuda": [*TINY, "train.device=cuda"],
        "escape": [*TINY, "run_name=../../../escape_run"],
        "resume_garbage": [*TINY, f"resume={tmp_path / 'garbage.pt'}"],
        "init_from_truncated": [*TINY, "resume=null", f"init_from={tmp_path / 'truncated.pt'}"],
        "mean_image": [*TINY, "data.normalize=mean_image"],
        "small_folder": on_folder(tmp_path / "set", "train.batch_size=64", "model.num_classes=3"),
    }[case]
    result = _console_train(tmp_path, *overrides, CUDA_VISIBLE_DEVICES="")
    line = _refused_before_the_run_folder(result, tmp_path)
    assert expected in line, line
    assert not list(tmp_path.parent.glob("escape_run*")) and not (tmp_path / "escape_run").exists()


def test_a_usable_resume_and_init_from_pass_preflight(tmp_path: Path) -> None:
    """The checks map the tensors (no read); a good file passes, a folder is named as one."""
    from delving.checkpoint import Checkpoint

    good = Checkpoint({"w": torch.zeros(4)}, {"model": {"name": "net14"}}).save(tmp_path / "last.pt")
    preflight(compose_train(*TINY, f"resume={good}"), world_size=1)
    preflight(compose_train(*TINY, "resume=null", f"init_from={good}"), world_size=1)
    assert refusal(*TINY, "resume=null", f"init_from={tmp_path}").startswith(
        f"init_from={tmp_path} is a folder"
    )
    assert "give one of them" in refusal(*TINY, f"resume={good}", f"init_from={good}")


@pytest.mark.parametrize("name", ["/abs/run", "a/../../b", "..", " ", "."])
def test_run_names_that_leave_the_outputs_folder_are_refused(name: str) -> None:
    assert refusal(*TINY, f"run_name='{name}'").startswith(
        f"run_name={name!r}: a run name is a folder inside"
    )


def test_run_names_inside_the_outputs_folder_pass() -> None:
    for name in ("a1", "study/a1", "a/../b"):
        preflight(compose_train(*TINY, f"run_name={name}"), world_size=1)


def test_eval_scales_beyond_the_devices_memory_are_refused_before_the_run() -> None:
    """eval.scales=[30000]-like values tried to allocate GBs at the final evaluation and died there."""
    message = refusal(*TINY, "train.final_eval=true", "eval.scales=[300000]")
    assert message.startswith(
        "eval.scales=[300000]: scale 300000 (32143 px shorter side for model.input_size=24)"
    )
    assert "that cpu has" in message and "even one image needs" in message


@pytest.mark.parametrize("act", ["prelu", "prelu_shared", "leaky_relu", "relu"])
@pytest.mark.parametrize("name", ["model_a", "model_b", "model_c", "vgg19", "net14", "net30"])
def test_the_dense_peak_is_what_the_nets_own_forward_holds(name: str, act: str) -> None:
    """dense_peak_bytes walks the layer shapes; here the net's own forward_dense on the meta device measures
    each layer's input and output, at two scales (one odd) and two batch sizes."""
    from delving.evaluation import memory
    from delving.models import build_model

    model = {"name": name, "width": 0.125, "act": act, "num_classes": 0 if name == "net30" else 10}
    with torch.device("meta"):
        net = build_model(model).eval()
    seen: list[int] = []

    def measure(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen.append(sum(t.numel() * t.element_size() for t in (*inputs, output)))

    for module in net.modules():
        if not list(module.children()):
            module.register_forward_hook(measure)
    for side, images in ((257, 1), (300, 3)):
        seen.clear()
        with torch.inference_mode():
            net.forward_dense(torch.empty(images, 3, side, side, device="meta"))
        assert memory.dense_peak_bytes(model, side, images) == max(seen) > images * 3 * side * side * 4


def test_the_memory_bound_names_the_largest_batch_that_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exactly the memory of 4 images (with their flips) is free: batch 32 is refused, 4 is named, 4 passes."""
    from delving.evaluation import memory
    from delving.evaluation.config import EvalConfig

    model = {"name": "net14", "width": 0.0625, "num_classes": 4, "input_size": 24, "spp_levels": [2, 1]}
    side = 256 * 24 // 224 + 1  # 27 px: round(256 * 24 / 224)
    per_image = memory.dense_peak_bytes(model, side, 1) * 2 + 3 * side * side * 4
    assert memory.dense_peak_bytes(model, side, 8) == 8 * memory.dense_peak_bytes(model, side, 1)
    monkeypatch.setattr(memory, "available_bytes", lambda device, total=False: 4 * per_image)
    with pytest.raises(UserError, match=r"lower eval\.batch_size to 4 or the scale"):
        memory.check_eval_memory(EvalConfig(scales=[256], batch_size=32), model, 24, torch.device("cpu"))
    memory.check_eval_memory(EvalConfig(scales=[256], batch_size=4), model, 24, torch.device("cpu"))
