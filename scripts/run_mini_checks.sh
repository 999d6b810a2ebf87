#!/usr/bin/env bash
# The checks of three mini findings that did not match the paper (docs/results/checks/README.md):
# Fig. 2's Xavier stall, Table 1's conv1 slope, Tables 5-6's model C. Trains 10 runs on the synthetic set
# with a 1,000-image val split (20 classes x 50), one process at a time, evaluates model C with two more
# protocols, checks the dense path, then writes the init-time gradient check and a summary (val curves,
# final errors, gradient vs weight decay, PReLU slopes from last.pt) to $RUNS/init_grad.json and
# $RUNS/summary.json.
# Measured: 2,512 s (42 min) of wall time on 2 CPU cores shared with other work (nice 19,
# OMP_NUM_THREADS=1): training 2,070 s, the mean image 9 s, evaluations 316 s and the dense check 95 s
# (both slowed by the seeded run_minis.sh holding both cores), the init check 22 s, the summary a few seconds.
# Each step's time is in $RUNS/times.tsv.
#   DELVING_DATA_CACHE=/tmp/dcache scripts/run_mini_checks.sh       # finished runs (last.pt) are kept unless FORCE=1
#   RUNS=/tmp/checks scripts/run_mini_checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-outputs/mini_checks}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1  # one thread per process, as scripts/run_minis.sh
COMMON=(train.device=cpu data.synthetic_val_per_class=50)  # the 1,000-image val split
FC_SCALED='model.fc_init_std=[0.06,0.0283,0.00283]'  # the paper's fc stds x sqrt(paper fan-in / mini fan-in)
mkdir -p "$RUNS"
TIMES="$RUNS/times.tsv"

train() {  # train <run name> <experiment> [overrides...]
  local name=$1 experiment=$2 start=$SECONDS
  shift 2
  if [[ -f "$RUNS/$name/last.pt" && -z "${FORCE:-}" ]]; then
    echo "keep $RUNS/$name (FORCE=1 retrains)" >&2
    return
  fi
  rm -rf "${RUNS:?}/$name"
  echo "+ train $name: experiment=$experiment $*" >&2
  nice -n 19 "$PY" -m delving.train "experiment=$experiment" "hydra.run.dir=$RUNS/$name" "${COMMON[@]}" "$@"
  printf '%s\t%d\texperiment=%s %s\n' "$name" $((SECONDS - start)) "$experiment" "$*" >> "$TIMES"
}

# 1. Fig. 2, model B (ReLU): Xavier for 5x the steps; with the fc stds scaled to the mini head's fan-in
#    (and He with them); without weight decay; at width 1/4.
train f1_xavier_e60 fig2_model_b_mini model.init=xavier train.epochs=60
train f1_he_e12 fig2_model_b_mini model.init=he_fan_out
train f1_xavier_fcstd_e24 fig2_model_b_mini model.init=xavier train.epochs=24 "$FC_SCALED"
train f1_he_fcstd_e12 fig2_model_b_mini model.init=he_fan_out "$FC_SCALED"
train f1_xavier_wd0_e24 fig2_model_b_mini model.init=xavier train.epochs=24 optim.weight_decay=0
train f1_xavier_w025_e24 fig2_model_b_mini model.init=xavier train.epochs=24 model.width=0.25

# 2. Table 1, net14 channel-wise PReLU: the mini as it is, and with the training set's mean image subtracted.
train f2_prelu_s0 table2_net14_prelu_mini seed=0
if [[ ! -f "$RUNS/f2_prelu_meanimg/last.pt" || -n "${FORCE:-}" ]]; then
  nice -n 19 "$PY" scripts/compute_mean_image.py experiment=table2_net14_prelu_mini data.synthetic_val_per_class=50
fi
train f2_prelu_meanimg table2_net14_prelu_mini seed=0 data.normalize=mean_image

# 3. Tables 5-6, models B and C (PReLU, width 1/8): 60 epochs, LR /10 at 40 and 52.
train f3_b_e60_s0 table6_model_b_prelu_mini seed=0 train.epochs=60 'sched.milestones=[40,52]'
train f3_c_e60_s0 table6_model_c_prelu_mini seed=0 train.epochs=60 'sched.milestones=[40,52]'
# Model C's centre view against its single-scale dense tests, on the val split's first 300 images (its
# classes 0-5; a dense test under CPU contention was too slow for all 1,000).
evaluate() {  # evaluate <run name> <predictions suffix> [overrides...]
  local name=$1 suffix=$2 start=$SECONDS
  shift 2
  nice -n 19 "$PY" -m delving.cli.eval "checkpoint=$RUNS/$name/last.pt" "output=$RUNS/$name/predictions-$suffix.npz" \
    device=cpu "$@"
  printf 'eval %s %s\t%d\t%s\n' "$name" "$suffix" $((SECONDS - start)) "$*" >> "$TIMES"
}
evaluate f3_c_e60_s0 center-lim300 eval=center eval.limit=300
evaluate f3_c_e60_s0 dense-s256-lim300 eval=dense "eval.scales=[256]" eval.limit=300

# The dense path against the plain forward (one 3x3-map window: they must agree), and the 48-px centre
# crop against the whole 55x55 centre, for C and B on 200 val images (10 per class).
nice -n 19 "$PY" - "$RUNS" f3_c_e60_s0 f3_b_e60_s0 <<'EOF'
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from delving.models import build_model

torch.set_num_threads(1)
runs = Path(sys.argv[1])
meta = json.loads(str(np.load(runs / "f3_c_e60_s0/predictions-multiscale.npz")["metadata"]))
root = Path(meta["dataset"]["root"]) / "val"
files = sorted(root.glob("*/*.JPEG"))
classes = sorted({f.parent.name for f in files})
sel = [f for f in files if int(f.stem.split("_")[-1]) < 10][:200]
mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)


def load(f, short=55):
    im = Image.open(f).convert("RGB")
    w, h = im.size
    s = short / min(w, h)
    im = im.resize((max(short, round(w * s)), max(short, round(h * s))), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() - mean


def centre(x, n):
    height, width = x.shape[-2:]
    top, left = (height - n) // 2, (width - n) // 2
    return x[:, top : top + n, left : left + n]


for run in sys.argv[2:]:
    ck = torch.load(runs / run / "last.pt", map_location="cpu", weights_only=False)
    net = build_model(dict(ck["config"]["model"]))
    net.load_state_dict(ck["model"])
    net.eval()
    c48 = c55 = d55 = 0
    maxdiff = 0.0
    with torch.no_grad():
        for f in sel:
            y = classes.index(f.parent.name)
            x = load(f)
            a = net(centre(x, 48)[None])
            b = net(centre(x, 55)[None])
            d = net.forward_dense(centre(x, 55)[None])
            maxdiff = max(maxdiff, float((b - d.reshape(1, -1)).abs().max()))
            c48 += int(a.argmax() == y)
            c55 += int(b.argmax() == y)
            d55 += int(d.reshape(-1).argmax() == y)
    n = len(sel)
    print(
        f"{run}: {n} images, top-1 error: centre48 {100 - 100 * c48 / n:.1f}, centre55 forward "
        f"{100 - 100 * c55 / n:.1f}, centre55 forward_dense {100 - 100 * d55 / n:.1f}, "
        f"max |forward - forward_dense| {maxdiff:.2e}"
    )
EOF

# Loss gradient vs weight-decay gradient (5e-4 ||w||) at init, mini model B against the paper-size one.
nice -n 19 "$PY" - "$RUNS/init_grad.json" <<'EOF'
import json
import sys

import torch
import torch.nn.functional as F

from delving.models import create_net

torch.set_num_threads(1)
WD = 5e-4
FC = (0.06, 0.0283, 0.00283)
cases = [  # name, width, input size, classes, batch, fc_init_std
    ("mini w1/8 48px 20cls", 0.125, 48, 20, 32, None),
    ("mini w1/4 48px 20cls", 0.25, 48, 20, 32, None),
    ("mini w1/8 48px 20cls, fc std x(paper/mini fan-in)^0.5", 0.125, 48, 20, 32, FC),
    ("paper B w1 224px 1000cls", 1.0, 224, 1000, 4, None),  # batch 4: a paper-size B is slow on a CPU
]
out = []
for name, width, size, classes, batch, fc_std in cases:
    for init in ("he_fan_out", "xavier"):
        torch.manual_seed(0)
        kw = dict(act="relu", init=init, width=width, input_size=size, num_classes=classes)
        if size == 48:
            kw["spp_levels"] = (3, 2, 1)
        if fc_std:
            kw["fc_init_std"] = fc_std
        net = create_net("model_b", **kw).train()
        x = 60.0 * torch.randn(batch, 3, size, size)  # about the spread of mean-subtracted 0-255 pixels
        y = torch.randint(0, classes, (batch,))
        logits = net(x)
        F.cross_entropy(logits, y).backward()
        row = {"case": name, "batch": batch, "init": init, "logit_std": float(logits.detach().std())}
        params = dict(net.named_parameters())
        for layer in ("features.conv1", "features.conv4_6", "head.fc1", "head.fc3"):
            p = params[layer + ".weight"]
            g, d = float(p.grad.norm()), WD * float(p.detach().norm())
            row[layer] = {"loss_grad": g, "wd_grad": d, "ratio": g / d}
        out.append(row)
        print(json.dumps(row), flush=True)
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)
EOF

# The summary of every run.
"$PY" - "$RUNS/summary.json" "$RUNS"/f[123]_*/ <<'EOF'
import json
import sys
from pathlib import Path

import torch

WD = 5e-4


def summary(run):
    recs = [json.loads(line) for line in open(Path(run) / "metrics.jsonl")]
    val = [r for r in recs if r.get("type") == "val"]
    train = [r for r in recs if r.get("type") == "train"]
    final = [r for r in recs if r.get("type") == "final_eval"]
    s = {"run": Path(run).name, "epochs": len(val)}
    s["val_top1"] = [r["val_top1_error"] for r in val]
    s["val_top5"] = [r["val_top5_error"] for r in val]
    s["last_val"] = [val[-1]["val_top1_error"], val[-1]["val_top5_error"]]
    s["best_val_top1"] = min(r["val_top1_error"] for r in val)
    # epochs trained (1-based) when the val errors first differ from a constant prediction (95 / 75)
    off = [i + 1 for i, r in enumerate(val) if (r["val_top1_error"], r["val_top5_error"]) != (95.0, 75.0)]
    s["first_epoch_off_chance"] = off[0] if off else None
    le90 = [i + 1 for i, r in enumerate(val) if r["val_top1_error"] <= 90.0]
    s["first_epoch_top1_le_90"] = le90[0] if le90 else None
    s["final_eval"] = [{k: r[k] for k in ("protocol", "top1_error", "top5_error", "num_images")} for r in final]
    s["final_train_loss"] = train[-1]["loss"]
    state = torch.load(Path(run) / "last.pt", map_location="cpu", weights_only=False)["model"]
    # loss-gradient norm (mean of the last 5 logged steps) against the weight-decay gradient WD * ||w||
    grads = {}
    for key in train[-1]:
        if key.startswith("grad_norm/"):
            layer = key.split("/", 1)[1]
            loss_grad = sum(r[key] for r in train[-5:]) / len(train[-5:])
            decay = WD * float(state[layer + ".weight"].float().norm())
            grads[layer] = {"loss_grad": loss_grad, "wd_grad": decay, "ratio": loss_grad / decay}
    s["grads_end"] = grads
    slopes = {}
    for key, value in state.items():
        if ".act" in key and key.endswith(".weight"):
            v = value.float()
            slopes[key.removesuffix(".weight").split(".")[-1]] = {
                "mean": float(v.mean()),
                "std": float(v.std()) if v.numel() > 1 else 0.0,
                "min": float(v.min()),
                "max": float(v.max()),
                "n": v.numel(),
            }
    s["slopes"] = slopes
    return s


out = [summary(run) for run in sys.argv[2:]]
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)
for s in out:
    print(s["run"], "last val", s["last_val"], "off chance after epoch", s["first_epoch_off_chance"], s["final_eval"])
EOF
