"""Stage 2: the text encoder (2-layer CLIPTextModel, hidden 64) and the UNet, trained jointly from scratch.

Epsilon prediction on SD's scaled-linear schedule, timesteps uniform over 0..999, captions replaced by ""
with probability `uncond_prob` so that one network also learns the unconditional prediction that
classifier-free guidance needs (SD's 10%). An EMA of both networks is what gets saved and evaluated: at
this scale and step count it samples visibly cleaner than the raw weights.
"""

from __future__ import annotations

import copy

import torch

from fewstep.demo.train_common import (Clock, Stage, cosine_lr, dataset_latents, demo_tokenizer, ema_update,
                                       new_text_encoder, new_unet, noisy_latents, prompt_index, resume,
                                       run_steps, set_lr, step_rng, teacher_scheduler, tokenize)
from fewstep.demo.train_eval import TEACHER, evaluate, summary


def run(stage: Stage, args, stop_at: int = None) -> bool:
    """Train (or resume) the text encoder and UNet; save their EMA, and the tokenizer, under stage.folder."""
    steps, batch = args.unet_steps, args.unet_batch
    means, stds, prompts, vae = dataset_latents(stage.checkpoint.parent.parent, args)
    scale = vae.config.scaling_factor
    tokenizer = demo_tokenizer()
    unique_ids, which = prompt_index(prompts, tokenizer)
    empty_ids = tokenize(tokenizer, [""])[0]
    alphas_cumprod = teacher_scheduler().alphas_cumprod

    torch.manual_seed(args.seed + 2)
    unet, text_encoder = new_unet().train(), new_text_encoder(tokenizer).train()
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=1e-2)
    clock = Clock(budget_s=args.budgets.get("unet"))
    modules = {"unet": unet, "text_encoder": text_encoder, "ema_unet": ema_unet, "ema_text": ema_text,
               "optimizer": optimizer}
    start = resume(stage, clock, modules)

    def train_step(step: int) -> dict:
        rng, gen = step_rng(args.seed, "unet", step)
        idx = torch.from_numpy(rng.integers(len(means), size=batch))
        drop = torch.from_numpy(rng.random(batch) < args.uncond_prob)
        ids = torch.where(drop[:, None], empty_ids[None, :], unique_ids[which[idx]])
        z = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, len(alphas_cumprod), (batch,), generator=gen)
        context = text_encoder(ids)[0]
        pred = unet(noisy_latents(z, noise, t, alphas_cumprod), t, encoder_hidden_states=context).sample
        loss = torch.mean((pred - noise) ** 2)
        set_lr(optimizer, cosine_lr(step, steps, args.unet_lr, warmup=min(500, steps // 10 + 1)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_update(ema_unet, unet, step, args.ema)
        ema_update(ema_text, text_encoder, step, args.ema)
        return {"loss": loss.item()}

    def periodic_eval(done: int) -> None:
        if done % args.eval_every and done != steps:
            return
        components = dict(vae=vae, text_encoder=ema_text, tokenizer=tokenizer, unet=ema_unet)
        results = evaluate(components, args.eval_n, {"teacher": TEACHER})
        print(f"[unet] step {done} eval: {summary(results)}", flush=True)
        stage.log({"event": "eval", "step": done, **results})

    def state() -> dict:
        return {key: module.state_dict() for key, module in modules.items()}

    done, finished = run_steps(stage, args, steps, start, clock, train_step, state, stop_at, periodic_eval)
    if not finished:
        return False
    ema_unet.save_pretrained(stage.folder / "unet", safe_serialization=True)
    ema_text.save_pretrained(stage.folder / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(stage.folder / "tokenizer")
    stage.finish({"steps": done, "wall_s": round(clock.elapsed(), 1)})
    return True
