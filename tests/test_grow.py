"""Growing mbt2018(-vr) out of a mean-scale model: the identity start reproduces the mean-scale model's rate."""

from __future__ import annotations

import pytest
import torch

from zoo.registry import create_model
from zoo.train.grow import grow_context_model, is_mean_scale_source


def _trained_like(arch: str, **widths: int) -> torch.nn.Module:
    torch.manual_seed(3)
    model = create_model(arch, 1, **widths)
    with torch.no_grad():  # gains away from 1, so the levels differ
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize(
    ("source", "target", "levels"),
    [("mbt2018-mean-vr", "mbt2018-vr", (1, 2.5, 8)), ("mbt2018-mean", "mbt2018", (None,))],
)
def test_identity_start_gives_the_mean_scale_likelihoods_exactly(source, target, levels):
    src = _trained_like(source, N=8, M=12)
    model = create_model(target, 1, N=8, M=12)
    assert is_mean_scale_source(model, src.state_dict())
    x = torch.rand(3, 3, 64, 64)
    grow_context_model(model, src.state_dict(), "identity", crops=x)
    model.eval()
    with torch.no_grad():
        for level in levels:
            args = () if level is None else (level,)
            a, b = model(x, *args), src(x, *args)
            torch.testing.assert_close(a.likelihoods["y"], b.likelihoods["y"], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(a.likelihoods["z"], b.likelihoods["z"])
    # the context can learn from the first step: its weights get a gradient
    model.train()
    out = model(x, *(() if levels[0] is None else (levels[0],)))
    out.likelihoods["y"].log().sum().backward()
    assert model.context_prediction.weight.grad is not None
    assert model.entropy_parameters[4].weight.grad[:, 24:].abs().sum() > 0


def test_default_start_differs_and_an_unknown_start_is_refused():
    src = _trained_like("mbt2018-mean-vr", N=8, M=12)
    model = create_model("mbt2018-vr", 1, N=8, M=12)
    grow_context_model(model, src.state_dict(), "default")
    torch.testing.assert_close(model.g_s[0].weight, src.g_s[0].weight)
    with pytest.raises(ValueError, match="identity, default"):
        grow_context_model(model, src.state_dict(), "zeros")
    # a model that already has context weights is not a mean-scale source
    assert not is_mean_scale_source(model, model.state_dict())


def test_context_parts_get_their_own_learning_rate():
    from zoo.train.optim import build_optimizers

    model = create_model("mbt2018-vr", 1, N=8, M=12)
    main, _ = build_optimizers(model, 1e-4, context_lr=1e-3)
    rates = {id(p): g["lr"] for g in main.param_groups for p in g["params"]}
    assert rates[id(model.context_prediction.weight)] == 1e-3
    assert rates[id(model.entropy_parameters[0].weight)] == 1e-3
    assert rates[id(model.g_s[0].weight)] == 1e-4
    # every trained parameter is in exactly one group
    assert len(rates) == sum(len(g["params"]) for g in main.param_groups) == len(list(model.main_parameters()))


def test_train_only_freezes_everything_else():
    from zoo.errors import InputError
    from zoo.train.trainer import freeze_all_but

    model = create_model("mbt2018-vr", 1, N=8, M=12)
    freeze_all_but(model, ("context_prediction", "entropy_parameters"))
    trainable = {n.split(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"context_prediction", "entropy_parameters", "entropy_bottleneck"}  # + the quantiles
    assert [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("entropy_bottleneck")] == [
        "entropy_bottleneck.quantiles"
    ]
    x = torch.rand(2, 3, 64, 64)
    model(x, 2.0).likelihoods["y"].log().sum().backward()
    assert model.g_s[0].weight.grad is None and model.context_prediction.weight.grad is not None
    with pytest.raises(InputError, match="no submodule 'context'"):
        freeze_all_but(model, ("context",))


@pytest.mark.parametrize(("arch", "args"), [("mbt2018-vr", (2.5,)), ("mbt2018", ())])
def test_a_rate_only_step_skips_the_synthesis_and_gives_the_context_the_same_gradient(arch, args):
    import math

    from zoo.train.losses import RateDistortionLoss
    from zoo.train.trainer import freeze_all_but, rate_only_parts

    parts = ("context_prediction", "entropy_parameters")
    model = create_model(arch, 1, N=8, M=12)
    assert rate_only_parts(model, parts) and not rate_only_parts(model, ("context_prediction", "g_s"))
    assert not rate_only_parts(create_model("mbt2018-mean-vr", 1, N=8, M=12), ("entropy_bottleneck",))
    freeze_all_but(model, parts)
    model.train()
    x, loss = torch.rand(2, 3, 64, 64), RateDistortionLoss(0.01)

    def context_gradient() -> tuple[list[torch.Tensor], object]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)  # the same noise in both forwards
        terms = loss(model(x, *args), x)
        terms.loss.backward()
        return [p.grad.clone() for n, p in model.named_parameters() if n.startswith(parts)], terms

    full, full_terms = context_gradient()
    model.rate_only = True
    calls = []
    model.g_s.register_forward_hook(lambda *_: calls.append(1))
    fast, terms = context_gradient()
    assert not calls, "a rate-only step must not run the synthesis"
    for a, b in zip(full, fast, strict=True):
        torch.testing.assert_close(a, b)
    assert math.isnan(terms.psnr) and terms.loss.item() == pytest.approx(full_terms.bpp.item())
    model.eval()  # what validation and the coder see: the reconstruction as ever
    with torch.no_grad():
        assert model(x, *args).x_hat is not None and calls
