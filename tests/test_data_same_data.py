"""Ranks that list different data stop together when the loaders are built, in one line naming the rank(s) and
the first difference (before, they trained to the end on a silently wrong sample assignment)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from helpers.data import make_folder_dataset
from helpers.runs import REPO, TINY_MODEL, TINY_TRAIN, cli_env

FOLDER_DATA = ["data=folder", "data.crop_size=24", "data.scale_min=28", "data.scale_max=36",
               "data.test_scale=28", "data.num_workers=0"]  # fmt: skip

# torchrun starts the same command on every rank; this wrapper gives each rank its own data.root, as a node
# with its own local copy of the data set has.
PER_RANK_ROOT = """#!/bin/sh
eval root=\\$DELVING_TEST_ROOT_$LOCAL_RANK
exec "$DELVING_TEST_PYTHON" -m delving.train "$@" "data.root=$root"
"""


@pytest.mark.ddp
def test_ranks_that_list_different_folders_stop_together_naming_rank_and_first_difference(tmp_path):
    root0 = make_folder_dataset(
        tmp_path / "node0", classes=4, train_per_class=12, val_per_class=4, size=(40, 36)
    )
    root1 = tmp_path / "node1"
    shutil.copytree(root0, root1)
    (root1 / "train" / "c1" / "003.JPEG").rename(root1 / "train" / "c1" / "003x.JPEG")  # same count, renamed
    (root1 / "val" / "c2" / "001.JPEG").unlink()  # one val image fewer on rank 1
    wrapper = tmp_path / "per_rank_root.sh"
    wrapper.write_text(PER_RANK_ROOT)
    wrapper.chmod(0o755)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
               str(wrapper), *FOLDER_DATA, *TINY_MODEL, *TINY_TRAIN, f"hydra.run.dir={run}"]  # fmt: skip
    env = cli_env(
        DELVING_TEST_ROOT_0=str(root0), DELVING_TEST_ROOT_1=str(root1), DELVING_TEST_PYTHON=sys.executable
    )
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    lines = [line for line in output.splitlines() if "the ranks see different data" in line]
    assert lines, output[-3000:]
    line = lines[0]
    assert "split 'train': rank(s) 1 list it differently from rank 0 (48 vs 48 images; first difference at " \
           "sample 15: 'c1/003.JPEG' (label 1) vs 'c1/003x.JPEG' (label 1)" in line  # fmt: skip
    assert "split 'val': rank(s) 1 list it differently from rank 0 (16 vs 15 images; first difference at " \
           "sample 9: 'c2/001.JPEG' (label 2) vs 'c2/002.JPEG' (label 2)" in line  # fmt: skip
    assert f"rank 0 reads {root0 / 'train'}, rank 1 {root1 / 'train'}" in line
    assert not (run / "last.pt").exists() and not (run / "finished.json").exists()
    assert "NaN" not in output
