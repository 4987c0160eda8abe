"""Optimizers over an image's pixels inside the box [0, 1], one iteration per `step()`.

The objective sees the pixels as they are (never a clamped copy), so no pixel loses its
gradient; instead every iterate is projected back into the box. L-BFGS runs a projected
backtracking search along its quasi-Newton direction, with the pixels held at a bound that
the gradient pushes outwards left out of the direction (the active set of L-BFGS-B). Adam
projects after each step, as crowsonkb/style-transfer-pytorch does.

Each evaluation moves the losses (and any scalars the optimizer needs, such as the
line search's expected decrease) to the host in one transfer; nothing else waits for the GPU.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

import torch

from .errors import EngineError
from .events import Losses
from .objective import StyleObjective

# Armijo's sufficient-decrease constant, and how far a trial step is shortened when it fails.
ARMIJO = 1e-4
BACKTRACK = 0.5
MAX_TRIALS = 10

# With no curvature pairs yet, the first L-BFGS direction is the gradient scaled so that the
# most-moved pixel moves by this much (times the learning rate).
FIRST_STEP = 0.1


class Descent:
    """Loss and gradient of `objective` at a point, counted, with one host transfer each."""

    def __init__(self, objective: StyleObjective, render: Callable[[torch.Tensor], torch.Tensor]):
        self.objective = objective
        self.render = render
        self.evaluations = 0

    def evaluate(
        self, pixels: torch.Tensor, extras: Sequence[torch.Tensor] = ()
    ) -> tuple[Losses, torch.Tensor, list[float]]:
        """(losses, gradient, extras as floats) at `pixels`, which is not modified."""
        x = pixels.detach().requires_grad_(True)
        content, style, tv = self.objective(self.render(x))
        total = content + style + tv
        scale = self.objective.loss_scale
        (total * scale if scale != 1 else total).backward()
        grad = x.grad if scale == 1 else x.grad / scale
        checks = [torch.isfinite(grad).all().float()] if scale != 1 else []
        values = torch.stack([content, style, tv, total, *checks, *extras]).detach().tolist()
        self.evaluations += 1
        losses = Losses(*values[:4])
        if not math.isfinite(losses.total) or (checks and values[4] < 1):
            raise EngineError(f"the loss became {losses.total}; lower the learning rate or the loss weights")
        return losses, grad, values[4 + len(checks) :]


class _BoxOptimizer:
    """The iterate, its losses and gradient, and the lowest-loss iterate accepted so far."""

    def __init__(self, descent: Descent, start: torch.Tensor):
        self.descent = descent
        self.x = start.detach().clamp(0, 1).contiguous()
        self.losses, self.grad, _ = descent.evaluate(self.x)
        self.best, self.best_losses = self.x, self.losses

    def _accept(self, x: torch.Tensor, losses: Losses, grad: torch.Tensor) -> None:
        self.x, self.losses, self.grad = x, losses, grad
        if losses.total < self.best_losses.total:
            self.best, self.best_losses = x, losses

    def step(self) -> Losses:
        raise NotImplementedError


class ProjectedLBFGS(_BoxOptimizer):
    """L-BFGS in the box [0, 1]: monotone, so the iterate is always the best image so far."""

    def __init__(self, descent: Descent, start: torch.Tensor, history: int, lr: float = 1.0):
        super().__init__(descent, start)
        self.lr = lr
        # Curvature pairs (s, y, 1/(y·s)); a pair whose y·s is not positive gets 0 and so
        # drops out of the two-loop recursion without a host sync to test it.
        self.pairs: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = deque(maxlen=history)
        self.gamma: torch.Tensor | None = None  # y·s / y·y of the newest good pair

    def reset(self) -> None:
        self.pairs.clear()
        self.gamma = None

    def step(self) -> Losses:
        x, g = self.x, self.grad
        active = ((x <= 0) & (g > 0)) | ((x >= 1) & (g < 0))
        d = -self._inverse_hessian_times(g.masked_fill(active, 0)).masked_fill_(active, 0)
        t = self.lr
        fallback = None
        for _ in range(MAX_TRIALS):
            trial = (x + t * d).clamp_(0, 1)
            expected = torch.dot(g.reshape(-1), (trial - x).reshape(-1))
            losses, grad, (decrease,) = self.descent.evaluate(trial, [expected])
            if losses.total <= self.losses.total + ARMIJO * min(decrease, 0.0):
                break
            if losses.total < self.losses.total and (fallback is None or losses.total < fallback[1].total):
                fallback = (trial, losses, grad)
            t *= BACKTRACK
        else:
            self.reset()  # the direction failed: start the curvature memory afresh
            if fallback is None:
                return self.losses
            trial, losses, grad = fallback
        self._remember(trial - x, grad - g)
        self._accept(trial, losses, grad)
        return losses

    def _remember(self, s: torch.Tensor, y: torch.Tensor) -> None:
        s, y = s.reshape(-1), y.reshape(-1)
        ys = torch.dot(y, s)
        good = ys > 1e-10 * torch.dot(s, s).clamp_min(1e-30)
        self.pairs.append((s, y, torch.where(good, 1 / ys, torch.zeros_like(ys))))
        gamma = torch.where(good, ys / torch.dot(y, y).clamp_min(1e-30), torch.zeros_like(ys))
        self.gamma = gamma if self.gamma is None else torch.where(good, gamma, self.gamma)

    def _inverse_hessian_times(self, g: torch.Tensor) -> torch.Tensor:
        """The two-loop recursion: H·g for L-BFGS's inverse-Hessian estimate H."""
        first = FIRST_STEP / g.abs().amax().clamp_min(1e-30)
        if not self.pairs or self.gamma is None:
            return g * first
        q = g.reshape(-1).clone()
        alphas = []
        for s, y, rho in reversed(self.pairs):
            alpha = rho * torch.dot(s, q)
            q.sub_(y * alpha)
            alphas.append(alpha)
        # Until a good pair arrives (gamma 0) the scaling is that of the first step.
        r = q.mul_(torch.where(self.gamma > 0, self.gamma, first))
        for (s, y, rho), alpha in zip(self.pairs, reversed(alphas)):
            beta = rho * torch.dot(y, r)
            r.add_(s * (alpha - beta))
        return r.view_as(g)

    def take_memory(self, coarser: ProjectedLBFGS) -> None:
        """Start from the curvature memory of the previous, coarser scale, each pair upsampled
        to this size. A pixel's gradient shrinks with the pixel count (every loss is a mean or a
        relative error over the image), so y is scaled by the ratio of the pixel counts."""
        before, after = coarser.x.shape, self.x.shape
        shrink = (before[-1] * before[-2]) / (after[-1] * after[-2])
        size = (after[-1], after[-2])
        for s, y, _ in list(coarser.pairs)[-(self.pairs.maxlen or 0) :]:
            self._remember(_resize(s.view(before), size), _resize(y.view(before), size) * shrink)


class ProjectedAdam(_BoxOptimizer):
    """Adam, each step projected into [0, 1]. It can go uphill; `best` is the lowest-loss image."""

    def __init__(self, descent: Descent, start: torch.Tensor, lr: float):
        super().__init__(descent, start)
        self.pixels = self.x.clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.pixels], lr=lr)

    def step(self) -> Losses:
        self.pixels.grad = self.grad
        self.optimizer.step()
        with torch.no_grad():
            self.pixels.clamp_(0, 1)
        x = self.pixels.detach().clone()
        losses, grad, _ = self.descent.evaluate(x)
        self._accept(x, losses, grad)
        return losses


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return torch.nn.functional.interpolate(image, size=(size[1], size[0]), mode="bilinear", align_corners=False)
