import os
import re
import shutil
import subprocess
import sys

import pytest
from helpers import warm
from helpers.data import make_folder_dataset, tiny_config, write_jpeg
from helpers.runs import REPO, cli_env

from delving.data.verify import scan_split


def _verify(*args: str) -> subprocess.CompletedProcess:
    return warm.run(
        [sys.executable, "-m", "delving.cli.verify_data", *args], env=cli_env(), cwd=REPO, timeout=120
    )


@pytest.mark.slow
def test_verify_data_lists_every_bad_file_and_exits_1(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", classes=2, train_per_class=4, val_per_class=2)
    clean = _verify("data=folder", f"data.root={root}", "processes=1")
    assert clean.returncode == 0, clean.stderr
    assert "0 unreadable image(s)" in clean.stdout

    (root / "train" / "c0" / "001.JPEG").write_bytes(b"")
    good = (root / "val" / "c1" / "000.JPEG").read_bytes()
    (root / "val" / "c1" / "000.JPEG").write_bytes(good[:200])
    (root / "train" / "c1" / "002.JPEG").write_text("<html>not found</html>")
    write_jpeg(root / "train" / "c1" / "003.JPEG", 20, 20, seed=1, fmt="PNG")  # readable
    write_jpeg(root / "train" / "c0" / "002.JPEG", 20, 20, seed=1, mode="CMYK")  # readable
    bad = _verify("data=folder", f"data.root={root}", "processes=2")
    assert bad.returncode == 1
    lines = [line for line in bad.stdout.splitlines() if line.startswith("BAD ")]
    assert len(lines) == 3
    assert any("c0/001.JPEG: zero-byte file" in line for line in lines)
    assert any("c1/000.JPEG" in line for line in lines)
    assert any("c1/002.JPEG: UnidentifiedImageError" in line for line in lines)
    assert "3 unreadable image(s)" in bad.stdout


def test_scan_split_reports_listing_errors_with_the_path(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", classes=2, train_per_class=2, val_per_class=1)
    (root / "val" / "c0" / "000.JPEG").write_bytes(b"\xff\xd8\xff")
    assert [path for path, _ in scan_split(tiny_config(root), "val", 1)] == [
        str(root / "val" / "c0" / "000.JPEG")
    ]
    with pytest.raises(FileNotFoundError, match=re.escape(f"data root not found: {tmp_path / 'missing'}")):
        next(scan_split(tiny_config(tmp_path / "missing"), "val", 1))


DROP_ROOT_RIGHTS = "-dac_override,-dac_read_search,-fowner"


def _as_a_user(command: list[str]) -> list[str]:
    """Root meets file modes only without the rights that bypass them (tests run as root here)."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: cannot drop the rights that bypass a folder's mode")
    return ["setpriv", f"--inh-caps={DROP_ROOT_RIGHTS}", f"--bounding-set={DROP_ROOT_RIGHTS}", *command]


TRAIN_ONE_EPOCH = """
import logging, sys
from delving.data.config import DataConfig, DatasetKind
from delving.data.loaders import TrainLoader
logging.basicConfig(level=logging.WARNING, format="%(message)s")
cfg = DataConfig(name=DatasetKind.folder, root=sys.argv[1], crop_size=16, scale_min=20, scale_max=28,
                 test_scale=20, num_workers=1, max_bad_fraction=0.5)
with TrainLoader(cfg, batch_size=3) as loader:
    images = sum(len(labels) for _, labels in loader.epoch(0))
print("trained on", images, "skipped", loader.bad_files.skipped)
"""


@pytest.mark.slow
def test_a_class_folder_without_search_permission_is_bad_files_named_and_counted(tmp_path):
    """r-- on a class folder: its names are listed, its files cannot be opened (the decoder's error path
    itself called Path.is_file(), which raised PermissionError)."""
    root = make_folder_dataset(tmp_path / "ds", classes=3, train_per_class=3, val_per_class=1)
    closed = root / "train" / "c1"
    closed.chmod(0o644)
    try:
        verify = subprocess.run(
            _as_a_user([sys.executable, "-m", "delving.cli.verify_data", "data=folder", f"data.root={root}",
                        "processes=2", "splits=[train]"]),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert verify.returncode == 1, verify.stderr[-2000:]
        bad = sorted(line for line in verify.stdout.splitlines() if line.startswith("BAD "))
        assert bad == [f"BAD {closed / f'{i:03d}.JPEG'}: PermissionError: [Errno 13] Permission denied: "
                       f"'{closed / f'{i:03d}.JPEG'}'" for i in range(3)]  # fmt: skip
        assert "3 unreadable image(s)" in verify.stdout

        train = subprocess.run(
            _as_a_user([sys.executable, "-c", TRAIN_ONE_EPOCH, str(root)]), capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert train.returncode == 0, train.stderr[-2000:]
        # Each sample of c1 is replaced by the next readable file: 000 meets 3 closed files, 001 two, 002 one.
        assert "trained on 9 skipped 6" in train.stdout
        skipped = [line for line in train.stderr.splitlines() if line.startswith("skipping unreadable image")]
        assert len(skipped) == 3 and all(
            "Permission denied" in line and str(closed) in line for line in skipped
        )
    finally:
        closed.chmod(0o755)


@pytest.mark.slow
def test_ctrl_c_ends_verify_data_in_one_line_with_what_was_checked(tmp_path):
    """Ctrl-C reaches the pool workers too: it printed 2-4 KeyboardInterrupt tracebacks. Now one line, and the
    process ends on SIGINT (a shell sees 130). Hard links of one large JPEG: the scan takes a while."""
    import os
    import signal

    import numpy as np
    from helpers.interrupt import ctrl_c_after
    from PIL import Image

    source = tmp_path / "source.JPEG"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (750, 1000, 3), dtype=np.uint8)).save(source)
    for split, count in (("train", 3000), ("val", 30)):
        for k in range(3):
            folder = tmp_path / "data" / split / f"c{k}"
            folder.mkdir(parents=True)
            for i in range(count // 3):
                os.link(source, folder / f"{i}.JPEG")
    command = ["delving-verify-data", "data=folder", f"data.root={tmp_path / 'data'}", "processes=2"]
    code, stdout, stderr = ctrl_c_after(command, "verify train:", tmp_path)
    assert code == -signal.SIGINT, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"delving-verify-data: interrupted \(Ctrl-C\); checked train: [\d,]+ of 3,000 files \(val not started\); "
        r"0 unreadable so far",
        last,
    ), last
    assert "unreadable image(s)" not in stdout
