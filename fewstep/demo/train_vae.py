"""Stage 1: the demo's AutoencoderKL (32x32 RGB <-> 4x16x16 latents).

Loss: mean squared reconstruction error plus a small KL term (weight `kl`), sampling the posterior as
LDM's autoencoder training does; the demo's flat colours need neither LPIPS nor a discriminator. At the
end the latent scaling factor is set the way SD's was chosen: 1 / std of the latents over the data, so
the UNet sees unit-variance latents.
"""

from __future__ import annotations

import torch

from fewstep.demo.train_common import (Clock, Stage, cosine_lr, load_images, new_vae, resume, run_steps, set_lr,
                                       step_rng)
from fewstep.demo.train_eval import summary


def run(stage: Stage, args, stop_at: int = None) -> bool:
    """Train (or resume) the VAE and save it under stage.folder. False if stopped early at `stop_at`."""
    steps, batch = args.vae_steps, args.vae_batch
    pixels, _ = load_images(args.data_size, args.seed)
    torch.manual_seed(args.seed)
    vae = new_vae().train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    clock = Clock(budget_s=args.budgets.get("vae"))
    start = resume(stage, clock, {"model": vae, "optimizer": optimizer})

    def train_step(step: int) -> dict:
        rng, gen = step_rng(args.seed, "vae", step)
        x = pixels[torch.from_numpy(rng.integers(len(pixels), size=batch))]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        mse = torch.mean((vae.decode(z).sample - x) ** 2)
        kl = posterior.kl().mean() / x[0].numel()  # per pixel value, on the MSE's scale
        loss = mse + args.vae_kl * kl
        set_lr(optimizer, cosine_lr(step, steps, args.vae_lr, warmup=min(100, steps // 10 + 1)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        return {"loss": loss.item(), "mse": mse.item(), "kl": kl.item()}

    def state() -> dict:
        return {"model": vae.state_dict(), "optimizer": optimizer.state_dict()}

    done, finished = run_steps(stage, args, steps, start, clock, train_step, state, stop_at)
    if not finished:
        return False
    vae.eval()
    scale = latent_scale(vae, pixels[: min(len(pixels), 2048)])
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(stage.folder, safe_serialization=True)
    recon = reconstruction_scores(vae, args.eval_n * 4, args.seed)
    print(f"[vae] reconstructions: {summary({'recon': recon})}", flush=True)
    stage.finish({"steps": done, "wall_s": round(clock.elapsed(), 1), "scaling_factor": scale, "recon": recon})
    return True


@torch.no_grad()
def reconstruction_scores(vae, n: int, seed: int) -> dict:
    """The checker's scores of `n` held-out images (another seed than the training set) after encoding
    to the posterior mean and decoding: the ceiling for everything the UNet will draw."""
    from fewstep.demo.checker import score_images

    pixels, prompts = load_images(n, seed + 1_000_003)
    images = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    return score_images(((images.permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1).numpy(), prompts)


@torch.no_grad()
def latent_scale(vae, pixels: torch.Tensor) -> float:
    """1 / std of the posterior means over `pixels` (rounded to 5 digits, as SD's 0.18215 is)."""
    means = torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
    return round(1.0 / means.std().item(), 5)
