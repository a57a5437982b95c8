"""CPU per write and per read of a batched stream's payloads: distributed's TCP comm
against fastworker.wire, on one real loopback TCP connection per side.

    python benchmarks/bench_wire.py [--n 5000] [--repeats 5]

Each payload shape is written ``n`` times through each path (the comm's ``write`` /
:func:`fastworker.wire.write`) and read back through each path (the comm's
``read`` / :func:`fastworker.wire.read`), the two alternating per repeat; the
figures are the process's CPU time per write and per read (both ends run in this
process), medians of the repeats. The bytes are the same either way
(tests/test_wire.py).
"""
from __future__ import annotations

import argparse
import asyncio
import operator
import statistics
import sys
import time

from distributed.comm import connect, listen
from distributed.protocol.serialize import ToPickle

from fastworker import wire


SHAPES = {
    "task-finished (worker -> scheduler)": [
        {"op": "task-finished", "key": "pos-3b2f1c0e-17", "nbytes": 28,
         "type": b"\x80\x05\x95\x0f\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x03int\x94\x93\x94.",
         "typename": "int", "metadata": {}, "thread": 140234, "startstops": (
             {"action": "compute", "start": 1733300000.25, "stop": 1733300000.2501},),
         "stimulus_id": "task-finished-1733300000.2502"},
    ],
    "compute-task (scheduler -> worker)": [
        {"op": "compute-task", "key": "pos-3b2f1c0e-17", "priority": (0, 1, 17),
         "stimulus_id": "task-finished-1733300000.2502", "who_has": {}, "nbytes": {},
         "run_spec": ToPickle((operator.add, 17, 1)), "duration": 0.5, "resource_restrictions": {},
         "actor": False, "annotations": {}, "span_id": "a3c0"},
    ],
    "free-keys x4": [
        {"op": "free-keys", "keys": [f"pos-3b2f1c0e-{i}"], "stimulus_id": f"s-{i}"}
        for i in range(4)
    ],
}


async def _pair():
    accepted: asyncio.Queue = asyncio.Queue()
    done = asyncio.Event()

    async def handle(comm):
        await accepted.put(comm)
        await done.wait()

    listener = listen("tcp://127.0.0.1:0", handle)
    await listener.start()
    sender = await connect(listener.contact_address)
    return listener, done, sender, await accepted.get()


async def _measure(n: int, repeats: int, shape) -> dict:
    listener, done, a, b = await _pair()
    out: dict = {"stock write": [], "wire write": [], "stock read": [], "wire read": []}
    try:
        for r in range(repeats):
            order = ("stock", "wire") if r % 2 == 0 else ("wire", "stock")
            for path in order:
                t0 = time.process_time()
                for _ in range(n):
                    if path == "wire":
                        if wire.write(a, shape) is None:
                            # (a function defined in __main__, say: distributed's
                            # pickle goes on to cloudpickle, and so does the comm)
                            raise RuntimeError("the wire leaves this payload to the comm")
                    else:
                        await a.write(shape, on_error="raise")
                    await asyncio.sleep(0)  # let Tornado drain, as a stream's loop does
                out[f"{path} write"].append((time.process_time() - t0) / n)
                # read back what was written, through one path per repeat
                t0 = time.process_time()
                for _ in range(n):
                    if path == "wire":
                        await wire.read(b)
                    else:
                        await b.read()
                out[f"{path} read"].append((time.process_time() - t0) / n)
    finally:
        done.set()
        await a.close()
        await b.close()
        listener.stop()
    return {k: statistics.median(v) * 1e6 for k, v in out.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print("| payload | comm write µs | wire write µs | ratio | comm read µs | wire read µs | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, shape in SHAPES.items():
        m = asyncio.run(_measure(args.n, args.repeats, shape))
        print(f"| {name} | {m['stock write']:.1f} | {m['wire write']:.1f} | "
              f"{m['stock write'] / m['wire write']:.2f}x | {m['stock read']:.1f} | "
              f"{m['wire read']:.1f} | {m['stock read'] / m['wire read']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
