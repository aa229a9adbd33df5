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

from llm_supervisor.vllm.engine_args import compilation_config

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


def capture_flags(extra_args: Sequence[str]) -> tuple[int | None, tuple[int, ...]]:
    """(the largest size asked for, the sizes asked for) from `--max-cudagraph-capture-size`,
    `--cudagraph-capture-sizes` and a JSON `--compilation-config`; the last one given wins."""
    args = list(extra_args)
    max_size: int | None = None
    sizes: tuple[int, ...] = ()
    cc = compilation_config(args)
    if cc is not None and isinstance(cc[2], dict):
        value = cc[2]
        if isinstance(value.get("max_cudagraph_capture_size"), int):
            max_size = value["max_cudagraph_capture_size"]
        if isinstance(value.get("cudagraph_capture_sizes"), list):
            sizes = tuple(n for n in value["cudagraph_capture_sizes"] if isinstance(n, int))
    for i, arg in enumerate(args):
        name, eq, inline = arg.partition("=")
        if name == "--max-cudagraph-capture-size":
            got = _ints([inline] if eq else args[i + 1:i + 2])
            max_size = got[0] if got else max_size
        elif name == "--cudagraph-capture-sizes":
            values = [inline] if eq else []
            for more in args[i + 1:]:
                if more.startswith("-"):
                    break
                values.append(more)
            got = _ints(values)
            sizes = tuple(got) if got else sizes
    return max_size, sizes


def graph_factor(sizes: Sequence[int]) -> float:
    """CUDA-graph memory against the default capture's, for these sizes."""
    return 1.0 + GROWTH_PER_SIZE_ABOVE_DEFAULT * sum(1 for n in sizes if n > DEFAULT_MAX_SIZE)
