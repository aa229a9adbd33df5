"""Which batch sizes vLLM captures as CUDA graphs, from its arguments, and what more sizes cost.
Pure.

vLLM replays a captured graph for a step of at most the largest captured size (padded up to the
next size) and runs a larger step without one (vllm/config/vllm.py `_set_cudagraph_sizes`, 0.26
and 0.34): the sizes are those of `--cudagraph-capture-sizes` (or the compilation config's), else
1, 2, 4, every 8 below 256 and every 16 from 256 up to `--max-cudagraph-capture-size` or
min(2 × max_num_seqs, 512) (0.34: 1,024 on data-center Blackwell), never above
max_num_batched_tokens, which is added when it fits. Graph memory grows with the sizes: Qwen3-4B
on an H100 with 0.26 took 1.32 GiB for the 83 sizes up to 1,024 against 1.00 GiB for the default
51, so 1 % more for each size above 512. What a start on this host took holds for the sizes it
captured (its config line lists them): a launch with other sizes scales it by the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llm_supervisor.vllm.engine_args import compilation_config, with_compilation_config

DEFAULT_MAX_SIZE = 512
GRID_STEP = 16                  # the sizes' spacing from 256 tokens up
GROWTH_PER_SIZE_ABOVE_DEFAULT = 0.32 / 32


def capture_sizes(max_num_seqs: int, max_num_batched_tokens: int, max_size: int | None = None,
                  sizes: Sequence[int] = ()) -> list[int]:
    """The batch sizes vLLM captures."""
    if sizes:
        return sorted({n for n in sizes if n <= max_num_batched_tokens})
    top = min(max_size or min(2 * max_num_seqs, DEFAULT_MAX_SIZE), max_num_batched_tokens)
    grid = {n for n in (1, 2, 4) if n <= top} | set(range(8, min(top + 1, 256), 8)) | set(range(256, top + 1, GRID_STEP))
    if max_num_batched_tokens <= top:
        grid.add(max_num_batched_tokens)
    return sorted(grid)


def covering_max_size(tokens: int, max_num_batched_tokens: int) -> int:
    """The --max-cudagraph-capture-size whose graphs cover a step of `tokens` tokens: the grid's
    next size, or max_num_batched_tokens, which vLLM captures when the grid reaches it."""
    return min(-(-tokens // GRID_STEP) * GRID_STEP, max_num_batched_tokens)


def _ints(values: Sequence[str]) -> list[int] | None:
    try:
        return [int(v) for v in values]
    except ValueError:
        return None


_MAX_FLAG, _SIZES_FLAG = "--max-cudagraph-capture-size", "--cudagraph-capture-sizes"
_MAX_KEY, _SIZES_KEY = "max_cudagraph_capture_size", "cudagraph_capture_sizes"


@dataclass(frozen=True)
class CaptureAsk:
    """The capture sizes a launch's arguments ask for, as vLLM's EngineArgs merges
    `--max-cudagraph-capture-size` and `--cudagraph-capture-sizes` into the compilation config's
    keys of the same names (engine/arg_utils.py, 0.26 and 0.34): a flag and its key together are
    refused ("… are mutually exclusive"), and so is a largest size that is not the largest of the
    sizes given (config/vllm.py `_set_cudagraph_sizes`)."""

    max_size: int | None = None
    sizes: tuple[int, ...] | None = None      # None: not given
    max_in_config: bool = False               # given as the compilation config's key, not the flag
    sizes_in_config: bool = False
    both_given: tuple[str, ...] = ()          # keys given as a flag and in the compilation config

    def _largest_kept(self, max_num_batched_tokens: int | None) -> int | None:
        """The largest of the sizes given that vLLM keeps, where a largest size is given beside
        them and disagrees (None: no disagreement, or no graphs to capture)."""
        if max_num_batched_tokens is None or self.max_size is None or not self.sizes:
            return None
        largest = max((n for n in self.sizes if n <= max_num_batched_tokens), default=0)
        return largest if largest != self.max_size else None

    def vllm_errors(self, max_num_batched_tokens: int | None) -> list[str]:
        """What vLLM raises for these arguments, in its words (empty: it takes them).
        max_num_batched_tokens None: no CUDA graphs (enforce_eager), whose sizes vLLM leaves unchecked."""
        out = [f"{key} and compilation_config.{key} are mutually exclusive" for key in self.both_given]
        largest = self._largest_kept(max_num_batched_tokens)
        if largest is not None:
            out.append(f"customized max_cudagraph_capture_size(={self.max_size}) should be consistent with "
                       f"the max value of cudagraph_capture_sizes(={largest})")
        return out

    def problems(self, max_num_batched_tokens: int | None) -> list[str]:
        """One line per reason vLLM refuses these arguments, saying what to change."""
        out = [f"extra_args give both {_flag_of(key)} and the compilation config's {key}, which vLLM refuses; "
               "keep one" for key in self.both_given]
        largest = None if self.both_given else self._largest_kept(max_num_batched_tokens)
        if largest is not None:
            dropped = (f" (it drops those above max_num_batched_tokens {max_num_batched_tokens:,})"
                       if max(self.sizes) > largest else "")
            out.append(f"extra_args ask for CUDA graphs up to {self.max_size:,} tokens but the largest of the capture "
                       f"sizes is {largest:,}{dropped}, which vLLM refuses; give only the sizes")
        return out


def _flag_of(key: str) -> str:
    return _MAX_FLAG if key == _MAX_KEY else _SIZES_FLAG


def _flag_values(args: Sequence[str], i: int, name: str) -> tuple[str, list[str], int] | None:
    """(flag, its values, index past them) when args[i] is `name` or `name=…`."""
    flag, eq, inline = args[i].partition("=")
    if flag != name:
        return None
    if eq:
        return flag, [inline], i + 1
    if name == _MAX_FLAG:
        return flag, list(args[i + 1:i + 2]), i + 2
    j = i + 1
    while j < len(args) and not args[j].startswith("-"):
        j += 1
    return flag, list(args[i + 1:j]), j


def capture_ask(extra_args: Sequence[str]) -> CaptureAsk:
    """The capture sizes extra_args ask for (a repeated flag: the last one, as argparse takes it)."""
    args = list(extra_args)
    flag_max: int | None = None
    flag_sizes: tuple[int, ...] | None = None
    for i in range(len(args)):
        for name in (_MAX_FLAG, _SIZES_FLAG):
            found = _flag_values(args, i, name)
            got = _ints(found[1]) if found else None
            if got and name == _MAX_FLAG:
                flag_max = got[0]
            elif got:
                flag_sizes = tuple(got)
    cc = compilation_config(args)
    return merged_ask(flag_max, flag_sizes, cc[2] if cc is not None else None)


def merged_ask(flag_max: int | None, flag_sizes: Sequence[int] | None, config: Any) -> CaptureAsk:
    """The flags' values merged with a parsed compilation config, as EngineArgs merges them."""
    conf_max: int | None = None
    conf_sizes: tuple[int, ...] | None = None
    if isinstance(config, dict):
        if isinstance(config.get(_MAX_KEY), int):
            conf_max = config[_MAX_KEY]
        if isinstance(config.get(_SIZES_KEY), list):
            conf_sizes = tuple(n for n in config[_SIZES_KEY] if isinstance(n, int))
    flag_sizes = tuple(flag_sizes) if flag_sizes is not None else None
    both = tuple(key for key, flag, conf in ((_SIZES_KEY, flag_sizes, conf_sizes), (_MAX_KEY, flag_max, conf_max))
                 if flag is not None and conf is not None)
    return CaptureAsk(max_size=flag_max if flag_max is not None else conf_max,
                      sizes=flag_sizes if flag_sizes is not None else conf_sizes,
                      max_in_config=flag_max is None and conf_max is not None,
                      sizes_in_config=flag_sizes is None and conf_sizes is not None, both_given=both)


def _with_flag(args: Sequence[str], name: str, values: Sequence[int]) -> list[str]:
    """args with every `name` flag and its values replaced by one at the end."""
    out: list[str] = []
    i = 0
    while i < len(args):
        found = _flag_values(args, i, name)
        if found:
            i = found[2]
            continue
        out.append(args[i])
        i += 1
    return [*out, name, *(str(v) for v in values)]


def _set(args: Sequence[str], key: str, values: list[int], in_config: bool) -> list[str] | None:
    """args with `key` set to `values` where the operator gave it: the compilation config's key
    (None when that config is not a JSON object) or its flag."""
    if in_config:
        return with_compilation_config(args, {key: values if key == _SIZES_KEY else values[0]})
    return _with_flag(args, _flag_of(key), values)


def covering_args(extra_args: Sequence[str], size: int,
                  max_num_batched_tokens: int) -> tuple[list[str], str] | None:
    """extra_args whose CUDA graphs reach `size` tokens, where the operator asks for their sizes
    (the flags or the compilation config), and the words that say the change; None when vLLM
    refuses the arguments as they are or the compilation config is not a JSON object."""
    ask = capture_ask(extra_args)
    if ask.vllm_errors(max_num_batched_tokens):
        return None
    if ask.sizes is not None:
        args = _set(extra_args, _SIZES_KEY, sorted({*ask.sizes, size}), ask.sizes_in_config)
        if args is not None and ask.max_size is not None:   # each where it was given
            args = _set(args, _MAX_KEY, [size], ask.max_in_config)
        words = f"adding {size:,} to the CUDA-graph capture sizes in extra_args"
    else:
        args = _set(extra_args, _MAX_KEY, [size], ask.max_in_config)
        words = (f"the compilation config's {_MAX_KEY} {size} in extra_args" if ask.max_in_config
                 else f"extra_args {_MAX_FLAG} {size}")
    return (args, words) if args is not None else None


def graph_factor(sizes: Sequence[int]) -> float:
    """CUDA-graph memory against the default capture's, for these sizes."""
    return 1.0 + GROWTH_PER_SIZE_ABOVE_DEFAULT * sum(1 for n in sizes if n > DEFAULT_MAX_SIZE)
