"""The one base class of every mistake a user can fix: entry points print its message as one line."""

from __future__ import annotations

import re


class UserError(Exception):
    """A wrong config value, file or command: the message names the key or file, the value, and what to do.

    Entry points print it as one line (no traceback unless HYDRA_FULL_ERROR=1), once per job.
    """


class ConfigError(UserError):
    """A config value that cannot work (checked before any work): names the key, the value, and the fix."""


def require_at_least(key: str, value: float, minimum: float, what: str) -> None:
    """The schemas' commonest rule: ConfigError("<key>=<value>: <what>") below `minimum`."""
    if value < minimum:
        raise ConfigError(f"{key}={value}: {what}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The advice PyTorch and NumPy attach to a refused pickle. The files delving reads may come from anyone, so
# no message may suggest loading them with code execution enabled, or allowlisting what they hold.
_UNSAFE_ADVICE = re.compile(
    r"weights_only|allow_pickle|safe_globals|trusted? (the )?source|if you trust", re.I
)
_TORCH_REFUSAL = re.compile(
    r"(Weights only load failed.*?)?WeightsUnpickler error:\s*(.*?)(?:\.\s|\.?$)(.*)", re.S
)
_GLOBAL = re.compile(r"GLOBAL (\S+)")
_NUMPY_REFUSAL = "Object arrays cannot be loaded when allow_pickle=False"


def safe_message(error: BaseException | str) -> str:
    """An error message as one line, without advice to load a file unsafely.

    The text before a library's message (a path, say) is kept. PyTorch's refusal of a pickled object becomes
    the object it refused, NumPy's refusal of an object array what the file holds; any other sentence that
    mentions weights_only, allow_pickle or allowlisting is dropped.
    """
    text = _ANSI.sub("", str(error))
    refused = _TORCH_REFUSAL.search(text)
    if refused:
        named = _GLOBAL.search(refused.group(2))
        what = named.group(1) if named else " ".join(refused.group(2).split())
        text = (
            f"{text[: refused.start()]}it holds pickled Python objects, not only tensors ({what}); "
            "refused, as loading them could run code."
        )
    text = text.replace(
        _NUMPY_REFUSAL, "it holds pickled Python object arrays; refused, as loading them could run code."
    )
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    line = " ".join(s for s in sentences if not _UNSAFE_ADVICE.search(s))
    return line or (type(error).__name__ if isinstance(error, BaseException) else "error")
