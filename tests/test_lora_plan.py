"""The bookkeeping of a LoRA refresh (fewstep.core.lora.plan), without a framework: which terms each
fused weight holds, which weights are recomputed, which go back to their base."""

from __future__ import annotations

from types import SimpleNamespace

from fewstep.core.lora.fusion import scaling
from fewstep.core.lora.plan import plan_refresh, signature, wanted_terms


def factors(alpha=4.0, rank=2, rslora=False):
    return SimpleNamespace(alpha=alpha, rank=rank, rslora=rslora)


def adapters():
    a_q, a_te, b_q = factors(), factors(alpha=1.0, rank=4), factors(alpha=8.0, rank=4, rslora=True)
    return {
        "a": SimpleNamespace(token=1, layers={"unet": {"q": a_q}, "text_encoder": {"fc": a_te}}),
        "b": SimpleNamespace(token=2, layers={"unet": {"q": b_q, "k": factors()}}),
    }, (a_q, a_te, b_q)


def test_terms_in_active_order_with_peft_scaling():
    loaded, (a_q, a_te, b_q) = adapters()
    weights = {"a": {"unet": 0.5, "text_encoder": 1.0}, "b": {"unet": 2.0}}
    wanted = wanted_terms(["b", "a"], loaded, weights, {"unet", "text_encoder"}, lora_scale=0.75)
    assert list(wanted) == [("unet", "q"), ("unet", "k"), ("text_encoder", "fc")]
    q = wanted[("unet", "q")]
    assert [(t.token, t.factors) for t in q] == [(2, b_q), (1, a_q)]
    assert q[0].scale == scaling(8.0, 4, True, 2.0, 0.75)
    assert q[1].scale == scaling(4.0, 2, False, 0.5, 0.75)
    assert wanted[("text_encoder", "fc")][0].factors is a_te
    assert signature(q) == ((2, q[0].scale), (1, q[1].scale))


def test_weight_zero_and_unapplied_components_add_no_term():
    loaded, _ = adapters()
    weights = {"a": {"unet": 0.0, "text_encoder": 1.0}, "b": {"unet": 1.0}}
    wanted = wanted_terms(["a", "b"], loaded, weights, {"unet"}, lora_scale=1.0)
    assert set(wanted) == {("unet", "q"), ("unet", "k")}  # no text_encoder: not applied
    assert [t.token for t in wanted[("unet", "q")]] == [2]  # a's weight 0: no term, not a zero term
    # a component missing from an adapter's weights counts as weight 1.0
    wanted = wanted_terms(["a"], loaded, {"a": {}}, {"unet"}, lora_scale=1.0)
    assert wanted[("unet", "q")][0].scale == scaling(4.0, 2, False, 1.0, 1.0)


def test_only_changed_weights_are_recomputed_and_the_rest_restored():
    loaded, _ = adapters()
    weights = {"a": {"unet": 1.0, "text_encoder": 1.0}, "b": {"unet": 1.0}}
    wanted = wanted_terms(["b"], loaded, weights, {"unet"}, lora_scale=1.0)
    fused = {("unet", "q"): signature(wanted[("unet", "q")]), ("text_encoder", "fc"): ((1, 0.25),)}
    saved = [("text_encoder", "fc"), ("unet", "q"), ("unet", "v")]
    plan = plan_refresh(wanted, fused, saved)
    assert [(key, sig) for key, _, sig in plan.fuse] == [(("unet", "k"), signature(wanted[("unet", "k")]))]
    assert plan.restore == [("text_encoder", "fc"), ("unet", "v")]  # in saving order
    # nothing active: every saved weight goes back, nothing is fused
    assert plan_refresh({}, fused, saved) == ([], saved)
