"""Every bad input of API.md's table: the stated exception, a message that
names the problem, and inputs left as they were."""
import pytest
import torch

import vae_fused
from conftest import make_inputs

IMPLEMENTATIONS = [vae_fused.vae_loss, vae_fused.reference.vae_loss]


def _raises_and_leaves_inputs(fn, args, kwargs, exc, *needles):
    before = [a.clone() if isinstance(a, torch.Tensor) and a.device.type != "meta" else a for a in args]
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    for a, b in zip(args, before):
        if isinstance(a, torch.Tensor) and a.device.type != "meta":
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    return message


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
def test_shape_mismatches_name_both_shapes(fn):
    recon_x, x, mu, logvar = make_inputs((4, 10), (4, 3))
    _raises_and_leaves_inputs(fn, (recon_x, x[:, :9], mu, logvar), {}, ValueError, "(4, 10)", "(4, 9)")
    _raises_and_leaves_inputs(fn, (recon_x, x, mu, logvar[:, :2]), {}, ValueError, "(4, 3)", "(4, 2)")
    _raises_and_leaves_inputs(fn, (recon_x, x, mu[:3], logvar[:3]), {}, ValueError, "(4, 10)", "(3, 3)")
    _raises_and_leaves_inputs(fn, (recon_x[0, 0], x[0, 0], mu, logvar), {}, ValueError, "batch")


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("bad_dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_integer_and_bool_tensors_are_type_errors(fn, bad_dtype, position):
    args = list(make_inputs((3, 4), (3, 2)))
    name = ["recon_x", "x", "mu", "logvar"][position]
    args[position] = args[position].round().to(bad_dtype)
    _raises_and_leaves_inputs(fn, tuple(args), {}, TypeError, name, str(bad_dtype))


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
def test_two_devices_is_a_value_error(fn):
    recon_x, x, mu, logvar = make_inputs((3, 4), (3, 2))
    other = "cuda" if torch.cuda.is_available() else "meta"
    _raises_and_leaves_inputs(fn, (recon_x, x, mu.to(other), logvar), {}, ValueError, "device", other)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("option,value,allowed", [
    ("reduction", "avg", "'batchmean'"),
    ("kl_reduction", "elementwise_mean", "'none'"),
    ("recon", "gaussian", "'bce_logits'"),
    ("reduction", None, "'sum'"),
])
def test_unknown_modes_list_the_allowed_values(fn, option, value, allowed):
    _raises_and_leaves_inputs(fn, tuple(make_inputs()), {option: value}, ValueError, option, allowed)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("kwargs", [
    dict(beta=-0.1), dict(beta=float("nan")), dict(beta=torch.tensor(-1.0)),
    dict(free_bits=-0.5), dict(free_bits=float("inf")), dict(free_bits=0.5, reduction="none"),
    dict(free_bits=0.5, kl_reduction="none"),
])
def test_bad_beta_and_free_bits(fn, kwargs):
    key = "beta" if "beta" in kwargs else "free_bits"
    _raises_and_leaves_inputs(fn, tuple(make_inputs()), kwargs, ValueError, key)


def test_beta_must_be_a_scalar():
    with pytest.raises(ValueError, match="0-d"):
        vae_fused.vae_loss(*make_inputs(), beta=torch.ones(2))
    with pytest.raises(TypeError, match="beta"):
        vae_fused.vae_loss(*make_inputs(), beta="1")


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", [1.5, -0.01, float("nan")])
@pytest.mark.parametrize("recon", ["bce", "cbce"])
def test_bce_input_out_of_range_is_pytorchs_error(fn, dtype, bad, recon):
    recon_x, x, mu, logvar = make_inputs((4, 3000), (4, 2), dtype=dtype)
    recon_x[2, 2999] = bad  # in the last (partial) block of a later chunk
    _raises_and_leaves_inputs(fn, (recon_x, x, mu, logvar), dict(recon=recon), RuntimeError,
                              "all elements of input should be between 0 and 1")


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("bad", [2.0, -1.0, float("nan")])
def test_bce_target_out_of_range_is_pytorchs_error(fn, bad):
    recon_x, x, mu, logvar = make_inputs((4, 30), (4, 2))
    x[0, 0] = bad
    _raises_and_leaves_inputs(fn, (recon_x, x, mu, logvar), {}, RuntimeError,
                              "all elements of target should be between 0 and 1")


def test_out_of_range_is_fine_for_logits_and_mse():
    recon_x, x, mu, logvar = make_inputs((4, 30), (4, 2))
    recon_x = recon_x * 10 - 5
    for recon in ("bce_logits", "mse"):
        assert torch.isfinite(vae_fused.vae_loss(recon_x, x, mu, logvar, recon=recon))


def test_not_a_tensor():
    recon_x, x, mu, logvar = make_inputs()
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        vae_fused.vae_loss(recon_x, x.tolist(), mu, logvar)


def test_raw_op_checks_its_arguments_too():
    recon_x, x, mu, logvar = make_inputs((4, 10), (4, 3))
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.vae_fused.vae_loss_forward(recon_x, x[:, :5], mu, logvar, 0, 2, 2, 0.0,
                                             False, False, False, False)
    with pytest.raises(RuntimeError, match="recon mode"):
        torch.ops.vae_fused.vae_loss_forward(recon_x, x, mu, logvar, 9, 2, 2, 0.0,
                                             False, False, False, False)
