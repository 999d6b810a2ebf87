"""After training: the config's test protocol on the val split, a predictions file and a printed table."""

from __future__ import annotations

from delving.checkpoint import file_sha256
from delving.engine.logging import log
from delving.engine.trainer import Trainer
from delving.evaluation.evaluator import evaluate
from delving.evaluation.predictions import save_predictions


def run_final_eval(trainer: Trainer) -> dict[str, float]:
    """Collective: every rank evaluates its share; rank 0 writes predictions-<protocol>.npz and logs."""
    cfg, ctx = trainer.cfg, trainer.ctx
    protocol = getattr(cfg.eval.protocol, "value", cfg.eval.protocol)
    last = trainer.run_dir / "last.pt"
    result = evaluate(
        trainer.model,
        cfg.data,
        cfg.eval,
        split="val",
        rank=ctx.rank,
        world_size=ctx.world_size,
        device=ctx.device,
        # The same checkpoint and model_config fields as delving-eval's files, which delving-ensemble reads;
        # only rank 0 writes the file, so only rank 0 reads the (multi-GB) checkpoint to hash it.
        extra_metadata={
            "config": trainer.config,
            "model_config": trainer.config["model"],
            "checkpoint": {
                "path": str(last),
                "sha256": file_sha256(last) if ctx.is_main and last.is_file() else None,
            },
        },
    )
    summary = {
        "top1_error": result.top1_error,
        "top5_error": result.top5_error,
        "num_images": result.num_images,
    }
    if ctx.is_main:
        path = save_predictions(trainer.run_dir / f"predictions-{protocol}.npz", result.predictions())
        scales = ", ".join(str(s) for s in cfg.eval.scales)
        log.info(
            "final evaluation (%s, scales %s, flips %s) on %d val images:\n"
            "| protocol | top-1 error | top-5 error |\n|---|---|---|\n| %s | %.2f%% | %.2f%% |\npredictions: %s",
            protocol,
            scales,
            cfg.eval.flips,
            result.num_images,
            protocol,
            result.top1_error,
            result.top5_error,
            path,
        )
        if trainer.metrics is not None:
            trainer.metrics.write(
                {"type": "final_eval", "step": trainer.state.global_step, "protocol": protocol, **summary}
            )
    return summary
