"""Where this process sits in a job of several ranks, and what a rank's answer means.

LaunchEnv is read from the environment torchrun or srun set; torch-free, so every command can
ask cheaply (infermeter.engine.launched does the rest: the store, heartbeats, commands and
process groups; infermeter.engine.launch spawns ranks itself on one host). Both turn a rank's
answer other than "ok" into an exception the same way (rank_error).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infermeter.errors import DeviceOutOfMemory, DoesNotFit, UserError

GRACE_S = 20.0  # after one rank fails, how long the others get to answer before being stopped


class RankLost(UserError):
    """A rank died or stopped answering: the run ends with its name; rerun to resume."""


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in a launched job (what torchrun or srun set)."""

    launcher: str  # "torchrun" or "slurm"
    rank: int
    world: int
    local_rank: int  # also this rank's GPU: cuda:local_rank
    local_world: int  # ranks (GPUs) on this node
    node: int
    nodes: int
    master_addr: str
    master_port: int
    agent_store: bool  # torchrun's agent hosts the store; under srun rank 0 does
    restart: int = 0  # torchrun's restart count (keys of an earlier attempt are ignored)

    @property
    def leader(self) -> bool:
        """The node's first rank: it meters the node's GPUs."""
        return self.local_rank == 0

    def describe(self) -> dict[str, Any]:
        """What a run records about its launcher: its name, the node count and the rank count."""
        return {"launcher": self.launcher, "nodes": self.nodes, "ranks": self.world}


def _int(env: Mapping[str, str], *names: str, default: int | None = None) -> int:
    for name in names:
        text = env.get(name, "").strip()
        if text:
            head = text.split("(")[0].split(",")[0]  # Slurm's "4(x2)" or "4,4"
            try:
                return int(head)
            except ValueError:
                raise UserError(
                    f"{name}={text!r} is not a number; fix the launcher's environment"
                ) from None
    if default is None:
        raise UserError(f"the launcher did not set {' or '.join(names)}")
    return default


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """This process's place in a torchrun or srun job of more than one rank; None without a
    launcher (or with one rank). srun is recognised by SLURM_STEP_NUM_TASKS (an sbatch script
    itself is not a launched rank). Raises UserError where a variable is malformed or
    MASTER_ADDR is missing under srun."""
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "LOCAL_RANK" in env):
        world = _int(env, "WORLD_SIZE")
        if world < 2:
            return None
        local_world = _int(env, "LOCAL_WORLD_SIZE", default=world)
        return LaunchEnv(
            launcher="torchrun",
            rank=_int(env, "RANK"),
            world=world,
            local_rank=_int(env, "LOCAL_RANK"),
            local_world=local_world,
            node=_int(env, "GROUP_RANK", default=_int(env, "RANK") // local_world),
            nodes=_int(env, "GROUP_WORLD_SIZE", default=max(1, world // local_world)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT", default=29500),
            agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true",
            restart=_int(env, "TORCHELASTIC_RESTART_COUNT", default=0),
        )
    if "SLURM_STEP_NUM_TASKS" in env:
        world = _int(env, "SLURM_STEP_NUM_TASKS")
        if world < 2:
            return None
        nodes = _int(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", default=1)
        if not env.get("MASTER_ADDR"):
            raise UserError(
                "under srun, set MASTER_ADDR to the first node of the job (export MASTER_ADDR="
                "$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)); see docs/scale-out.md"
            )
        return LaunchEnv(
            launcher="slurm",
            rank=_int(env, "SLURM_PROCID"),
            world=world,
            local_rank=_int(env, "SLURM_LOCALID"),
            local_world=_int(env, "SLURM_STEP_TASKS_PER_NODE", default=world // nodes),
            node=_int(env, "SLURM_NODEID"),
            nodes=nodes,
            master_addr=env["MASTER_ADDR"],
            master_port=_int(env, "MASTER_PORT", default=29500),
            agent_store=False,
        )
    return None


def rank_error(rank: int, status: str, payload: str, what: str) -> Exception:
    """The exception for a rank's answer other than "ok": UserError (its last line),
    DoesNotFit, DeviceOutOfMemory, or RuntimeError with the rank's traceback."""
    if status == "user":
        return UserError(payload.strip().splitlines()[-1] if "\n" in payload else payload)
    if status == "does_not_fit":
        return DoesNotFit(payload)
    if status == "oom":
        return DeviceOutOfMemory(payload)
    return RuntimeError(f"engine rank {rank} failed during {what}:\n{payload}")
