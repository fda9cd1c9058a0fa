"""Patch Slimming (Tang et al., "Patch Slimming for Efficient Vision Transformers"), top-down.

Layer L keeps only the class token. Going down from block L−1 to 1, block t keeps every patch
that block t+1 keeps, then adds patches ``granularity`` (r') at a time in order of their
significance (their Eq. 6, averaged over the calibration images)

    s_{t,i} = Σ_h ||A_t^h[:, i] · U_t^h[i, :]||_F²,   A_t^h = Π_{l=t+1..L} diag(m_l)·P_l^h,
                                                       U_t^h = P_t^h·|Z_{t−1}|,

until the relative reconstruction error of the class token's final features,
``E = ||ẑ_cls − z_cls||² / ||z_cls||²`` (their E with diag(m_L) = the class token only, made
scale-free), is at most ε. Because diag(m_L) keeps only the class row, A_t^h has a single
non-zero row a_t^h and ``s_{t,i} = Σ_h (a_t^h[i])² · ||U_t^h[i, :]||²``. The attention maps P
are the unpruned model's, with the deeper layers' masks applied (their approximation). The
per-block fine-tune of their Alg. 1 (line 7) is not implemented: plans are used as calibrated.

The result is a *fixed-position* pyramid: it exports as constant-index Gathers, with no TopK.
"""

from __future__ import annotations

import copy

import torch
from tqdm import tqdm

from vitdeploy import runtime
from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import TokenStep, ViTSpec
from vitdeploy.models.vit import ViT
from vitdeploy.prune.calibrate import run_blocks, trace


class SlimmingCalibration:
    """The unpruned model's attention maps and block inputs on the calibration images, kept in
    memory (for the top-down pass that may be repeated for several ε), on the current runtime's
    device. In a torchrun job each process keeps its share of the images; significance and error
    sums are added up over the processes, so every process plans the same."""

    def __init__(self, model: ViT, images: torch.Tensor):
        if model.spec.distilled:
            raise VitDeployError("Patch Slimming here supports models with a class token only (no distillation token)")
        heads = {b.heads for b in model.spec.blocks}
        if len(heads) != 1:
            raise VitDeployError("Patch Slimming pairs head h across layers, so every block needs the same head count")
        self.runtime = runtime.current()
        self.model = copy.deepcopy(model).to(self.runtime.torch_device).eval()
        self.count = len(images)
        with torch.no_grad():
            t = trace(self.model, self.runtime.to_device(self.runtime.shard(images))[0])
        self.inputs, self.attention = t.inputs, t.attention
        self.reference = t.features[:, 0]

    def significance(self, t: int, masks: dict[int, torch.Tensor]) -> torch.Tensor:
        """s_t over the patches (Eq. 6), averaged over images; ``masks`` holds m_l (over all
        tokens, as 0/1) for the deeper blocks l > t (0-based)."""
        depth = self.model.spec.depth
        a = self.attention[depth - 1][:, :, :1, :]
        for l in range(depth - 2, t, -1):
            a = (a * masks[l]) @ self.attention[l]
        u = self.attention[t] @ self.inputs[t].abs().unsqueeze(1)
        s = (a.squeeze(2).square() * u.square().sum(dim=-1)).sum(dim=1).sum(dim=0)
        return (self.runtime.reduce_sum(s).cpu() / self.count).to(s.dtype)[self.model.spec.num_prefix_tokens:]

    def error(self, start: int, keep: dict[int, torch.Tensor]) -> float:
        """Relative class-token error of the plan ``keep`` (block → kept patch positions), run
        from block ``start`` on the unpruned inputs."""
        with torch.no_grad():
            features = run_blocks(self.model, self.inputs[start], start, keep)[:, 0]
        sums = torch.stack([(features - self.reference).square().sum(), self.reference.square().sum()])
        error, reference = self.runtime.reduce_sum(sums).tolist()
        return error / reference


def slimming_plan(calib: SlimmingCalibration, epsilon: float, granularity: int = 1,
                  progress: bool = True) -> dict[int, list[int]]:
    """Their Alg. 1 without the per-block fine-tune: block (0-based) → kept patch positions."""
    if not epsilon > 0:
        raise VitDeployError(f"ε (--epsilon) must be positive, got {epsilon}")
    if granularity < 1:
        raise VitDeployError(f"--granularity must be at least 1, got {granularity}")
    spec = calib.model.spec
    prefix, patches = spec.num_prefix_tokens, spec.num_patches
    keep: dict[int, torch.Tensor] = {}
    masks: dict[int, torch.Tensor] = {spec.depth - 1: _mask(torch.empty(0, dtype=torch.long), prefix, patches)}
    kept = torch.empty(0, dtype=torch.long)
    for t in tqdm(range(spec.depth - 2, -1, -1), desc=f"Patch Slimming ε={epsilon:g}", disable=not progress):
        order = calib.significance(t, masks).argsort(descending=True)
        candidates = order[~torch.isin(order, kept)]

        def error_with(added: int) -> float:
            keep[t] = torch.cat([kept, candidates[:added]]).sort().values
            return calib.error(t, keep)

        added = _fewest_added(error_with, epsilon, len(candidates), granularity, minimum=0 if len(kept) else 1)
        kept = torch.cat([kept, candidates[:added]])
        keep[t] = kept.sort().values
        masks[t] = _mask(kept, prefix, patches)
    return {t: positions.tolist() for t, positions in keep.items()}


def _fewest_added(error_with, epsilon: float, available: int, granularity: int, minimum: int) -> int:
    """The fewest candidates, a multiple of ``granularity`` (or all of them), whose error is ≤ ε.

    Alg. 1 adds r' patches at a time until E ≤ ε; since E falls as patches are added, bisecting
    over the number of steps finds the same count with O(log N) error evaluations instead of O(N).
    """
    steps = -(-available // granularity)
    lo, hi = -(-minimum // granularity), steps  # taking every candidate ends the loop whatever E is
    while lo < hi:
        mid = (lo + hi) // 2
        if error_with(min(available, mid * granularity)) <= epsilon:
            hi = mid
        else:
            lo = mid + 1
    return min(available, lo * granularity)


def _mask(kept: torch.Tensor, prefix: int, patches: int) -> torch.Tensor:
    mask = torch.zeros(prefix + patches)
    mask[:prefix] = 1
    mask[prefix + kept] = 1
    return mask


def slimming_spec(spec: ViTSpec, plan: dict[int, list[int]]) -> ViTSpec:
    """Fixed-position steps from a plan of original patch positions (each step's positions are
    relative to the tokens entering it); steps that would keep everything are left out."""
    steps, entering = {}, list(range(spec.num_patches))
    for t in sorted(plan):
        kept = sorted(plan[t])
        if len(kept) == len(entering):
            continue
        index = {p: i for i, p in enumerate(entering)}
        steps[t] = TokenStep(keep=len(kept), selector="fixed", positions=[index[p] for p in kept])
        entering = kept
    return spec.with_token_plan(steps)
