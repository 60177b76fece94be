"""Run one Engine over N ranks: spawned processes, one per GPU (NCCL) or per CPU slice (gloo).

The parent sends every rank the same command through its own queue; all ranks run it (they
meet in collectives) and each answers on a shared result queue: rank 0 with the payload, the
others with an acknowledgement. The parent never blocks without a deadline: it polls the
queue, checks that every rank is alive, and when one rank fails while the others are stuck in
a collective waiting for it, it stops them all and raises with the failing rank's traceback.

Energy windows cross the boundary the other way: a command given a window (`call(...,
window=w)`) hands every rank a stand-in whose begin() and end() wait for all ranks (a
barrier), then have rank 0 ask the parent to call `w.begin()` / `w.end()` (the meter there
reads every rank's GPU) and go on once it has: the window brackets exactly the ranks' timed
work, summed over their GPUs. Out of memory in a rank reaches the parent typed: DoesNotFit
while preparing a model, DeviceOutOfMemory while running one.
"""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from datetime import timedelta
from typing import Any

import torch.multiprocessing as mp

from infermeter.engine.ranks import GRACE_S, rank_error
from infermeter.errors import UserError, is_oom, oom_line

START_TIMEOUT_S = 300.0
RELAYED_WINDOW = "infermeter-relayed-window"  # stands for the parent's window in a command


class _RankWindow:
    """The parent's energy window as a rank sees it: every edge waits for all ranks (a
    barrier), rank 0 has the parent open or close the window, and all go on once it has."""

    def __init__(self, rank: int, comm: Any, commands: Any, results: Any) -> None:
        self.rank, self.comm, self.commands, self.results = rank, comm, commands, results

    def _edge(self, what: str) -> None:
        self.comm.barrier()
        if self.rank == 0:
            self.results.put((0, "window", what))
            self.commands.get()  # the parent's acknowledgement: the edge is read
        self.comm.barrier()

    def begin(self) -> None:
        self._edge("begin")

    def end(self) -> None:
        self._edge("end")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(
    rank: int, world: int, port: int, device_type: str, commands: Any, results: Any, first: int
) -> None:
    """A rank's loop: build the process group, then run commands until "close"."""
    import torch
    import torch.distributed as dist

    from infermeter.engine.generate import Engine
    from infermeter.engine.parallel import Comm

    try:
        if device_type == "cuda":
            torch.cuda.set_device(first + rank)
        else:  # share the cores instead of every rank spinning up all of them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        dist.init_process_group(
            "nccl" if device_type == "cuda" else "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(minutes=10),  # a stuck collective errors out eventually
        )
        comm = Comm(dist.group.WORLD)
    except Exception:
        results.put((rank, "error", traceback.format_exc()))
        return
    results.put((rank, "ok", None))
    engine: Engine | None = None
    while True:
        method, args, kwargs = commands.get()
        if method == "close":
            break
        if kwargs.get("window") == RELAYED_WINDOW:
            kwargs["window"] = _RankWindow(rank, comm, commands, results)
        try:
            if method == "prepare":
                engine = None  # free the old model before building the next
                spec, options = args
                device = f"cuda:{first + rank}" if device_type == "cuda" else "cpu"
                dtype = getattr(torch, options.pop("dtype"))
                engine = Engine(spec, device=device, dtype=dtype, comm=comm, **options)
                payload: Any = engine.describe()
            else:
                if engine is None:
                    raise UserError("engine: prepare() a spec first")
                payload = getattr(engine, method)(*args, **kwargs)
            results.put((rank, "ok", payload if rank == 0 else None))
        except UserError as error:
            results.put((rank, "user", str(error)))
        except Exception as error:
            if not is_oom(error):
                results.put((rank, "error", traceback.format_exc()))
            elif method == "prepare":
                engine = None
                spec = args[0]
                results.put(
                    (rank, "does_not_fit", f"{spec.name}: does not fit on {world} "
                     f"{device_type} ranks ({oom_line(error)}); try more GPUs (--tp, --shards) "
                     "or a smaller --dtype")
                )  # fmt: skip
            else:
                results.put((rank, "oom", f"engine rank {rank}: {oom_line(error)}"))
    dist.destroy_process_group()


class RankGroup:
    """`world` engine processes; `call` runs a method on all of them and returns rank 0's."""

    def __init__(self, world: int, device_type: str, first: int = 0) -> None:
        """`world` ranks on `device_type` ("cuda": GPUs first .. first + world - 1, as CUDA
        numbers them in this process; "cpu": gloo)."""
        ctx = mp.get_context("spawn")
        self.world = world
        self.results: Any = ctx.Queue()
        self.commands: list[Any] = [ctx.Queue() for _ in range(world)]
        port = _free_port()
        self.procs = [
            ctx.Process(
                target=_worker,
                args=(rank, world, port, device_type, self.commands[rank], self.results, first),
                daemon=True,  # never outlive the parent
                name=f"infermeter-engine-rank{rank}",
            )
            for rank in range(world)
        ]
        for proc in self.procs:
            proc.start()
        self.alive = True
        self._collect("start", START_TIMEOUT_S)

    def call(
        self, method: str, *args: Any, timeout_s: float, window: Any = None, **kwargs: Any
    ) -> Any:
        """Run `method` on every rank and return rank 0's answer; `window` (begin()/end(),
        e.g. infermeter.measure.window.Window) is opened and closed here when the ranks reach its
        edges. Raises what a rank raised: UserError, DoesNotFit, DeviceOutOfMemory, or
        RuntimeError with its traceback (TimeoutError past `timeout_s`)."""
        if not self.alive:
            raise RuntimeError("engine ranks were stopped after an earlier failure; prepare again")
        if window is not None:
            kwargs["window"] = RELAYED_WINDOW
        for commands in self.commands:
            commands.put((method, args, kwargs))
        return self._collect(method, timeout_s, window)

    def _edge(self, window: Any, what: str) -> None:
        """Open or close the parent's window for the ranks, then let rank 0 go on."""
        try:
            getattr(window, what)()
        except BaseException:
            self.kill()  # rank 0 waits for an answer that will not come
            raise
        self.commands[0].put(("window", (what,), {}))

    def _collect(self, what: str, timeout_s: float, window: Any = None) -> Any:
        replies: dict[int, tuple[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        give_up: float | None = None  # set once some rank has failed
        while len(replies) < self.world:
            try:
                rank, status, payload = self.results.get(timeout=0.5)
                if status == "window":
                    self._edge(window, payload)
                    continue
                replies[rank] = (status, payload)
                if status != "ok" and give_up is None:
                    give_up = time.monotonic() + GRACE_S
                continue
            except queue.Empty:
                pass
            now = time.monotonic()
            dead = [r for r, p in enumerate(self.procs) if r not in replies and not p.is_alive()]
            if dead:
                codes = {r: self.procs[r].exitcode for r in dead}
                self.kill()
                raise RuntimeError(f"engine rank(s) died during {what} (exit codes {codes})")
            if give_up is not None and now > give_up:
                break
            if now > deadline:
                self.kill()
                raise TimeoutError(f"engine ranks did not finish {what} within {timeout_s:.0f} s")
        complete = len(replies) == self.world
        for rank in sorted(replies):
            status, payload = replies[rank]
            if status == "ok":
                continue
            if not complete:
                self.kill()  # the others are stuck in a collective: the group is unusable
            raise rank_error(rank, status, payload, what)
        return replies[0][1]

    def kill(self) -> None:
        """Stop every rank now: terminate, then kill one that is still alive after 10 s. The
        group cannot be used afterwards."""
        self.alive = False
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)

    def close(self, timeout_s: float = 30.0) -> None:
        """Ask every rank to close and wait up to `timeout_s` seconds in all, then kill what is
        left and close the queues."""
        if self.alive:
            for commands in self.commands:
                commands.put(("close", (), {}))
            deadline = time.monotonic() + timeout_s
            for proc in self.procs:
                proc.join(timeout=max(0.1, deadline - time.monotonic()))
        self.kill()
        for q in [self.results, *self.commands]:
            q.close()
            q.cancel_join_thread()
