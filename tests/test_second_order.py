"""Second derivatives (create_graph=True) are exact: gradgradcheck in float64
for every recon mode and reduction, and a gradient penalty against the same
penalty computed through torch.nn.functional."""
import pytest
import torch

import vae_fused

from .helpers import RECON_MODES, REDUCTIONS, make_inputs, oracle_loss

ALL_MODES = RECON_MODES + ["l1"]


def _inputs(recon, seed=0):
    # away from the BCE clamp kinks and from l1's tie, where finite differences straddle a kink
    inputs = make_inputs((3, 5), (3, 2), recon="mse" if recon == "l1" else recon, lo=0.1, hi=0.9, seed=seed)
    return [t.requires_grad_() for t in inputs]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("recon", ALL_MODES)
def test_gradgradcheck(recon, reduction):
    fn = lambda *a: vae_fused.vae_loss(*a, recon=recon, reduction=reduction, beta=0.7)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, _inputs(recon))


@pytest.mark.parametrize("kwargs", [dict(free_bits=0.3, reduction="batchmean"),
                                    dict(reduction="mean", kl_reduction="sum")], ids=str)
def test_gradgradcheck_kl_options(kwargs):
    fn = lambda *a: vae_fused.vae_loss(*a, **kwargs)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, _inputs("bce", seed=3))


# (cbce is covered by gradgradcheck: its oracle's log C(p) has no second derivative)
@pytest.mark.parametrize("recon", ["bce", "bce_logits", "mse"])
def test_gradient_penalty_matches_functional(recon):
    inputs = _inputs(recon, seed=1)
    loss = vae_fused.vae_loss(*inputs, recon=recon)
    g = torch.autograd.grad(loss, inputs, create_graph=True)
    penalty = sum(t.pow(2).sum() for t in g)
    got = torch.autograd.grad(penalty, inputs)
    expected_loss = oracle_loss(*inputs, recon=recon)
    ge = torch.autograd.grad(expected_loss, inputs, create_graph=True)
    expected = torch.autograd.grad(sum(t.pow(2).sum() for t in ge), inputs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("wants", [(0,), (1,), (0, 1), (2,), (3,), (2, 3)],
                         ids=["recon_x", "x", "recon_x+x", "mu", "logvar", "mu+logvar"])
def test_gradgradcheck_with_one_side_constant(wants):
    # Only the reconstruction side, or only the latent side, requires grad: the
    # other term has no graph, and create_graph must still work.
    inputs = [t.detach().requires_grad_(i in wants) for i, t in enumerate(_inputs("bce", seed=4))]
    chosen = [inputs[i] for i in wants]

    def fn(*leaves):
        args = list(inputs)
        for i, leaf in zip(wants, leaves):
            args[i] = leaf
        return vae_fused.vae_loss(*args, beta=0.7)

    assert torch.autograd.gradgradcheck(fn, chosen)


def test_first_order_path_keeps_no_graph_of_its_own():
    # without create_graph the returned gradients are plain tensors (no grad_fn)
    inputs = _inputs("bce")
    g = torch.autograd.grad(vae_fused.vae_loss(*inputs), inputs)
    assert all(t.grad_fn is None and not t.requires_grad for t in g)
