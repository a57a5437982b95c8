"""Instructions per task inside ``handle_stimulus``, stock against fastworker, under callgrind.

Wall-clock ratios on a shared machine move with the load; instruction counts do not.
This script runs the bodies of ``bench_lifecycle`` and ``bench_gather`` once per
implementation under ``valgrind --tool=callgrind`` and counts only the instructions
executed inside the timed ``handle_stimulus`` calls: the driver calls each of them
through ``operator.call``, which nothing else in the process calls, and callgrind is
told to collect only inside that C function (``--toggle-collect=_operator_call``).
Setup, answering instructions and the checks are not counted.

Usage (from the repository root, after ``make build``)::

    .venv/bin/python benchmarks/callgrind_ratios.py                    # every scenario, N=1,000
    .venv/bin/python benchmarks/callgrind_ratios.py --sizes 1000,10000
    .venv/bin/python benchmarks/callgrind_ratios.py --only fill --only gather
    .venv/bin/python benchmarks/callgrind_ratios.py --impl fastworker  # one side only

The shapes:

- the lifecycle scenarios of ``bench_lifecycle`` (except "independent, batched":
  one ``handle_stimulus`` call for everything) at each N, instructions per task;
- ``gather``: one ``AcquireReplicasEvent`` of N keys held by 1-3 of 50 peers on a
  running worker (``bench_gather.gather``), instructions per task;
- ``fill``: the same event on a paused worker, instructions per task;
- ``unpause``: 2,000 alternating pause/unpause stimuli with all of 50 peers in
  flight and 5,000 keys waiting (``bench_gather.unpause_nothing``), per stimulus.

Under valgrind a stock run at N=100,000 takes tens of minutes; fastworker's is
quicker. Needs ``valgrind`` on PATH. CPython >= 3.11 (``operator.call``).
"""
from __future__ import annotations

import argparse
import operator
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

LIFECYCLES = ("independent", "tree (fan-in 8)", "chain", "remote deps (50 peers)",
              "acquire replicas", "deep ready queue")
GATHER = ("gather", "fill", "unpause")
GATHER_PEERS = 50
UNPAUSE_STIMULI = 2_000


def _drive(impl: str, name: str, n: int) -> int:
    """Run one shape once with ``operator.call`` around each timed call; return its unit count."""
    import bench_gather as bg
    import bench_lifecycle as bl

    cls = bl.IMPLEMENTATIONS[impl]
    if name in bl.SCENARIOS:
        def send(self, ev):
            instructions = operator.call(self.ws.handle_stimulus, ev)
            self.pending.extend(i for i in instructions if isinstance(i, (bl.Execute, bl.GatherDep)))
        bl.Driver.send = send
        built = bl.SCENARIOS[name](cls, n)
        if isinstance(built, tuple):
            built, n = built
        built()
        return n
    addresses = bg.peers(GATHER_PEERS)
    if name == "unpause":
        first = bg.AcquireReplicasEvent(
            who_has={f"first-{i}": [a] for i, a in enumerate(addresses)},
            nbytes={f"first-{i}": 16 for i in range(GATHER_PEERS)}, stimulus_id="first",
        )
        more = bg.acquire([f"wait-{i}" for i in range(bg.UNPAUSE_WAITING)], addresses,
                          seed=GATHER_PEERS, sid="more")
        ws = bg._state(cls)
        ws.handle_stimulus(first)
        ws.handle_stimulus(more)
        assert len(ws.in_flight_workers) == GATHER_PEERS
        for i in range(UNPAUSE_STIMULI):
            ev = (bg.PauseEvent(stimulus_id=f"pause-{i}") if i % 2 == 0
                  else bg.UnpauseEvent(stimulus_id=f"unpause-{i}"))
            assert not operator.call(ws.handle_stimulus, ev)
        return UNPAUSE_STIMULI
    ev = bg.acquire([f"rep-{i}" for i in range(n)], addresses, seed=n + GATHER_PEERS, sid="acquire")
    ws = bg._state(cls)
    if name == "fill":
        ws.handle_stimulus(bg.PauseEvent(stimulus_id="pause"))
    instructions = operator.call(ws.handle_stimulus, ev)
    gathered = sum(len(i.to_gather) for i in instructions if isinstance(i, bg.GatherDep))
    assert gathered == (0 if name == "fill" else n), gathered
    return n


def count(impl: str, name: str, n: int) -> tuple[int, int]:
    """(instructions, units) of one shape under callgrind."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           "--toggle-collect=_operator_call",
           sys.executable, os.path.abspath(__file__), "--drive", impl, name, str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    text = out.stdout + out.stderr
    collected = re.search(r"Collected : (\d+)", text)
    units = re.search(r"^UNITS (\d+)$", text, re.M)
    if not collected or not units:
        raise RuntimeError(f"no count from callgrind:\n{text[-2000:]}")
    return int(collected.group(1)), int(units.group(1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000", help="lifecycle/gather/fill N, comma-separated")
    parser.add_argument("--only", action="append", help="shapes whose name contains this")
    parser.add_argument("--impl", choices=("stock", "fastworker"), action="append")
    parser.add_argument("--drive", nargs=3, metavar=("IMPL", "SHAPE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        impl, name, n = args.drive
        print(f"UNITS {_drive(impl, name, int(n))}", flush=True)
        return
    impls = args.impl or ["stock", "fastworker"]
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    shapes = [(name, n) for name in LIFECYCLES + GATHER for n in (sizes if name != "unpause" else [0])]
    if args.only:
        shapes = [(name, n) for name, n in shapes if any(o in name for o in args.only)]
    print("| shape | N | " + " | ".join(f"{i} instr/unit" for i in impls)
          + (" | ratio |" if len(impls) == 2 else " |"))
    print("|---" * (2 + len(impls) + (len(impls) == 2)) + "|")
    for name, n in shapes:
        per = {}
        for impl in impls:
            instr, units = count(impl, name, n)
            per[impl] = instr / units
        cells = " | ".join(f"{per[i]:,.0f}" for i in impls)
        ratio = f" | {per['stock'] / per['fastworker']:.2f}x |" if len(impls) == 2 else " |"
        shown = f"{n:,}" if name != "unpause" else f"{UNPAUSE_STIMULI:,} stimuli"
        print(f"| {name} | {shown} | {cells}{ratio}", flush=True)


if __name__ == "__main__":
    main()
