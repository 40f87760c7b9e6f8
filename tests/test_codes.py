"""The option codes that travel in the op schemas have one Python home
(vae_fused._ops) and one C++ home (csrc/codes.h). Every code is passed through
the op and must select what its name says, checked against
torch.nn.functional in float64."""
import pytest
import torch

from vae_fused._ops import RECON_MODES, REDUCTIONS

from .helpers import make_inputs, oracle_terms

NONE5 = (None,) * 5


@pytest.mark.parametrize("name", RECON_MODES)
def test_every_recon_code_selects_its_mode(name):
    recon_x, x, mu, logvar = make_inputs((3, 7), (3, 2), recon="mse" if name == "l1" else name)
    recon_term, _ = torch.ops.vae_fused.vae_loss(recon_x, x, mu, logvar, *NONE5, RECON_MODES[name],
                                                 REDUCTIONS["sum"], REDUCTIONS["sum"], 0.0)
    if name == "l1":
        expected = torch.nn.functional.l1_loss(recon_x, x, reduction="sum")
    else:
        expected = oracle_terms(recon_x, x, mu, logvar, recon=name)[1]
    torch.testing.assert_close(recon_term, expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", REDUCTIONS)
def test_every_reduction_code_selects_its_reduction(name):
    recon_x, x, mu, logvar = make_inputs((3, 7), (3, 2))
    code = REDUCTIONS[name]
    recon_term, kl_term = torch.ops.vae_fused.vae_loss(recon_x, x, mu, logvar, *NONE5, RECON_MODES["bce"],
                                                       code, code, 0.0)
    _, e_recon, e_kl = oracle_terms(recon_x, x, mu, logvar, reduction=name)
    torch.testing.assert_close(recon_term, e_recon, rtol=1e-10, atol=0)
    torch.testing.assert_close(kl_term, e_kl, rtol=1e-10, atol=0)


def test_the_tables_are_complete_and_codes_outside_them_are_refused():
    assert sorted(RECON_MODES.values()) == list(range(len(RECON_MODES)))
    assert sorted(REDUCTIONS.values()) == list(range(len(REDUCTIONS)))
    recon_x, x, mu, logvar = make_inputs((3, 7), (3, 2))
    with pytest.raises(ValueError, match="recon mode"):
        torch.ops.vae_fused.vae_loss(recon_x, x, mu, logvar, *NONE5, len(RECON_MODES), 2, 2, 0.0)
    with pytest.raises(ValueError, match="reduction"):
        torch.ops.vae_fused.vae_loss(recon_x, x, mu, logvar, *NONE5, 0, len(REDUCTIONS), 2, 0.0)
