"""What each `infermeter` command is asked to do, as one dataclass per command.

Each field is one argument or option of the command: its default, and in its metadata its
help text, its flag where that is not the field's name ("--warmup-s", "--set"), "argument"
for a positional one and any other typer setting (show_default). infermeter.cli.options turns
a request class into the command's options; a notebook builds the same object and calls the
same library functions (infermeter.experiments.plans, infermeter.model). Fields of a nested config
(OpenAIConfig) with a "flag" are options too. Sizes stay comma-separated text, as typed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infermeter.backends.config import OpenAIConfig
from infermeter.store.db import DEFAULT_STORE


def opt(default: Any = ..., help: str = "", flag: str | None = None, **more: Any) -> Any:
    """A field that is an option: its default (... for required), help text, flag, typer
    settings."""
    meta = {"help": help, **({"flag": flag} if flag else {}), **more}
    return field(metadata=meta) if default is ... else field(default=default, metadata=meta)


def arg(default: Any = ..., help: str = "") -> Any:
    """A field that is a positional argument."""
    return opt(default, help, argument=True)


def store() -> Any:
    """The `--store` field: one SQLite store (default $INFERMETER_STORE or infermeter.sqlite)."""
    return opt(Path(DEFAULT_STORE), "SQLite store of runs and points.", "--store")


def stores() -> Any:
    """The repeatable `--store` field of the read verbs: stores to read, None for the default."""
    return opt(None, "SQLite store(s) to read (repeatable; default: $INFERMETER_STORE or "
               "infermeter.sqlite).", "--store")  # fmt: skip


def run_arg() -> Any:
    """The optional RUN argument: a run id, None for the latest."""
    return arg(None, "Run id (default: the latest).")


def hardware_config() -> Any:
    """The `--hardware-config` field: a TOML/JSON file of accelerators, or None."""
    return opt(None, "TOML/JSON file overriding or adding accelerators.", "--hardware-config")


def settings() -> Any:
    """The repeatable `--set KEY=VALUE` field: accelerator values overridden, or None."""
    return opt(None, "Override any accelerator value, e.g. --set memory_bandwidth=3.0e12 "
               "(repeatable).", "--set")  # fmt: skip


def api(size_option: str = "--prompt-sizes") -> Any:
    """The OpenAI-compatible API's options (OpenAIConfig fields with a flag)."""
    return field(default_factory=OpenAIConfig, metadata={"nested": {"size_option": size_option}})


DEVICE = "auto, cuda, cuda:N or cpu."
DTYPE = "float32, bfloat16 or float16."
PRICE = "Override $/accelerator-hour."
POWER = "Override rated W/accelerator."
INTERVAL = "Power/utilisation sampling period (s)."
FIT_OUTPUT = (
    "Write the fitted runtime model JSON here, and beside it the energy model "
    "(OUTPUT.energy.json) and the model of queries sent back to back (OUTPUT.sustained.json) "
    "where the run has them; an earlier fit's of those that this one lacks are removed."
)
POOR_FIT = "Keep a fit that prices its own points worse than their mean (R² < 0)."
CAPABILITIES = ("CSV/JSON of model, scenario and a score (accuracy), or HELM-style "
                "per-scenario JSON.")  # fmt: skip
METRIC = "Score column to use (default: accuracy)."
QUERIES = ("SCENARIO=FILE of per-instance prompt_tokens, output_tokens (or their mean sizes); "
           "or FILE with a scenario column. Repeatable.")  # fmt: skip
OBJECTIVE = ("NAME=EXPR ranking objective over the table's columns, e.g. 'acc/cost=accuracy / "
             "idealized_cost_usd' (repeatable; higher is better).")  # fmt: skip
FORMAT = "Figure format: png or svg."


SHOW_BATCH_SIZES = "1,8,64,256"  # `models --show`'s default decode batch sizes


@dataclass(kw_only=True)
class ModelsRequest:
    """`infermeter models`: the catalog, or one model's spec (--show)."""

    family: str | None = opt(None, "Only this family (e.g. llama).")
    show: str | None = opt(
        None, "One model (catalog name or config.json): the spec as read.", "--show"
    )
    context: int | None = opt(
        None,
        "With --show: cached tokens of a decode step (default: 2048, or the model's context "
        "where shorter).",
    )
    batch_sizes: str = opt(SHOW_BATCH_SIZES, "With --show: decode batch sizes.")
    dtype: str | None = opt(None, "With --show: bytes at this dtype.")


@dataclass(kw_only=True)
class HardwareRequest:
    """`infermeter hardware`: the accelerator catalog."""

    hardware_config: Path | None = hardware_config()


@dataclass(kw_only=True)
class ProfileRequest:
    """`infermeter profile MODEL`: profile, fit, validate and price (plans.profile_setup)."""

    model: str = arg(..., "Catalog name (see `infermeter models`) or config.json.")
    backend: str = opt(
        "engine",
        "Stack to profile: engine (the reference), hf (transformers) or openai (a served API "
        "at --base-url).",
    )
    device: str = opt("auto", DEVICE)
    dtype: str | None = opt(None, DTYPE)
    prompt_sizes: str | None = opt(None, "e.g. 1,256,512,1024,1536.")
    output_sizes: str | None = opt(None, "e.g. 1,32,64,128,256.")
    batch_sizes: str = opt("1", "e.g. 1,8.")
    trials: int = opt(3, "Trials per point (the fit uses the minimum).")
    tensor_parallel: int = opt(1, "Tensor-parallel degree (engine).", "--tp")
    accelerator: str | None = opt(None, "Hardware entry (default: detected).")
    num_accelerators: int = opt(1, "Accelerators the stack holds.")
    price_per_hour: float | None = opt(None, PRICE)
    power_watts: float | None = opt(None, POWER)
    output: Path | None = opt(None, FIT_OUTPUT)
    hardware_config: Path | None = hardware_config()
    settings: list[str] | None = settings()
    energy: bool = opt(True, "Meter GPU energy through NVML where present.")
    sample_interval_s: float = opt(0.1, INTERVAL, "--sample-interval")
    warmup_s: float = opt(
        10.0,
        "Seconds of load before a metered profile (after its first call, which sets the shape "
        "up), so energy is measured on a warm card; the profile then keeps it busy.",
        "--warmup-s",
    )
    accept_poor_fit: bool = opt(False, POOR_FIT)
    validate: int | None = opt(
        None,
        "Queries never profiled, measured after the grid to check the fit (default 16 on a GPU, "
        "4 elsewhere; 0 skips).",
        "--validate",
    )
    max_context: int | None = opt(
        None,
        "Profile prompts up to this many tokens (default: the model's context, at most "
        "32,768, and about half of that on a CPU; longer prompts are then priced by "
        "extrapolation, with a warning).",
        "--max-context",
    )
    api: OpenAIConfig = api()
    store: Path = store()


@dataclass(kw_only=True)
class FitRequest:
    """`infermeter fit [RUN]`: a stored run or a points file fitted (model.runfit.fit_request)."""

    run: int | None = arg(None, "Run id in the store (default: the latest).")
    points: Path | None = opt(
        None,
        "CSV/JSONL of points from any tool: prompt_tokens, output_tokens, runtime_s [, trial, "
        "batch_size, energy_j].",
    )
    denoise: str | None = opt(
        None, "Reduce runtime trials by min (the default, the paper), median or mean."
    )
    overhead: str | None = opt(None, "none, auto (§3.5; the default for API runs) or seconds.")
    decode: str | None = opt(
        None,
        "curve: decode time follows the measured points along o (default for local stacks); "
        "line: the paper's line per prompt size (default for APIs and --points).",
    )
    folds: int = opt(0, "Also report a k-fold error over the profiled points (0: none).")
    slopes: str = opt(
        "per-prompt",
        "With --decode line: per-prompt g(p) from each prompt size's slope, or global: the "
        "paper's one g.",
    )
    accept_poor_fit: bool = opt(False, POOR_FIT)
    save: bool | None = opt(
        None,
        "Store this fit as the run's fit (a stored run only, not --points; default: only when "
        "every setting is the default, so an exploratory fit never replaces it).",
        "--save/--no-save",
    )
    output: Path | None = opt(None, FIT_OUTPUT)
    model_name: str = opt("", "Name recorded with --points.", "--model")
    store: Path | None = opt(
        None,
        "SQLite store of the run (default: $INFERMETER_STORE or infermeter.sqlite); not with "
        "--points.",
        "--store",
    )


@dataclass(kw_only=True)
class EstimateRequest:
    """`infermeter estimate`: queries priced (model.pricing.price_request)."""

    profile: Path = opt(..., "Fitted model JSON or HELM file.", "--profile")
    model: str | None = opt(None, "Entry of a HELM efficiency_data file.")
    queries: Path | None = opt(None, "CSV/JSONL of prompt_tokens, output_tokens.")
    prompt_tokens: str | None = opt(None, "Prompt sizes, e.g. 512 or 1,512.")
    output_tokens: str | None = opt(None, "Output lengths, e.g. 64 or 1,64.")
    energy_profile: Path | None = opt(None, "Fitted energy model JSON.")
    sustained_profile: Path | None = opt(
        None,
        "The runtime model of queries sent back to back that fit/profile --output OUTPUT.json "
        "wrote as OUTPUT.sustained.json (metered profiles only; the same run as --profile): "
        "adds runtime_sustained_s (cost_usd and energy_j stay priced at runtime_s).",
    )
    accelerator: str | None = opt(None, "Price on this hardware entry.")
    num_accelerators: int | None = opt(None, "Accelerators per query.")
    price_per_hour: float | None = opt(None, PRICE)
    power_watts: float | None = opt(None, POWER)
    grid_intensity: float | None = opt(None, "gCO2e per kWh, for CO2e.")
    output: Path | None = opt(None, "Write per-query rows (.csv/.jsonl/.json/.parquet).")
    hardware_config: Path | None = hardware_config()
    settings: list[str] | None = settings()


@dataclass(kw_only=True)
class StoreRequest:
    """`infermeter runs`: the runs of a store."""

    store: Path = store()


@dataclass(kw_only=True)
class RunRequest:
    """`infermeter show [RUN]`: one run of a store."""

    run: int | None = run_arg()
    store: Path = store()


@dataclass(kw_only=True)
class ExportRequest:
    """`infermeter export [RUN]`: a run's points or fit written (model.runfit.export_run)."""

    run: int | None = run_arg()
    output: Path | None = opt(
        None, "Points (an energy run's: its configurations) as .csv, .jsonl or .parquet."
    )
    helm: Path | None = opt(None, "The run's runtime fit as HELM efficiency_data.")
    store: Path = store()


@dataclass(kw_only=True)
class ServeRequest:
    """`infermeter serve MODEL`: a local model behind the API (backends.serve.serve_model)."""

    model: str = arg(..., "Catalog name or config.json (random weights).")
    backend: str = opt(
        "hf", "hf (streams tokens as they are made) or engine (streams after the whole answer)."
    )
    device: str = opt("auto", "auto, cuda, cuda:N or cpu.")
    dtype: str | None = opt(None, DTYPE)
    checkpoint: Path | None = opt(None, "Local checkpoint folder (real weights).")
    tokenizer: str = opt(
        "bytes", "tokenizer.json, SentencePiece .model or 'bytes': counts and detokenizes."
    )
    name: str | None = opt(None, "Model name the API serves (default: MODEL).")
    host: str = opt("127.0.0.1", "Address to listen on.")
    port: int = opt(8000, "Port to listen on.")
    api_key: str | None = opt(None, "Require this bearer key.", "--api-key", show_default=False)


@dataclass(kw_only=True)
class LoadRequest:
    """`infermeter load MODEL`: load on an API (plans.load_plan, plans.run_load)."""

    model: str = arg(..., "The served model: catalog name or any name.")
    prompt_tokens: int = opt(512, "Fixed prompt size p.")
    output_sizes: str = opt("1,32", "Output lengths, e.g. 1,32,128.")
    concurrency: str = opt("1,2,4,8,16", "Queries in flight, e.g. 1,2,4,8.")
    trials: int = opt(3, "Trials per (output length, concurrency) burst.")
    mode: str = opt(
        "burst",
        "burst: c queries sent at once, `trials` times (the paper's Fig. 6); concurrent: c kept "
        "in flight for --duration-s; rate: --rate requests/s for --duration-s.",
    )
    rate: str | None = opt(None, "Requests per second for --mode rate, e.g. 1,2,5.")
    arrival: str = opt("poisson", "Arrivals of --mode rate: constant or poisson.")
    duration_s: float = opt(30.0, "Seconds per level (timed modes).", "--duration-s")
    warmup_s: float = opt(
        5.0, "Seconds of load before each timed level (stored, not summarised).", "--warmup-s"
    )
    api: OpenAIConfig = api("--prompt-tokens")
    output: Path | None = opt(None, "Write the summary (.csv/.jsonl/.json/.parquet).")
    store: Path = store()


@dataclass(kw_only=True)
class VarianceRequest:
    """`infermeter variance [RUN]`: a run's noise (model.variance.run_noise)."""

    run: int | None = run_arg()
    idealized: Path | None = opt(
        None, "Fitted model JSON of a reference stack, for idealized vs denoised."
    )
    output: Path | None = opt(None, "Per-request raw/denoised/idealized rows.")
    store: Path = store()


@dataclass(kw_only=True)
class EnergyRequest:
    """`infermeter energy MODEL`: Words to Watts (plans.energy_setup)."""

    model: str | None = arg(None, "Catalog name (e.g. llama-7b) or a config.json.")
    dataset: str = opt("gsm8k", "gsm8k, alpaca, or a JSON/JSONL file of Alpaca or GSM8K records.")
    prompts: int | None = opt(
        None, "Prompts sampled from the dataset (default: the paper's 4,096; 16 on a CPU)."
    )
    seed: int = opt(0, "Seed of the sample and of generation.")
    template: str | None = opt(
        None,
        "Prompt template: alpaca, gsm8k, @FILE, or text with {instruction} {input} {question} "
        "(default: the dataset's own).",
    )
    batch_sizes: str | None = opt(None, "Batch sizes (default: 64,128,256; 4,8 on a CPU).")
    max_lengths: str | None = opt(
        None, "Max generation lengths in tokens (default: 256,512,1024; 16,32 on a CPU)."
    )
    shards: str = opt("1", "GPUs per model (tensor parallel), e.g. 1,2.")
    power_limit: str | None = opt(
        None,
        "GPU power caps in W, e.g. 250,175,150. Changes the GPUs' limit through NVML (needs "
        "root) and restores it on exit; only for GPUs that are your own.",
        "--power-limit",
    )
    restore_power_limit: bool = opt(
        False,
        "Put back the power limits an earlier run left set (killed, or the machine lost power) "
        "and exit; with none recorded, reset this run's GPUs (--device, --shards) that sit "
        "below their default limit.",
        "--restore-power-limit",
    )
    backend: str = opt("engine", "Stack that generates: engine.")
    device: str = opt("auto", DEVICE)
    dtype: str | None = opt(None, DTYPE)
    checkpoint: Path | None = opt(
        None, "Local LLaMA checkpoint folder: real weights, so real response lengths."
    )
    tokenizer: str | None = opt(
        None, "SentencePiece .model or 'bytes' (default: LLaMA's for LLaMA specs)."
    )
    sampling: str = opt("top_p", "top_p (the paper's T = 0.8, p = 0.95) or greedy.")
    sample_interval_s: float = opt(0.1, INTERVAL, "--sample-interval")
    warmup_s: float = opt(
        30.0,
        "Seconds of load before the first configuration, so energy is measured at working "
        "temperature (a cold card reads a few percent low). Only where energy is metered.",
        "--warmup-s",
    )
    store: Path = store()


@dataclass(kw_only=True)
class TradeoffsRequest:
    """`infermeter tradeoffs`: capability vs efficiency (model.sources.tradeoffs_for)."""

    capabilities: Path = opt(..., CAPABILITIES, "--capabilities")
    queries: list[str] = opt(..., QUERIES, "--queries")
    metric: str | None = opt(None, METRIC, "--metric")
    objective: list[str] | None = opt(None, OBJECTIVE, "--objective")
    profile: list[Path] | None = opt(
        None, "Fitted model JSON or HELM efficiency_data (repeatable).", "--profile"
    )
    output: Path | None = opt(None, "Write the table (.csv/.json/.jsonl/.parquet).")
    ranks_output: Path | None = opt(None, "Write the ranks (.csv/.json/...).")
    figures: Path | None = opt(None, "Write Fig. 9 and Fig. 10 into this folder.")
    fmt: str = opt("png", FORMAT, "--format")
    store: list[Path] | None = stores()


@dataclass(kw_only=True)
class CompareRequest:
    """`infermeter compare [RUNS]`: one model on several stacks (model.sources.compare_request)."""

    runs: list[int] | None = arg(None, "Run ids of one model on several stacks.")
    model: str | None = opt(None, "Compare every stack that profiled MODEL.")
    profile: list[Path] | None = opt(
        None, "Fitted model JSON files instead of runs (repeatable).", "--profile"
    )
    queries: Path | None = opt(
        None, "Benchmark queries (prompt_tokens, output_tokens); default: a grid."
    )
    baseline: str | None = opt(None, "Baseline stack: its label or run id.")
    output: Path | None = opt(None, "Write per-query rows (.csv/.jsonl/...).")
    figure: Path | None = opt(None, "Write the Fig. 8 picture (.png or .svg).")
    allow_different_models: bool = opt(
        False,
        "Compare stacks that ran different models (ratios without a verdict).",
        "--allow-different-models",
    )
    store: list[Path] | None = stores()


@dataclass(kw_only=True)
class ReportRequest:
    """`infermeter report`: the HTML page (report.build.report_for)."""

    output: Path = opt(Path("report.html"), "Where to write the HTML page.")
    capabilities: Path | None = opt(None, CAPABILITIES, "--capabilities")
    metric: str | None = opt(None, METRIC, "--metric")
    queries: list[str] | None = opt(None, QUERIES, "--queries")
    objective: list[str] | None = opt(None, OBJECTIVE, "--objective")
    title: str = opt("infermeter report", "Page title.")
    fmt: str = opt("png", FORMAT, "--format")
    store: list[Path] | None = stores()


@dataclass(kw_only=True)
class SweepRequest:
    """`infermeter sweep FILE`: a sweep's jobs run and merged."""

    file: Path = arg(..., "The sweep file (SWEEP.toml): its jobs and stores.")
    ray: bool = opt(
        False,
        "Run the jobs as Ray tasks, on the cluster at ADDRESS, or RAY_ADDRESS's, or a new local "
        "one. Without it, one after another here.",
        "--ray",
    )
    address: str | None = arg(
        None, "With --ray: the Ray cluster's head, HOST:PORT (e.g. 10.0.0.1:6379)."
    )


@dataclass(kw_only=True)
class MergeRequest:
    """`infermeter merge TARGET SOURCES`: stores merged into one."""

    target: Path = arg(..., "The store to merge into (made if missing).")
    sources: list[Path] = arg(..., "Stores to merge from.")
