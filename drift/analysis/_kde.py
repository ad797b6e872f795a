"""High-reward coverage of 2-D response projections, paper §4.3, in plain numpy.

For one prompt, every method's responses are points in one 2-D projection, each with a reward:

  Z_all(g)   reward-weighted Gaussian KDE of all responses on a regular grid g, scaled to [0, 1]
  H          = {g : Z_all(g) >= z_high},  z_high = Quantile(Z_all, q), q = 0.8
  D_m(g)     the same surface of method m's responses alone: same grid, same bandwidth
  S_m        = {g in H : D_m(g) >= z_high}
  Share(m)   = |S_m| / |H|

Where the paper is silent we chose, and say so here:

- Weights: rewards min-max scaled over all of the prompt's responses (every method together), so
  weights lie in [0, 1], share one scale across methods, and a reward model's offset does not
  matter. If all rewards are equal every weight is 1 (a plain KDE).
- Surface: f_S(g) = (1/|S|) * sum_{i in S} w_i * N(g; x_i, h^2 I), an isotropic Gaussian kernel.
  Dividing by the number of responses |S| (not by the weight sum) keeps a method's reward level in
  its surface: a method whose replies all carry the lowest reward has D_m = 0, wherever they lie.
  With equal sample counts f_all is the mean of the methods' f_m.
- Scale: Z_all = f_all / max_g f_all (so Z_all spans [0, 1] as in the paper's figures) and
  D_m = min(1, f_m / max_g f_all), i.e. D_m on Z_all's scale. Normalising each D_m by its own
  maximum would let every method reach 1 somewhere whatever its rewards; on the common scale a
  method distributed like all responses gets D_m = Z_all and Share = 1. The clip at 1 cannot move
  a cell across z_high <= 1, so Share is the same as without it.
- Bandwidth: Scott's rule for d = 2, h = n^(-1/6) * (mean of the per-axis standard deviations)
  over all of the prompt's points, shared by every surface (the paper: "the same bandwidth").
- Grid: `size` x `size` cells spanning the bounding box of all points, widened by `margin` of its
  range on each side (so no blob is cut at the edge). H holds about (1 - q) of the grid's cells
  by construction, so its shape, not its size, is what the grid's extent changes.
- Quantile: numpy's default (linear interpolation) over all grid cells; cells equal to z_high are
  inside H and inside S_m.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Coverage:
    """One prompt's surfaces, region and shares; arrays are [len(ys), len(xs)] (row = y)."""

    xs: np.ndarray
    ys: np.ndarray
    bandwidth: float
    z_all: np.ndarray
    surfaces: dict[str, np.ndarray]  # method -> D_m
    region: np.ndarray  # bool mask of H
    z_high: float
    covered: dict[str, np.ndarray]  # method -> bool mask of S_m
    shares: dict[str, float]


def reward_weights(rewards) -> np.ndarray:
    """Rewards min-max scaled to [0, 1]; all equal -> all 1."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 1 or rewards.size == 0:
        raise ValueError(f"rewards must be a non-empty 1-D list, got shape {rewards.shape}")
    if not np.all(np.isfinite(rewards)):
        raise ValueError("rewards hold a NaN or infinite value; check the reward model's outputs")
    low, high = rewards.min(), rewards.max()
    if high == low:
        return np.ones_like(rewards)
    return (rewards - low) / (high - low)


def scott_bandwidth(points2d) -> float:
    points = _points(points2d)
    spread = float(np.mean(points.std(axis=0)))
    if spread == 0.0:
        spread = 1.0  # every point in one place: any bandwidth shows one blob
    return spread * len(points) ** (-1.0 / 6.0)


def grid_axes(points2d, size: int = 100, margin: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Regular axes over the points' bounding box, widened by `margin` of the range on each side."""
    if size < 2:
        raise ValueError(f"grid size must be >= 2, got {size}")
    points = _points(points2d)
    low, high = points.min(axis=0), points.max(axis=0)
    pad = np.where(high > low, (high - low) * margin, 1.0)
    xs = np.linspace(low[0] - pad[0], high[0] + pad[0], size)
    ys = np.linspace(low[1] - pad[1], high[1] + pad[1], size)
    return xs, ys


def kde_surface(points2d, weights, grid: tuple[np.ndarray, np.ndarray], bandwidth: float) -> np.ndarray:
    """f(g) = (1/n) * sum_i w_i * N(g; x_i, h^2 I) at every (x, y) of the grid -> [len(ys), len(xs)].

    The 2-D Gaussian factors into an x-part and a y-part, so the surface is Ky^T diag(w) Kx: no
    [cells, points] array is built.
    """
    points = _points(points2d)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(points),):
        raise ValueError(f"{len(points)} points but {weights.shape} weights")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    xs, ys = (np.asarray(axis, dtype=np.float64) for axis in grid)
    kernel_x = np.exp(-0.5 * ((xs[None, :] - points[:, :1]) / bandwidth) ** 2)  # [n, nx]
    kernel_y = np.exp(-0.5 * ((ys[None, :] - points[:, 1:]) / bandwidth) ** 2)  # [n, ny]
    surface = np.einsum("n,ny,nx->yx", weights, kernel_y, kernel_x)
    return surface / (len(points) * 2.0 * np.pi * bandwidth**2)


def high_reward_region(z, quantile: float = 0.8) -> tuple[np.ndarray, float]:
    """H = {g : z(g) >= Quantile(z, q)} over every grid cell; returns (mask, z_high)."""
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0, 1), got {quantile}")
    z = np.asarray(z, dtype=np.float64)
    z_high = float(np.quantile(z, quantile))
    return z >= z_high, z_high


def share(surface, region, z_high: float) -> tuple[float, np.ndarray]:
    """Share = |{g in H : D(g) >= z_high}| / |H|; also returns that set's mask."""
    region = np.asarray(region, dtype=bool)
    if not region.any():
        raise ValueError("the high-reward region is empty")
    covered = region & (np.asarray(surface) >= z_high)
    return float(covered.sum() / region.sum()), covered


def coverage(points2d, rewards, methods, *, grid_size: int = 100, bandwidth: float | None = None,
             quantile: float = 0.8, margin: float = 0.1) -> Coverage:
    """Surfaces, H and Share(m) for one prompt; `methods[i]` names the method of point i."""
    points = _points(points2d)
    methods = np.asarray(methods)
    if methods.shape != (len(points),):
        raise ValueError(f"{len(points)} points but {methods.shape} method labels")
    weights = reward_weights(rewards)
    if len(weights) != len(points):
        raise ValueError(f"{len(points)} points but {len(weights)} rewards")
    bandwidth = scott_bandwidth(points) if bandwidth is None else float(bandwidth)
    grid = grid_axes(points, grid_size, margin)
    raw_all = kde_surface(points, weights, grid, bandwidth)
    scale = raw_all.max()
    if scale <= 0.0:
        raise ValueError("the reward-weighted surface is zero everywhere")
    z_all = raw_all / scale
    region, z_high = high_reward_region(z_all, quantile)
    surfaces, covered, shares = {}, {}, {}
    for name in dict.fromkeys(methods.tolist()):  # first-seen order
        mine = methods == name
        surfaces[name] = np.minimum(1.0, kde_surface(points[mine], weights[mine], grid, bandwidth) / scale)
        shares[name], covered[name] = share(surfaces[name], region, z_high)
    return Coverage(grid[0], grid[1], bandwidth, z_all, surfaces, region, z_high, covered, shares)


def _points(points2d) -> np.ndarray:
    points = np.asarray(points2d, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"expected a non-empty [n, 2] array of 2-D points, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("the 2-D points hold a NaN or infinite value")
    return points
