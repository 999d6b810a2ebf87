"""A command line checked before Hydra runs it: a wrong key, type or value ends in one line, exit code 2.

Hydra prints six or seven lines for an unknown key or a wrong type, and a key added with `+` (its own advice
for an unknown key) is not checked at all: it reaches the code, which then fails with a traceback. Here the
command's config is composed once, as Hydra is about to, and every key is checked against its schema; its
`hydra.mode` then answers the question Hydra's main would compose the config once more for.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
from collections.abc import Iterator

from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from delving.config_files import config_dir
from delving.run_identity import global_rank

EXIT_USER_ERROR = 2
SEED_MAX = 2**32 - 1  # NumPy's and PyTorch's seeds are unsigned 32-bit (PyTorch takes more, NumPy does not)
_COULD_NOT_OVERRIDE = re.compile(
    r"Could not (?:override|delete from config|append to config)\.? '?([\w.\-/@]+)"
)


COMMANDS = {
    "train": "delving-train",
    "evaluate": "delving-eval",
    "ensemble": "delving-ensemble",
    "report": "delving-report",
    "init_check": "delving-init-check",
    "verify_data": "delving-verify-data",
    "plan": "delving-plan",
}


class CommandLineError(Exception):
    """A command line this check leaves to Hydra (a sweep: its values are checked per job)."""


def check_command_line(config_name: str, argv: list[str] | None = None) -> None:
    """Ends the process with `error: <one line>` and exit code 2 when an override names no key, gives a value
    of the wrong type, a non-finite number or a negative seed. Multirun sweeps, --help and the like are left to
    Hydra, as is everything when HYDRA_FULL_ERROR=1 (then Hydra's own message and traceback come instead)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if (
        args.help
        or args.hydra_help
        or args.info
        or args.shell_completion
        or args.multirun
        or args.config_dir
        or args.config_path
        or args.experimental_rerun
    ):
        return
    name, overrides = args.config_name or config_name, list(args.overrides)
    try:
        problem, mode = _composed_problem(name, overrides)
    except Exception:  # a sweep (CommandLineError), or a form this check does not know: Hydra decides
        return
    if problem is None:
        _answer_hydras_mode_question(name, overrides, mode)
        return
    if global_rank() == 0:
        print(f"error: {problem}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)


def override_problem(config_name: str, overrides: list[str]) -> str | None:
    """The first mistake in `overrides` for config `config_name`, as one line, or None."""
    return _composed_problem(config_name, overrides)[0]


# Hydra's main composes the command's config once only to read `hydra.mode` (Hydra.get_mode: a sweep set in a
# config runs as a multirun), then again to run it: 0.3 s of CPU each, a fifth of a small command's start. The
# check has just composed the same config from the same files, so its `hydra.mode` answers that question.
_known_modes: dict[tuple[str, tuple[str, ...]], object] = {}


def _answer_hydras_mode_question(config_name: str, overrides: list[str], mode: object) -> None:
    from hydra._internal.hydra import Hydra

    asked = getattr(Hydra, "get_mode", None)
    if asked is None:  # another Hydra than 1.3's: it asks however it does (the saving is lost, tests say so)
        return
    if not getattr(asked, "answered_by_delving", False):

        def get_mode(self: Hydra, config_name: str | None, overrides: list[str]) -> object:
            key = (config_name or "", tuple(overrides))
            return _known_modes.pop(key) if key in _known_modes else asked(self, config_name, overrides)

        get_mode.answered_by_delving = True  # type: ignore[attr-defined]
        Hydra.get_mode = get_mode  # type: ignore[method-assign]
    _known_modes.clear()
    _known_modes[(config_name, tuple(overrides))] = mode


def _composed_problem(config_name: str, overrides: list[str]) -> tuple[str | None, object]:
    """(the first mistake in `overrides`, or None; the composed `hydra.mode`, None where there was a mistake)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import MissingConfigException, OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as error:
        return _first_line(error), None
    if any(o.is_sweep_override() for o in parsed):
        raise CommandLineError("a sweep")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        try:
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        except MissingConfigException as error:
            return _missing_option(error), None
        except Exception as error:  # Hydra's ConfigCompositionException, with OmegaConf's error as its cause
            return _composition_problem(error, list(_keys(compose(config_name))), config_name), None
    mode = cfg.hydra.mode
    with read_write(cfg), open_dict(cfg):  # as compose() without return_hydra_config: the command's keys only
        del cfg["hydra"]
    return _check_values(cfg, config_name), mode


def _check_values(cfg: DictConfig, config_name: str) -> str | None:
    """The first key of the composed `cfg` that no schema has (added with `+`), or a non-finite number or a seed
    out of range; None when there is none."""
    unknown = list(_unknown_keys(cfg))
    if unknown:
        valid = [k for k in _keys(cfg) if not any(k == u or k.startswith(u + ".") for u in unknown)]
        added = OmegaConf.select(cfg, unknown[0], throw_on_resolution_failure=False)
        if isinstance(added, DictConfig):  # +model.widht=1 where the config has no model node: name the leaf
            unknown[0] = next(
                (f"{unknown[0]}.{k}" for k, _ in _leaves(OmegaConf.to_container(added))), unknown[0]
            )
        return _unknown_key(unknown[0], valid, config_name)
    for key, value in _leaves(OmegaConf.to_container(cfg, resolve=False)):
        if isinstance(value, float) and not math.isfinite(value):
            return f"{key}={value}: give a finite number"
        is_seed = key.rsplit(".", 1)[-1] == "seed" or key.endswith("_seed")
        if is_seed and isinstance(value, int) and not 0 <= value <= SEED_MAX:
            return f"{key}={value}: give a seed from 0 to {SEED_MAX}"
    return None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _missing_option(error: Exception) -> str:
    missing = str(getattr(error, "missing_cfg_file", "") or "")
    options = [o for o in getattr(error, "options", None) or [] if not str(o).startswith("base_")]
    if "/" in missing and options:
        group, name = missing.rsplit("/", 1)
        close = difflib.get_close_matches(name, options, n=1)
        hint = f"did you mean {group}={close[0]}? " if close else ""
        return f"{group}={name}: no such option; {hint}the options are {', '.join(sorted(options))}"
    return _first_line(error)


def _composition_problem(error: BaseException, valid: list[str], config_name: str) -> str:
    cause = error.__cause__ or error.__context__
    if isinstance(cause, ConfigKeyError | ConfigAttributeError) and cause.full_key:
        return _unknown_key(cause.full_key, valid, config_name)
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        return f"{cause.full_key}: {_first_line(cause)}"
    named = _COULD_NOT_OVERRIDE.search(str(error))
    if named and "No match in config" in str(error):
        return _unknown_key(named.group(1), valid, config_name)
    return _first_line(error)


def _unknown_key(key: str, valid: list[str], config_name: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    command = COMMANDS.get(config_name, config_name)
    hint = f"did you mean {close[0]}?" if close else f"{command} --cfg job lists the keys"
    return f"{key} is not a key of {command}'s config: {hint}"


def _is_dict(value: object) -> bool:
    """A DictConfig with keys (not one standing for None, ???, or an interpolation)."""
    return isinstance(value, DictConfig) and not (
        value._is_none() or value._is_missing() or value._is_interpolation()
    )


def _keys(node: DictConfig, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a composed config, containers included."""
    for key, value in node.items_ex(resolve=False):
        full = f"{prefix}{key}"
        yield full
        if _is_dict(value):
            yield from _keys(value, full + ".")


def _unknown_keys(node: DictConfig, prefix: str = "") -> Iterator[str]:
    """Keys inside a typed node (a dataclass schema) that its dataclass does not have: added with `+`."""
    kind = OmegaConf.get_type(node)
    fields = {f.name for f in dataclasses.fields(kind)} if dataclasses.is_dataclass(kind) else None
    for key, value in node.items_ex(resolve=False):
        if fields is not None and key not in fields:
            yield f"{prefix}{key}"
        elif _is_dict(value):
            yield from _unknown_keys(value, f"{prefix}{key}.")


def _leaves(node: object, key: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every leaf of a plain container (lists' items as key[i])."""
    if isinstance(node, dict):
        for name, value in node.items():
            yield from _leaves(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{key}[{i}]")
    else:
        yield key, node
