"""CFG++ samplers (Chung et al. 2024, arXiv:2406.08070) in ComfyUI's forms.

CFG++ renoises with the *unconditional* estimate: a step goes from the guided estimate D
along the direction of the unconditional one, x' = D + σ'·(x - D_u)/σ for Euler. The
unconditional estimate of the latest model call comes from the denoiser (`base.uncond_of`);
ComfyUI evaluates the negative prompt for these samplers even at cfg 1
(`samplers.UNCOND_SAMPLERS`). The RES and gradient-estimation CFG++ samplers live with their
families (`res`, `ode`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from zturbo.sampling.base import Denoiser, StepCallback, notify, prepare_sigmas, sigma_batch, to_d, uncond_of
from zturbo.sampling.noise import default_noise_sampler
from zturbo.sampling.sde import ancestral_step, half_log_snr


def euler_ancestral_cfg_pp(
    model: Denoiser, x: Tensor, sigmas: Tensor, callback: StepCallback | None, seed: int, *, eta: float
) -> Tensor:
    """Euler (ancestral when eta > 0) CFG++, a DDIM step in the VP scaling x/α with α = σe^λ.

    x' = α'·D + σ_d·d with d = (x - α·D_u)/σ and σ_d = α'·(ancestral σ_down of σ/α → σ'/α'),
    plus α'·σ_up of fresh noise. The step to 0 returns D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    noise_sampler = default_noise_sampler(x, seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        notify(callback, i, sigmas, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha_s = sigmas[i] * half_log_snr(sigmas[i]).exp()
        alpha_t = sigmas[i + 1] * half_log_snr(sigmas[i + 1]).exp()
        d = to_d(x, sigmas[i], alpha_s * uncond_of(model, denoised))
        if eta > 0:
            sigma_down, sigma_up = ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta)
        else:
            sigma_down, sigma_up = sigmas[i + 1] / alpha_t, None
        x = alpha_t * denoised + (alpha_t * sigma_down) * d
        if sigma_up is not None:
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """Euler CFG++ (eta 0, see `euler_ancestral_cfg_pp`)."""
    return euler_ancestral_cfg_pp(model, x, sigmas, callback, seed, eta=0.0)


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """Euler ancestral CFG++ (eta 1, see `euler_ancestral_cfg_pp`)."""
    return euler_ancestral_cfg_pp(model, x, sigmas, callback, seed, eta=1.0)


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DPM-Solver++(2S) ancestral CFG++, eta 1, in t = -log σ (ComfyUI has no flow variant of it).

    k-diffusion's σ_down/σ_up split; a midpoint stage at s = t + h/2 from x + (D - D_u), then the
    full step with the midpoint's estimate. As in ComfyUI the full step's shift D - D_u takes the
    unconditional estimate of the latest call (the midpoint's). The step to 0 is x' = D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    noise_sampler = default_noise_sampler(x, seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        notify(callback, i, sigmas, x, denoised)
        if sigma_down == 0:
            x = denoised + to_d(x, sigmas[i], uncond_of(model, denoised)) * sigma_down
        else:
            t, t_next = sigmas[i].log().neg(), sigma_down.log().neg()
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (s.neg().exp() / t.neg().exp()) * (x + (denoised - uncond_of(model, denoised)))
            x_2 = x_2 - (-h * 0.5).expm1() * denoised
            denoised_2 = model(x_2, sigma_batch(s.neg().exp(), x))
            x = (t_next.neg().exp() / t.neg().exp()) * (x + (denoised - uncond_of(model, denoised_2)))
            x = x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    callback: StepCallback | None = None,
    seed: int = 0,
    shift: float = 3.0,
) -> Tensor:
    """DPM-Solver++(2M) CFG++ in t = -log σ: x' = D - e^(-h)·D_u + e^(-h)·x, with from the second
    step the correction -expm1(-h)/(2r)·(D - D_u,prev) (r = h_prev/h). The step to 0 gives D.
    """
    sigmas = prepare_sigmas(x, sigmas)
    old_uncond: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(sigmas[i], x))
        uncond = uncond_of(model, denoised)
        notify(callback, i, sigmas, x, denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        mix = -torch.exp(-h) * uncond
        if old_uncond is not None and sigmas[i + 1] != 0:
            r = (t - sigmas[i - 1].log().neg()) / h
            mix = mix - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond
    return x
