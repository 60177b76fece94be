"""Engine ranks started by a launcher: torchrun (one host or many) or srun under Slurm.

Every process the launcher starts runs the same command (`infermeter profile ... --tp N`,
`infermeter energy ... --shards N`). Rank 0 drives: it runs the experiment, holds engine rank 0
and writes the store; every other rank only serves (`serve`): it waits for rank 0's commands,
runs them on its engine rank (they meet in collectives), and answers. Commands and answers
travel through the launcher's key-value store (torchrun's agent store, or a TCPStore that rank
0 hosts under srun, at MASTER_ADDR:MASTER_PORT), so rank 0 polls for answers with a deadline
and never blocks on a rank that is gone: every rank bumps a heartbeat counter there twice a
second, and a rank whose counter stops (killed, its node lost) is named in the error that ends
the run (RankLost); the run is stored and resumes when the same command is run again. While a
rank is inside a collective that no error will end (a peer frozen, or its node gone without
closing its connections), a watchdog thread reads the same counters and ends the process with
the same line (Cluster.watch).

The tensor-parallel group itself is torch.distributed's (NCCL on GPUs, gloo on CPUs) over all
ranks of all nodes, with a gloo group beside it for energy-window edges: each node's first
rank meters its own GPUs and rank 0 gathers the windows (infermeter.measure.cluster). Each rank
uses the GPU of its LOCAL_RANK. Without a launcher nothing here runs: the engine spawns its
ranks itself on one host (infermeter.engine.launch), as before.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pickle
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from infermeter.engine.ranks import GRACE_S, LaunchEnv, RankLost, launch_env, rank_error
from infermeter.errors import UserError, is_oom, oom_line

# Re-exported: what a launched command needs lives in infermeter.engine.launcher (no torch there).
__all__ = ["Cluster", "LaunchEnv", "LaunchedGroup", "RankLost", "join", "launch_env", "serve"]

HEARTBEAT_S = 0.5  # each rank bumps its counter this often
DEAD_AFTER_S = 6.0  # a counter that has not moved for this long belongs to a lost rank
WAIT_S = 1.0  # rank 0 waits this long for answers between looks at the heartbeats
START_TIMEOUT_S = 300.0  # ranks wait this long for each other to start
EXIT_LOST = 3  # a follower's exit status when rank 0 is lost
STORE_TIMEOUT_S = 30.0  # a store call of the heartbeat's and watchdogs' own connections
# How long the main thread waits for a store-calling thread to end before the process may
# exit: a thread still inside a TCPStore call when Python finalizes aborts the whole process
# ("terminate called without an active exception", SIGABRT) as it retakes the GIL. A live
# store answers in milliseconds and a closed one at once, so the wait is at most a heartbeat;
# one that stopped answering (its host frozen) only at the call's timeout, which the wait
# outlasts.
JOIN_S = STORE_TIMEOUT_S + 5.0


class Cluster:
    """This process's link to the other ranks: the key-value store, heartbeats, the command
    channel, and (once rank 0 starts it) the process groups. One per process: `join()`."""

    def __init__(self, env: LaunchEnv, timeout_s: float = START_TIMEOUT_S) -> None:
        import torch.distributed as dist

        self.env = env
        self.timeout_s = timeout_s
        self.seq = 0
        self.group: Any = None  # the tensor-parallel group (all ranks)
        self.ctrl: Any = None  # gloo group for window edges (the same as group on CPUs)
        self.device_type: str | None = None
        self.in_call = False  # rank 0: inside an engine call (window edges are collectives)
        self.closed = False
        try:
            raw = dist.TCPStore(
                env.master_addr,
                env.master_port,
                is_master=env.rank == 0 and not env.agent_store,
                timeout=timedelta(seconds=timeout_s),
                wait_for_workers=False,
            )
        except Exception as error:  # the store is unreachable: name the address
            raise UserError(
                f"rank {env.rank} cannot reach the launcher's store at {env.master_addr}:"
                f"{env.master_port} ({error}); check MASTER_ADDR/MASTER_PORT and the firewall"
            ) from error
        self._raw = raw
        self.kv = dist.PrefixStore(f"infermeter/{env.restart}/", raw)
        self.info = {
            "rank": env.rank,
            "local_rank": env.local_rank,
            "node": env.node,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        self.kv.set(f"info/{env.rank}", json.dumps(self.info))
        self._watch_lock = threading.Lock()
        self._watch_kv: Any = None
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="infermeter-heartbeat")
        self._beat.daemon = True
        self._beat.start()

    # ---- liveness ------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        import torch.distributed as dist

        env = self.env
        try:  # a connection of its own: the main thread may be inside a store call
            raw = dist.TCPStore(
                env.master_addr, env.master_port, is_master=False,
                timeout=timedelta(seconds=STORE_TIMEOUT_S), wait_for_workers=False,
            )  # fmt: skip
            kv = dist.PrefixStore(f"infermeter/{env.restart}/", raw)
            while not self._stop.wait(HEARTBEAT_S):
                kv.add(f"hb/{env.rank}", 1)
        except Exception:  # the store went away (rank 0's host): the main thread will see it
            return

    def beats(self) -> dict[int, int]:
        """Every rank's heartbeat count now."""
        return {r: int(self.kv.add(f"hb/{r}", 0)) for r in range(self.env.world)}

    def lost_ranks(
        self, among: list[int] | None = None, watch_s: float = DEAD_AFTER_S
    ) -> list[int]:
        """The ranks (of `among`, default all others) whose heartbeat does not move in
        `watch_s` seconds."""
        among = [r for r in (among or range(self.env.world)) if r != self.env.rank]
        before = self.beats()
        deadline = time.monotonic() + watch_s
        moving: set[int] = set()
        while time.monotonic() < deadline and len(moving) < len(among):
            time.sleep(HEARTBEAT_S)
            now = self.beats()
            moving |= {r for r in among if now[r] != before[r]}
        return [r for r in among if r not in moving]

    def rank_info(self, rank: int) -> dict[str, Any]:
        """What `rank` recorded when it joined (rank, local_rank, node, host, pid); waits
        for it to join."""
        return json.loads(self.kv.get(f"info/{rank}"))

    def name(self, rank: int) -> str:
        """'rank R (node N of M, host H, pid P)' from what the rank recorded when it joined."""
        try:
            info = json.loads(self.kv.get(f"info/{rank}"))
        except Exception:
            return f"rank {rank}"
        return (
            f"rank {rank} (node {info['node']} of {self.env.nodes}, host {info['host']}, "
            f"pid {info['pid']})"
        )

    # ---- the command channel -------------------------------------------------------------
    def post(self, command: tuple[str, tuple, dict]) -> int:
        """Rank 0: send `command` to every other rank; returns its number."""
        self.seq += 1
        self.kv.set(f"cmd/{self.seq}", pickle.dumps(command))
        return self.seq

    def answer(self, seq: int, reply: tuple[str, Any]) -> None:
        """A follower: its answer to command `seq` (an error if the answer cannot travel)."""
        try:
            data = pickle.dumps(reply)
        except Exception:
            data = pickle.dumps(("error", traceback.format_exc()))
        self.kv.set(f"reply/{seq}/{self.env.rank}", data)

    def next_command(self) -> tuple[str, tuple, dict]:
        """A follower: wait for rank 0's next command; RankLost once rank 0's heartbeat stops."""
        self.seq += 1
        key = f"cmd/{self.seq}"
        last, still = -1, time.monotonic()
        while True:
            try:
                self.kv.wait([key], timedelta(seconds=1))
                return pickle.loads(self.kv.get(key))
            except Exception as error:
                if "timeout" not in str(error).lower():
                    raise RankLost(
                        f"rank {self.env.rank}: rank 0's store is gone ({error})"
                    ) from error
            beat = int(self.kv.add("hb/0", 0))
            if beat != last:
                last, still = beat, time.monotonic()
            elif time.monotonic() - still > DEAD_AFTER_S:
                raise RankLost(f"rank {self.env.rank}: {self.name(0)} stopped; ending too")

    def collect(self, seq: int, what: str, timeout_s: float) -> dict[int, tuple[str, Any]]:
        """Rank 0: every other rank's answer to command `seq`, as soon as they are all there.
        Raises RankLost naming a rank whose heartbeat stopped, or one that has not answered
        within `timeout_s`."""
        others = [r for r in range(self.env.world) if r != self.env.rank]
        keys = {r: f"reply/{seq}/{r}" for r in others}
        replies: dict[int, tuple[str, Any]] = {}
        start = time.monotonic()
        beats: dict[int, int] | None = None  # read only once an answer is slow to come
        still = start
        while len(replies) < len(others):
            missing = [r for r in others if r not in replies]
            try:
                self.kv.wait([keys[r] for r in missing], timedelta(seconds=WAIT_S))
                arrived = missing
            except Exception as error:  # a timeout: who answered, and is anyone silent?
                if "timeout" not in str(error).lower():
                    raise RankLost(f"the ranks' store is gone ({error}); {_RESUME}") from error
                arrived = [r for r in missing if self.kv.check([keys[r]])]
            for rank in arrived:
                replies[rank] = pickle.loads(self.kv.get(keys[rank]))
                self.kv.delete_key(keys[rank])
            now = time.monotonic()
            if len(replies) == len(others):
                break
            if now - start > timeout_s:
                late = [r for r in others if r not in replies]
                raise RankLost(
                    f"engine {', '.join(self.name(r) for r in late)} did not finish {what} "
                    f"within {timeout_s:.0f} s; {_RESUME}"
                )
            if beats is None or now - still > DEAD_AFTER_S:
                current = self.beats()
                if beats is not None:
                    dead = [r for r in others if r not in replies and current[r] == beats[r]]
                    if dead:
                        raise self.lost(dead, what)
                beats, still = current, now
        if seq > 1:
            self.kv.delete_key(f"cmd/{seq - 1}")
        return replies

    def lost(self, ranks: list[int], what: str) -> RankLost:
        """The RankLost error naming `ranks` (host and rank) whose heartbeat stopped during
        `what`."""
        return RankLost(
            f"engine {', '.join(self.name(r) for r in ranks)} died during {what} (its heartbeat "
            f"stopped); {_RESUME}"
        )

    @contextlib.contextmanager
    def watch(self, seq: int, what: str, timeout_s: float) -> Iterator[None]:
        """Around this rank's own part of command `seq`, which may block in a collective that
        no error will end (a rank frozen, or its node lost without closing its connections):
        a thread that, once a rank it waits for (rank 0: any that has not answered; a
        follower: rank 0) stops its heartbeat, or the command passes `timeout_s`, prints the
        line naming it and ends this process (EXIT_LOST). The store keeps what was measured."""
        stop = threading.Event()
        thread = threading.Thread(
            target=self._watch, args=(seq, what, timeout_s, stop), name="infermeter-watchdog"
        )
        thread.daemon = True
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(JOIN_S)  # it may be inside a store call: see JOIN_S

    def _watch(self, seq: int, what: str, timeout_s: float, stop: threading.Event) -> None:
        import torch.distributed as dist

        env = self.env
        try:
            with self._watch_lock:  # one connection for the watchdogs, made once
                if self._watch_kv is None:  # its own: the main thread may be in a store call
                    raw = dist.TCPStore(
                        env.master_addr, env.master_port, is_master=False,
                        timeout=timedelta(seconds=STORE_TIMEOUT_S), wait_for_workers=False,
                    )  # fmt: skip
                    self._watch_kv = dist.PrefixStore(f"infermeter/{env.restart}/", raw)
            kv = self._watch_kv
            watched = [r for r in range(env.world) if r != env.rank] if env.rank == 0 else [0]
            start = time.monotonic()
            last: dict[int, tuple[int, float]] = {r: (-1, start) for r in watched}
            while not stop.wait(HEARTBEAT_S):
                with self._watch_lock:  # a watchdog of the last call may still be looking
                    now = time.monotonic()
                    waiting = [
                        r for r in watched if env.rank != 0 or not kv.check([f"reply/{seq}/{r}"])
                    ]
                    for rank in waiting:
                        beat = int(kv.add(f"hb/{rank}", 0))
                        if beat != last[rank][0]:
                            last[rank] = (beat, now)
                stalled = [r for r in waiting if now - last[r][1] > DEAD_AFTER_S]
                if stalled:
                    line = str(self.lost(stalled, what)).replace("died", "died or froze", 1)
                elif now - start > timeout_s:
                    names = ", ".join(self.name(r) for r in waiting)
                    line = (
                        f"engine {names} did not finish {what} within {timeout_s:.0f} s; {_RESUME}"
                    )
                else:
                    continue
                if not stop.is_set():  # the call may have ended meanwhile
                    print(f"error: {line}", file=sys.stderr, flush=True)
                    os._exit(EXIT_LOST)
                return
        except Exception:  # the store went away: the main thread will see it
            return

    # ---- process groups -----------------------------------------------------------------
    def start_groups(self, device_type: str) -> None:
        """All ranks together: the tensor-parallel group (NCCL on GPUs, gloo on CPUs) and a
        gloo group for window edges. Once per process."""
        import torch
        import torch.distributed as dist

        if self.group is not None:
            if device_type != self.device_type:
                raise UserError(
                    f"the ranks already run on {self.device_type}; one launched job runs on "
                    "one kind of device"
                )
            return
        env = self.env
        if device_type == "cuda":
            torch.cuda.set_device(env.local_rank)
        else:  # the node's cores are shared between its ranks
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world))
        dist.init_process_group(
            "nccl" if device_type == "cuda" else "gloo",
            store=dist.PrefixStore(f"infermeter/{env.restart}/pg/", self._raw),
            rank=env.rank,
            world_size=env.world,
            timeout=timedelta(minutes=10),
        )
        self.group = dist.group.WORLD
        self.ctrl = dist.new_group(backend="gloo") if device_type == "cuda" else self.group
        self.device_type = device_type

    def barrier(self) -> None:
        """Wait for every rank on the gloo control group (torch.distributed.barrier)."""
        import torch.distributed as dist

        dist.barrier(group=self.ctrl)

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's `value` at rank 0 (None elsewhere), over the gloo group."""
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.env.world if self.env.rank == 0 else None
        dist.gather_object(value, out, dst=0, group=self.ctrl)
        return out

    def close(self) -> None:
        """Rank 0: tell every rank to exit (once); every rank: stop the heartbeat and wait
        for its thread (see JOIN_S), then end the process groups."""
        if self.closed:
            return
        self.closed = True
        if self.env.rank == 0:
            with contextlib.suppress(Exception):  # the store may be gone already
                self.post(("exit", (), {}))
        self._stop.set()
        self._beat.join(JOIN_S)
        if self.group is not None:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self.group = None


_RESUME = "everything measured is stored: rerun the same command on every node to resume"
_CLUSTER: Cluster | None = None


def join(env: LaunchEnv | None = None) -> Cluster | None:
    """This process's Cluster (made on the first call; rank 0 tells the others to exit when
    it exits); None without a launcher."""
    global _CLUSTER
    if _CLUSTER is not None:
        return _CLUSTER
    env = env or launch_env()
    if env is None:
        return None
    _CLUSTER = Cluster(env)
    if env.rank == 0:
        atexit.register(_CLUSTER.close)
    return _CLUSTER


def current() -> Cluster | None:
    """The Cluster this process joined, if any."""
    return _CLUSTER


class _FollowerWindow:
    """A follower's side of an energy window inside an engine call: the same barriers and
    gather as rank 0's (infermeter.measure.cluster), and the node's meter on a node's first
    rank."""

    def __init__(self, cluster: Cluster, meter: Any, name: str) -> None:
        self.cluster, self.meter, self.name = cluster, meter, name

    def begin(self, sync: Any = None) -> None:
        self.cluster.barrier()
        if self.meter is not None:
            self.meter.begin(self.name)
        self.cluster.barrier()

    def end(self, sync: Any = None) -> None:
        self.cluster.barrier()
        window = self.meter.end(self.name) if self.meter is not None else None
        self.cluster.gather(window)

    close = end


class DriverWindow:
    """Rank 0's side of an energy window inside an engine call. Every edge is a barrier of
    all ranks around the window's own edge; the end gathers the other nodes' windows and a
    node-spanning meter (infermeter.measure.cluster) adds them in."""

    def __init__(self, cluster: Cluster, window: Any) -> None:
        self.cluster, self.window = cluster, window

    def begin(self, sync: Any = None) -> None:
        """Open the window at a barrier of all ranks, so every rank's timed work starts after
        it."""
        self.cluster.barrier()
        self.window.begin()
        self.cluster.barrier()

    def end(self, sync: Any = None) -> None:
        """Close the window at a barrier of all ranks. The other ranks then gather the window;
        rank 0 joins that gather here unless its meter spans nodes, which gathers
        inside its own end."""
        self.cluster.barrier()
        self.window.end()
        if not getattr(getattr(self.window, "meter", None), "spans_nodes", False):
            self.cluster.gather(None)  # a node-spanning meter gathers inside its own end

    close = end


RELAYED = "infermeter-launched-window"


def _run(
    cluster: Cluster,
    state: dict[str, Any],
    method: str,
    args: tuple,
    kwargs: dict,
    meter_factory: Callable[[dict], Any] | None = None,
) -> tuple[str, Any]:
    """One command on this rank: (status, payload), as engine.launch's ranks answer."""
    import torch

    from infermeter.engine.generate import Engine
    from infermeter.engine.parallel import Comm

    env = cluster.env
    try:
        if method == "start":
            cluster.start_groups(args[0])
            return "ok", None
        if method == "meter":  # a node's meter, on the node's first rank
            what, *rest = args
            if not env.leader:
                return "ok", None
            if what == "open":
                options = dict(rest[0])
                if meter_factory is None:  # rank 0 meters through its ClusterMeter
                    raise RuntimeError("a node's meter is opened on a follower (serve)")
                state["meter"] = meter_factory(options)
                return "ok", None
            meter = state.get("meter")
            if meter is None:
                return "ok", None
            value = getattr(meter, what)(*rest)
            return "ok", None if value is meter else value  # start() returns the meter
        if method == "prepare":
            state["engine"] = None
            spec, options = args
            options = dict(options)
            device = f"cuda:{env.local_rank}" if cluster.device_type == "cuda" else "cpu"
            dtype = getattr(torch, options.pop("dtype"))
            engine = Engine(spec, device=device, dtype=dtype, comm=Comm(cluster.group), **options)
            state["engine"] = engine
            return "ok", engine.describe()
        if method == "drop":
            state["engine"] = None
            return "ok", None
        engine = state.get("engine")
        if engine is None:
            raise UserError("engine: prepare() a spec first")
        if kwargs.get("window") == RELAYED:
            kwargs = {**kwargs, "window": _FollowerWindow(cluster, state.get("meter"), "relayed")}
        return "ok", getattr(engine, method)(*args, **kwargs)
    except UserError as error:
        return "user", str(error)
    except Exception as error:
        if not is_oom(error):
            return "error", traceback.format_exc()
        if method == "prepare":
            state["engine"] = None
            return "does_not_fit", (
                f"{args[0].name}: does not fit on {env.world} ranks ({oom_line(error)}); try "
                "more GPUs (--tp, --shards) or a smaller --dtype"
            )
        return "oom", f"engine rank {env.rank}: {oom_line(error)}"


def serve(meter_factory: Callable[[dict], Any]) -> int:
    """A follower's life: run rank 0's commands until it says exit (returns 0) or is lost
    (returns EXIT_LOST, with a line on stderr). `meter_factory(options)` makes the node's
    meter on a node's first rank (infermeter.engine.launcher.node_meter: a Meter over the
    node's GPUs)."""
    cluster = join()
    if cluster is None or cluster.env.rank == 0:
        raise RuntimeError("serve() is for launched ranks other than rank 0")
    state: dict[str, Any] = {}
    try:
        while True:
            method, args, kwargs = cluster.next_command()
            if method == "exit":
                return 0
            if method in ("meter", "drop"):  # no collective: nothing to wait for
                reply = _run(cluster, state, method, args, kwargs, meter_factory)
            else:  # deadlines are rank 0's; a follower only watches rank 0's heartbeat
                with cluster.watch(cluster.seq, method, float("inf")):
                    reply = _run(cluster, state, method, args, kwargs, meter_factory)
            if reply[0] == "ok" and method != "meter":  # rank 0 answers for the engine
                reply = ("ok", None)
            cluster.answer(cluster.seq, reply)
    except RankLost as error:
        print(f"infermeter: {error}", file=sys.stderr, flush=True)
        return EXIT_LOST
    finally:
        if state.get("meter") is not None:
            state["meter"].stop()
        state.clear()
        cluster.close()


class LaunchedGroup:
    """engine.launch.RankGroup's interface over launched ranks: this process is rank 0 and
    runs its own engine rank between posting a command and collecting the others' answers."""

    def __init__(self, cluster: Cluster, device_type: str) -> None:
        self.cluster = cluster
        self.world = cluster.env.world
        self.state: dict[str, Any] = {}
        self.alive = True
        self._roundtrip("start", (device_type,), {}, START_TIMEOUT_S)

    def call(
        self, method: str, *args: Any, timeout_s: float, window: Any = None, **kwargs: Any
    ) -> Any:
        """Run `method` on every rank and return rank 0's answer; `window` is opened and
        closed by all ranks together (DriverWindow). Raises what a rank raised (UserError,
        DoesNotFit, DeviceOutOfMemory, RuntimeError), or RankLost naming a lost rank."""
        if not self.alive:
            raise RuntimeError("engine ranks were stopped after an earlier failure; prepare again")
        remote = {**kwargs, "window": RELAYED} if window is not None else kwargs
        if window is not None:
            kwargs = {**kwargs, "window": DriverWindow(self.cluster, window)}
        return self._roundtrip(method, args, kwargs, timeout_s, remote)

    def _roundtrip(
        self, method: str, args: tuple, kwargs: dict, timeout_s: float, remote: dict | None = None
    ) -> Any:
        cluster = self.cluster
        try:
            seq = cluster.post((method, args, kwargs if remote is None else remote))
            cluster.in_call = True
            try:
                with cluster.watch(seq, method, timeout_s):
                    mine = _run(cluster, self.state, method, args, kwargs)
            finally:
                cluster.in_call = False
            if mine[0] == "error":  # a collective broke: was a rank lost?
                dead = cluster.lost_ranks()
                if dead:
                    raise cluster.lost(dead, method)
                timeout_s = min(timeout_s, GRACE_S)  # the others may be stuck: name them
            replies = {0: mine, **cluster.collect(seq, method, timeout_s)}
        except RankLost:
            self.alive = False
            raise
        for rank in sorted(replies):
            status, payload = replies[rank]
            if status == "ok":
                continue
            if status in ("error", "oom") or method == "start":
                self.alive = False  # a rank raised mid-collective: the group is unusable
            raise rank_error(rank, status, payload, method)
        return mine[1]

    def kill(self) -> None:
        """After a failure: nothing more runs on these ranks in this process."""
        self.alive = False

    def close(self, timeout_s: float = 30.0) -> None:
        """Drop the model on every rank; the ranks go on serving (the process group stays)."""
        if self.alive:
            with contextlib.suppress(Exception):  # a lost rank was reported already
                self._roundtrip("drop", (), {}, timeout_s)
        self.state.clear()
        self.alive = False
