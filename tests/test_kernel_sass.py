"""The MXFP4 kernels as the GPU runs them: compiled for sm_90 (Hopper) on this machine, no GPU needed.

A Hopper wgmma reads its register operand after it issues; writing that register before a wait covers the wgmma is
undefined, and Triton 3.6 let it happen: ptxas wrote the next step's decoded codes into registers an in-flight wgmma
still read (infinities at 512 rows per expert on the H100, docs/BENCHMARKS.md, session 17). The kernels now wait for
each step's wgmmas (_mxfp4_matmul._settled). These tests compile every one-warpgroup tile with the Triton installed
here and count such writes in the main loop (bench/sass_loop.py `register_races`), and check that count on loops
Triton 3.6 compiled, recorded in tests/sass/: the one that gave infinities, and the same tile with the wait.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from benches import bench

from oss_grpo.kernels.mxfp4_matmul import FORWARD_TILES, TRANSPOSED_TILES, Tiles

REPO = Path(__file__).resolve().parents[1]
sass_loop = bench("sass_loop")

WGMMA_TILES = [("_mxfp4_wx_kernel", tiles) for _, tiles in FORWARD_TILES if tiles.num_warps >= 4] + [
    ("_mxfp4_wx_transposed_kernel", tiles) for _, tiles in TRANSPOSED_TILES if tiles.num_warps >= 4
]
"""Tiles of four warps or more: their dots are wgmmas (two-warp tiles run mma.sync, which reads its operands as it
issues)."""


def compiled_loop_races(kernel: str, tiles: Tiles, scale_words: bool) -> list[int]:
    """Register races per loop of `kernel` compiled for sm_90 in a process of its own (conftest.py sets
    TRITON_INTERPRET for the tests without a GPU, under which Triton builds interpreter functions, not cubins)."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    tile = ",".join(str(v) for v in (tiles.block_m, tiles.block_n, tiles.block_k, tiles.num_warps, tiles.num_stages))
    command = [sys.executable, str(REPO / "bench" / "sass_loop.py"), kernel, tile]
    flags = ["--swizzled"] * tiles.swizzled + ["--weights-right"] * tiles.weights_right + ["--scale-words"] * scale_words
    out = subprocess.run(command + flags, env=env, capture_output=True, text=True, check=True).stdout
    return [int(n) for n in re.findall(r"'register races': (\d+)", out)]


def test_every_one_warpgroup_tile_is_covered() -> None:
    assert {kernel for kernel, _ in WGMMA_TILES} == {"_mxfp4_wx_kernel", "_mxfp4_wx_transposed_kernel"}


@pytest.mark.parametrize("scale_words", [False, True], ids=["byte_scales", "word_scales"])
@pytest.mark.parametrize("kernel, tiles", WGMMA_TILES,
                         ids=[f"{k}-{t.block_m}x{t.block_n}{'-right' * t.weights_right}"
                              for k, t in WGMMA_TILES])
def test_no_wgmma_operand_is_rewritten_while_in_flight(kernel: str, tiles: Tiles, scale_words: bool) -> None:
    races = compiled_loop_races(kernel, tiles, scale_words)
    assert races and all(n == 0 for n in races), races


def test_the_race_count_finds_the_loop_that_gave_infinities() -> None:
    """Triton 3.6's loop of the (128, 128, 64, 8, 4) forward without the wait: wgmmas left in flight across the back
    edge read R88-R91 while the next step writes them. With the wait, none."""
    in_flight = (REPO / "tests" / "sass" / "forward_in_flight_triton36.sass").read_text().splitlines()
    settled = (REPO / "tests" / "sass" / "forward_settled_triton36.sass").read_text().splitlines()
    races = sass_loop.register_races(in_flight)
    assert races and any(re.search(r"\bR8[89]\b|\bR9[01]\b", line.split(";")[0].split()[2]) for line in races)
    assert sass_loop.register_races(settled) == []
