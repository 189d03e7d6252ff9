"""Stage 3: latent consistency distillation of one LoRA (LCM-LoRA, Luo et al. 2023, arXiv:2311.05556).

The recipe of diffusers' examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py, compactly:
- a skipping-step DDIM solver over N = 50 of the 1000 timesteps (skip k = 20): from t_{n+k} the guided
  teacher takes one DDIM step to t_n;
- the teacher is guided with w ~ U[w_min, w_max] in the LCM paper's form (x0 = c + w (c - u), so diffusers'
  guidance scale is w + 1), which bakes guidance into the LoRA: it samples with guidance 1;
- the consistency function f(x, t) = c_skip(t) x + c_out(t) x0(x, t) with LCMScheduler's boundary
  scalings (sigma_data 0.5, timestep scaling 10);
- the target f(x_{t_n}, t_n) comes from the student itself under no_grad (for a LoRA the recipe keeps no
  EMA target network), and the loss is the pseudo-Huber sqrt(d^2 + c^2) - c;
- LoRA (rank 16, alpha = rank so that a loader that assumes alpha = rank applies it at scale 1) on the
  attention projections, feed-forwards, ResNet convolutions, up/down-samplers and time projections.

The one LoRA serves both samplers, as the released LCM-LoRAs do with TCD: TCD's gamma = 0 is LCM's
multistep sampling without fresh noise, gamma > 0 re-noises part-way. TCD's own distillation (the
semi-linear consistency function predicting x_s for s < t, with its gamma) would train for what the TCD
sampler does with gamma > 0; it needs the same number of UNet calls per step and fits the budget, but is
not done here (issue 14 accepts one LCM-style LoRA).
"""

from __future__ import annotations

import copy

import torch

from fewstep.demo.train_common import (Clock, Stage, cosine_lr, dataset_latents, noisy_latents, prompt_index,
                                       resume, run_steps, set_lr, step_rng, teacher_scheduler, tokenize)
from fewstep.demo.train_eval import FEW_STEP, evaluate, summary

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default name: load_lora_weights(folder) finds it


def boundary_scalings(t: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0):
    """LCMScheduler.get_scalings_for_boundary_condition_discrete: c_skip -> 1, c_out -> 0 as t -> 0."""
    scaled = t.float() * timestep_scaling
    c_skip = sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2)
    c_out = scaled / (scaled ** 2 + sigma_data ** 2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def predicted_x0(eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor):
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


class DDIMSolver:
    """The skipping-step solver: timesteps k-1, 2k-1, ..., 999 (k = 1000 // n) and, for each, the
    alpha_cumprod of the one k steps before it (alphas_cumprod[0] for the first)."""

    def __init__(self, alphas_cumprod: torch.Tensor, n: int):
        self.k = len(alphas_cumprod) // n
        self.timesteps = torch.arange(1, n + 1) * self.k - 1
        self.alpha_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])

    def step(self, x0: torch.Tensor, eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        a = self.alpha_prev[index].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def add_lora(unet, rank: int):
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True,
                                target_modules=list(LORA_TARGETS)))
    unet.requires_grad_(False)
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
    return unet


def lora_state_dict(unet) -> dict:
    """The LoRA with PEFT's keys (`<module>.lora_A.weight`, `.lora_B.weight`); save_lora_weights prefixes
    them with `unet.`, which is diffusers' current format. (convert_state_dict_to_diffusers is not used: it
    renames only the attention keys to the old `.lora.down` form, leaving one file in two formats.)"""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet)


def run(stage: Stage, args, stop_at: int = None) -> bool:
    """Distil (or resume distilling) the LoRA; save it under stage.folder as LORA_FILE."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    steps, batch = args.distill_steps, args.distill_batch
    out = stage.checkpoint.parent.parent
    means, stds, prompts, vae = dataset_latents(out, args)
    scale = vae.config.scaling_factor
    trained = out / "stages" / "unet"
    tokenizer = CLIPTokenizer.from_pretrained(trained / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(trained / "text_encoder").eval()
    teacher = UNet2DConditionModel.from_pretrained(trained / "unet").eval().requires_grad_(False)
    unique_ids, which = prompt_index(prompts, tokenizer)
    with torch.no_grad():  # the text encoder is frozen now: encode the 60 captions and "" once
        unique_context = text_encoder(unique_ids)[0]
        empty_context = text_encoder(tokenize(tokenizer, [""]))[0]
    alphas_cumprod = teacher_scheduler().alphas_cumprod
    solver = DDIMSolver(alphas_cumprod, args.ddim_timesteps)

    torch.manual_seed(args.seed + 3)
    student = add_lora(copy.deepcopy(teacher), args.lora_rank).train()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.distill_lr, weight_decay=1e-2)
    clock = Clock(budget_s=args.budgets.get("distill"))
    start = resume(stage, clock, {"student": student, "optimizer": optimizer})

    def train_step(step: int) -> dict:
        rng, gen = step_rng(args.seed, "distill", step)
        idx = torch.from_numpy(rng.integers(len(means), size=batch))
        context = unique_context[which[idx]]
        z = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        noise = torch.randn(z.shape, generator=gen)
        index = torch.randint(0, len(solver.timesteps), (batch,), generator=gen)
        w = args.w_min + (args.w_max - args.w_min) * torch.rand(batch, generator=gen)
        w = w.view(-1, 1, 1, 1)
        t_start = solver.timesteps[index]
        t_end = (t_start - solver.k).clamp(min=0)
        x = noisy_latents(z, noise, t_start, alphas_cumprod)

        # online consistency function at t_{n+k}
        c_skip, c_out = boundary_scalings(t_start)
        eps = student(x, t_start, encoder_hidden_states=context).sample
        prediction = c_skip * x + c_out * predicted_x0(eps, x, t_start, alphas_cumprod)

        with torch.no_grad():
            # the guided teacher's DDIM step t_{n+k} -> t_n (conditional and unconditional in one batch)
            both = teacher(torch.cat([x, x]), torch.cat([t_start, t_start]),
                           encoder_hidden_states=torch.cat([context, empty_context.expand_as(context)])).sample
            cond, uncond = both.chunk(2)
            cond_x0 = predicted_x0(cond, x, t_start, alphas_cumprod)
            uncond_x0 = predicted_x0(uncond, x, t_start, alphas_cumprod)
            x_prev = solver.step(cond_x0 + w * (cond_x0 - uncond_x0), cond + w * (cond - uncond), index)
            # the target: the same network's consistency function at t_n
            c_skip_end, c_out_end = boundary_scalings(t_end)
            eps_end = student(x_prev, t_end, encoder_hidden_states=context).sample
            target = c_skip_end * x_prev + c_out_end * predicted_x0(eps_end, x_prev, t_end, alphas_cumprod)

        loss = torch.mean(torch.sqrt((prediction - target) ** 2 + args.huber_c ** 2) - args.huber_c)
        set_lr(optimizer, cosine_lr(step, steps, args.distill_lr, warmup=min(100, steps // 10 + 1)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return {"loss": loss.item()}

    def periodic_eval(done: int) -> None:
        if done % args.distill_eval_every and done != steps:
            return
        student.eval()
        components = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=student)
        results = evaluate(components, args.eval_n, FEW_STEP)
        student.train()
        print(f"[distill] step {done} eval: {summary(results)}", flush=True)
        stage.log({"event": "eval", "step": done, **results})

    def state() -> dict:
        return {"student": student.state_dict(), "optimizer": optimizer.state_dict()}

    done, finished = run_steps(stage, args, steps, start, clock, train_step, state, stop_at, periodic_eval)
    if not finished:
        return False
    StableDiffusionPipeline.save_lora_weights(stage.folder, unet_lora_layers=lora_state_dict(student),
                                              weight_name=LORA_FILE, safe_serialization=True)
    stage.finish({"steps": done, "wall_s": round(clock.elapsed(), 1)})
    return True
