"""Every bad input of API.md's table: the stated exception, a message that
names the problem, and inputs left as they were. vae_fused.reference raises
the same exceptions."""
import pytest
import torch
import torch.nn.functional as F

import vae_fused
from .helpers import GRAD_TOL, TOL, grads, make_inputs, oracle_loss, raises_and_leaves_inputs, use_kernel_build

IMPLEMENTATIONS = [pytest.param(vae_fused.vae_loss, id="fused"),
                   pytest.param(vae_fused.reference.vae_loss, id="reference")]
ALLOWED = {
    "reduction": ["none", "mean", "sum", "batchmean"],
    "kl_reduction": ["none", "mean", "sum", "batchmean"],
    "recon": ["bce", "bce_logits", "mse", "cbce"],
}


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
def test_shape_mismatches_name_both_shapes(fn):
    recon_x, x, mu, logvar = make_inputs((4, 10), (4, 3), requires_grad=True)
    raises_and_leaves_inputs(fn, (recon_x, x[:, :9], mu, logvar), {}, ValueError, "(4, 10)", "(4, 9)")
    raises_and_leaves_inputs(fn, (recon_x, x, mu, logvar[:, :2]), {}, ValueError, "(4, 3)", "(4, 2)")
    # batch sizes differ
    raises_and_leaves_inputs(fn, (recon_x, x, mu[:3], logvar[:3]), {}, ValueError, "(4, 10)", "(3, 3)")
    # same number of elements, different shape: still an error (no silent reshape)
    raises_and_leaves_inputs(fn, (recon_x, x.reshape(4, 2, 5), mu, logvar), {}, ValueError, "(4, 10)",
                              "(4, 2, 5)")
    raises_and_leaves_inputs(fn, (recon_x, x, mu, logvar.reshape(4, 3, 1)), {}, ValueError, "(4, 3)",
                              "(4, 3, 1)")
    # (1, D) data is not broadcast against (B, D) output
    raises_and_leaves_inputs(fn, (recon_x, x[:1], mu, logvar), {}, ValueError, "(4, 10)", "(1, 10)")


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
def test_missing_batch_dimension(fn):
    recon_x, x, mu, logvar = make_inputs((4, 10), (4, 3))
    raises_and_leaves_inputs(fn, (recon_x[0, 0], x[0, 0], mu, logvar), {}, ValueError, "batch")


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("bad_dtype", [torch.int64, torch.int32, torch.int8, torch.bool, torch.uint8], ids=str)
@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_integer_and_bool_tensors_are_type_errors(fn, bad_dtype, position):
    args = list(make_inputs((3, 4), (3, 2)))
    name = ["recon_x", "x", "mu", "logvar"][position]
    args[position] = args[position].round().to(bad_dtype)
    raises_and_leaves_inputs(fn, tuple(args), {}, TypeError, name, str(bad_dtype))


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_two_devices_is_a_value_error(fn, position):
    args = list(make_inputs((3, 4), (3, 2)))
    other = "cuda" if torch.cuda.is_available() else "meta"
    args[position] = args[position].to(other)
    raises_and_leaves_inputs(fn, tuple(args), {}, ValueError, "device", other, "cpu")


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("option,value", [
    ("reduction", "avg"), ("reduction", "elementwise_mean"), ("reduction", None), ("reduction", "SUM"),
    ("kl_reduction", "elementwise_mean"), ("kl_reduction", "batch_mean"), ("kl_reduction", 1),
    ("recon", "gaussian"), ("recon", "BCE"), ("recon", "logits"), ("recon", None),
])
def test_unknown_modes_list_the_allowed_values(fn, option, value):
    message = raises_and_leaves_inputs(fn, tuple(make_inputs(requires_grad=True)), {option: value}, ValueError,
                                        option, repr(value))
    for allowed in ALLOWED[option]:
        assert repr(allowed) in message or f'"{allowed}"' in message, (allowed, message)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("kwargs", [
    dict(beta=-0.1), dict(beta=-1), dict(beta=float("nan")), dict(beta=float("-inf")),
    dict(beta=torch.tensor(-1.0)), dict(beta=torch.tensor(-0.5, dtype=torch.float64)),
    dict(beta=torch.tensor(float("nan"))),
    dict(free_bits=-0.5), dict(free_bits=-1e-12), dict(free_bits=float("nan")),
    dict(free_bits=0.5, reduction="none"), dict(free_bits=0.5, kl_reduction="none"),
    dict(free_bits=0.5, reduction="sum", kl_reduction="none"),
], ids=str)
def test_bad_beta_and_free_bits(fn, kwargs):
    key = "beta" if "beta" in kwargs else "free_bits"
    raises_and_leaves_inputs(fn, tuple(make_inputs(requires_grad=True)), kwargs, ValueError, key)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
def test_free_bits_none_message_explains(fn):
    message = raises_and_leaves_inputs(fn, tuple(make_inputs()), dict(free_bits=0.1, reduction="none"),
                                        ValueError, "free_bits")
    assert "none" in message


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
def test_beta_must_be_a_scalar(fn):
    raises_and_leaves_inputs(fn, tuple(make_inputs()), dict(beta=torch.ones(2)), ValueError, "beta")
    with pytest.raises((TypeError, ValueError), match="beta"):
        fn(*make_inputs(), beta="1")


def test_module_checks_options_at_construction():
    with pytest.raises(ValueError, match="reduction"):
        vae_fused.VAELoss(reduction="avg")
    with pytest.raises(ValueError, match="beta"):
        vae_fused.VAELoss(beta=-1.0)
    with pytest.raises(ValueError, match="free_bits"):
        vae_fused.VAELoss(free_bits=0.5, reduction="none")


def test_fused_and_reference_raise_the_same():
    inputs = make_inputs((4, 10), (4, 3))
    cases = [
        ((inputs[0], inputs[1][:, :3], *inputs[2:]), {}),
        (tuple(inputs), dict(reduction="avg")),
        (tuple(inputs), dict(recon="laplace")),
        (tuple(inputs), dict(beta=-2.0)),
        (tuple(inputs), dict(free_bits=0.2, reduction="none")),
        ((inputs[0].long(), *inputs[1:]), {}),
    ]
    for args, kwargs in cases:
        caught = []
        for fn in (vae_fused.vae_loss, vae_fused.reference.vae_loss):
            with pytest.raises(Exception) as info:
                fn(*args, **kwargs)
            caught.append(info.value)
        assert type(caught[0]) is type(caught[1]), (kwargs, caught)
        assert str(caught[0]) == str(caught[1]), (kwargs, caught)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("bad", [1.5, -0.01, 1.0000001, float("nan"), float("inf")])
@pytest.mark.parametrize("recon", ["bce", "cbce"])
def test_bce_input_out_of_range_is_pytorchs_error(fn, dtype, bad, recon):
    recon_x, x, mu, logvar = make_inputs((4, 3000), (4, 2), dtype=dtype)
    recon_x[2, 2999] = bad  # in the last (partial) vector block of a later row
    recon_x.requires_grad_()
    if recon_x[2, 2999].item() == 1.0:
        # 1.0000001 rounds to 1 in half precision: in range, so no error, and the
        # loss (BCE's -100 log clamp at p = 1; cbce: -inf, as log C(1) = +inf) is
        # PyTorch's in float64 on the numbers actually passed in
        assert dtype in (torch.bfloat16, torch.float16)
        before = [t.detach().clone() for t in (recon_x, x, mu, logvar)]
        got = fn(recon_x, x, mu, logvar, recon=recon)
        expected = oracle_loss(*[t.detach().double() for t in (recon_x, x, mu, logvar)], recon=recon)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-3)
        for a, b in zip((recon_x, x, mu, logvar), before):
            assert torch.equal(a.detach(), b)
        return
    raises_and_leaves_inputs(fn, (recon_x, x, mu, logvar), dict(recon=recon), RuntimeError,
                              "all elements of input should be between 0 and 1")


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", ["sum", "none", "mean"])
def test_bce_input_out_of_range_without_grad_and_any_reduction(fn, reduction):
    recon_x, x, mu, logvar = make_inputs((3, 17), (3, 2), dtype=torch.float32)
    recon_x[0, 0] = -0.5
    with torch.no_grad():
        raises_and_leaves_inputs(fn, (recon_x, x, mu, logvar), dict(reduction=reduction), RuntimeError,
                                  "all elements of input should be between 0 and 1")


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("bad", [2.0, -1.0, float("nan")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_bce_target_out_of_range_is_pytorchs_error(fn, bad, dtype):
    recon_x, x, mu, logvar = make_inputs((4, 30), (4, 2), dtype=dtype)
    x[3, 29] = bad
    # (PyTorch's own message, for the record)
    with pytest.raises(RuntimeError, match="all elements of target should be between 0 and 1"):
        torch.nn.functional.binary_cross_entropy(recon_x, x)
    raises_and_leaves_inputs(fn, (recon_x, x, mu, logvar), {}, RuntimeError,
                              "all elements of target should be between 0 and 1")


def test_pytorch_raises_the_same_input_message():
    # the message we promise is PyTorch's own
    p = torch.tensor([[1.5]])
    with pytest.raises(RuntimeError, match="all elements of input should be between 0 and 1"):
        torch.nn.functional.binary_cross_entropy(p, torch.tensor([[0.5]]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("recon", ["bce_logits", "mse"])
def test_out_of_range_is_fine_for_logits_and_mse(recon, dtype):
    """Logits and MSE take any real input and target: no error, and value and
    gradients are torch.nn.functional's, in float64, on the same numbers."""
    recon_x, x, mu, logvar = make_inputs((4, 30), (4, 2))
    recon_x = recon_x * 10 - 5
    x = x * 3 - 1  # targets outside [0, 1] too
    low = [t.to(dtype).requires_grad_() for t in (recon_x, x, mu, logvar)]
    rounded = [t.detach().double().requires_grad_() for t in low]
    got = vae_fused.vae_loss(*low, recon=recon, reduction="none")
    expected = oracle_loss(*rounded, recon=recon, reduction="none")
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # half inputs compute in float32: float32 accuracy on the rounded numbers
    tol = TOL[torch.float64] if dtype == torch.float64 else TOL[torch.float32]
    torch.testing.assert_close(got.double(), expected, **tol)
    for g, e, t in zip(grads(got, low), grads(expected, rounded), low):
        assert g.dtype == t.dtype
        # gradients come back rounded to the input dtype
        gtol = GRAD_TOL[torch.float64] if dtype == torch.float64 else dict(
            rtol=2 * torch.finfo(dtype).eps, atol=1e-6 * e.abs().max().item())
        torch.testing.assert_close(g.double(), e, **gtol)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean", "none"])
@pytest.mark.parametrize("free_bits", [0.0, 0.5])
def test_empty_batch_is_not_an_error(fn, reduction, free_bits):
    if free_bits and reduction == "none":
        pytest.skip("free bits need a batch reduction")
    out = fn(*make_inputs((0, 5), (0, 2)), reduction=reduction, free_bits=free_bits)
    assert out.shape == ((0,) if reduction == "none" else ())
    if reduction == "sum":
        assert out.item() == 0.0  # also with free bits, whose unit means are 0/0
    elif reduction != "none":
        assert torch.isnan(out)  # 0/0 like torch.mean


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_empty_batch_gradients_of_shared_extras_are_zero(fn, reduction):
    # Extras shared by every sample ((1, ...) shapes) get their gradient summed
    # over the samples: over no samples, 0. Freed NaN blocks of the same sizes
    # come first, so memory left unwritten would show.
    shapes = {"recon_logvar": (1, 3, 40), "recon_offset": (1, 3, 40), "prior_mu": (1, 700),
              "prior_logvar": (1, 700)}
    for shape in shapes.values():
        junk = [torch.full(shape, float("nan")) for _ in range(16)]
        del junk
    extras = {k: torch.zeros(shape, requires_grad=True) for k, shape in shapes.items()}
    loss = fn(torch.rand(0, 3, 40), torch.rand(0, 3, 40), torch.randn(0, 700), torch.randn(0, 700),
              recon="mse", reduction=reduction, **extras)
    for name, g in zip(extras, torch.autograd.grad(loss, list(extras.values()))):
        assert g.shape == shapes[name] and (g == 0).all(), name


def test_not_a_tensor():
    recon_x, x, mu, logvar = make_inputs()
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        vae_fused.vae_loss(recon_x, x.tolist(), mu, logvar)
    with pytest.raises(TypeError, match="mu"):
        vae_fused.vae_loss(recon_x, x, mu.numpy(), logvar)


def test_raw_op_checks_its_arguments_too():
    recon_x, x, mu, logvar = make_inputs((4, 10), (4, 3))
    none5 = (None,) * 5
    with pytest.raises(ValueError, match="same shape"):
        torch.ops.vae_fused.vae_loss(recon_x, x[:, :5], mu, logvar, *none5, 0, 2, 2, 0.0)
    with pytest.raises(ValueError, match="recon mode"):
        torch.ops.vae_fused.vae_loss(recon_x, x, mu, logvar, *none5, 9, 2, 2, 0.0)
    with pytest.raises(ValueError, match="reduction"):
        torch.ops.vae_fused.vae_loss(recon_x, x, mu, logvar, *none5, 0, 7, 2, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        torch.ops.vae_fused.vae_loss_forward(recon_x, x[:, :5], mu, logvar, *none5, 0, 2, 2, 0.0, 0)
    with pytest.raises(TypeError, match="converted"):  # the kernels' op takes converted dtypes only
        torch.ops.vae_fused.vae_loss_forward(recon_x, x.float(), mu, logvar, *none5, 0, 2, 2, 0.0, 0)


def test_inference_mode_checks_the_inputs_too():
    # inference_mode skips the autograd kernel, where the checks usually run
    recon_x, x, mu, logvar = make_inputs((4, 10), (4, 3))
    with torch.inference_mode():
        raises_and_leaves_inputs(vae_fused.vae_loss, (recon_x, x.long(), mu, logvar), {}, TypeError, "x",
                                  "int64")
        raises_and_leaves_inputs(vae_fused.vae_loss, (recon_x, x, mu, logvar.to("meta")), {}, ValueError,
                                  "device", "meta")
        raises_and_leaves_inputs(vae_fused.vae_loss, (recon_x, x[:, :9], mu, logvar), {}, ValueError,
                                  "(4, 10)", "(4, 9)")
        raises_and_leaves_inputs(vae_fused.vae_loss, (recon_x, x, mu, logvar), {"weight": torch.ones(3)},
                                  ValueError, "weight", "(3,)")
        expected = vae_fused.reference.vae_loss(recon_x, x, mu, logvar)
        torch.testing.assert_close(vae_fused.vae_loss(recon_x, x, mu, logvar), expected)


def test_raw_ops_check_meta_and_mixed_inputs():
    # One meta input sends a CPU call to the fake kernel: it checks as the kernels do.
    recon_x, x, mu, logvar = make_inputs((4, 10), (4, 3))
    none5 = (None,) * 5
    forward = torch.ops.vae_fused.vae_loss_forward
    with pytest.raises(ValueError, match="one device"):
        forward(recon_x, x.to("meta"), mu, logvar, *none5, 0, 2, 2, 0.0, 0)
    meta = [t.to("meta") for t in (recon_x, x, mu, logvar)]
    with pytest.raises(ValueError, match="batch dimension"):
        forward(meta[0][0, 0], meta[1][0, 0], meta[2], meta[3], *none5, 0, 2, 2, 0.0, 0)
    with pytest.raises(ValueError, match="same shape"):
        forward(meta[0], meta[1][:, :5], meta[2], meta[3], *none5, 0, 2, 2, 0.0, 0)
    assert forward(*meta, *none5, 0, 2, 2, 0.0, 0)[0].shape == ()
    with pytest.raises(ValueError, match="recon mode"):
        torch.ops.vae_fused.reference_terms(recon_x, x, mu, logvar, *none5, 99, 2, 2, 0.0)


@pytest.mark.parametrize("op", ["scale_gradient", "scale_gradient_"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("upstream", [(2,), (10,), (1, 4)], ids=str)
def test_scale_gradient_rejects_upstream_of_the_wrong_size(op, dtype, upstream):
    # the kernels read one factor per row: a short upstream read past its end
    grad = torch.randn(4000, 4) if upstream == (2,) else torch.randn(4, 4)
    before = grad.clone()
    args = (grad, torch.ones(upstream), 0.5) + ((dtype,) if op == "scale_gradient" else ())
    if op == "scale_gradient_" and dtype != torch.float32:
        pytest.skip("in place keeps the gradient's dtype")
    with pytest.raises(ValueError, match="one value per sample"):
        getattr(torch.ops.vae_fused, op)(*args)
    assert torch.equal(grad, before)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
def test_negative_beta_parameter(fn):
    raises_and_leaves_inputs(fn, make_inputs(), {"beta": torch.nn.Parameter(torch.tensor(-1.0))},
                              ValueError, "beta")


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", ["sparse", "nested"])
def test_sparse_and_nested_tensors_are_type_errors(fn, kind):
    recon_x, x, mu, logvar = make_inputs((2, 6), (2, 3))
    if kind == "sparse":
        raises_and_leaves_inputs(fn, (recon_x, x, mu.to_sparse(), logvar), {}, TypeError, "mu", "dense",
                                  "sparse")
    else:  # (assert_close cannot compare nested tensors: no check of the inputs here)
        nested = torch.nested.nested_tensor([recon_x[0], recon_x[1]])
        with pytest.raises(TypeError, match="recon_x must be a dense tensor, got a nested tensor"):
            fn(nested, nested, mu, logvar)


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("which", ["input", "target"])
@pytest.mark.parametrize("value,ok", [(-0.0, True), (1.0, True), (0.0, True), (-1e-45, False),
                                      (-float("nan"), False), (1.0000001, False), (-float("inf"), False)])
def test_unit_range_check_in_every_build(monkeypatch, cap, which, value, ok):
    # The range check of every kernel build, at the first element of a full
    # vector block and in the middle of a row, with binary targets around
    # (blocks of 0/1 targets take their own path): -0.0 is in [0, 1] as in
    # F.binary_cross_entropy; a negative denormal, -NaN, -inf and 1 + ulp are not.
    use_kernel_build(monkeypatch, cap)
    g = torch.Generator().manual_seed(2)
    recon_x = torch.rand(3, 1024, generator=g) * 0.98 + 0.01
    x = (torch.rand(3, 1024, generator=g) > 0.5).float()
    mu, logvar = torch.zeros(3, 2), torch.zeros(3, 2)
    t = recon_x if which == "input" else x
    t[0, 0] = value
    t[1, 517] = value
    if ok:
        got = vae_fused.vae_loss(recon_x, x, mu, logvar)
        expected = F.binary_cross_entropy(recon_x.double(), x.double(), reduction="sum")
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
    else:
        with pytest.raises(RuntimeError, match=f"all elements of {which} should be between 0 and 1"):
            vae_fused.vae_loss(recon_x, x, mu, logvar)


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("which", ["input", "target"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [None, 1.5, -0.25])
def test_negative_zero_beside_an_invalid_element(monkeypatch, cap, which, dtype, bad):
    # The vector builds' running check alarms on -0.0 (its bits look negative)
    # and then checks the task's elements exactly: -0.0 alone passes, in every
    # dtype; an invalid element in the same row chunk is still an error.
    use_kernel_build(monkeypatch, cap)
    g = torch.Generator().manual_seed(3)
    recon_x = (torch.rand(2, 300, generator=g) * 0.98 + 0.01).to(dtype)
    x = torch.rand(2, 300, generator=g).to(dtype)
    mu, logvar = torch.zeros(2, 2), torch.zeros(2, 2)
    t = recon_x if which == "input" else x
    t[1, 40] = -0.0
    if bad is None:
        got = vae_fused.vae_loss(recon_x, x, mu, logvar)
        expected = F.binary_cross_entropy(recon_x.double(), x.double(), reduction="sum")
        # the same rounded inputs in float64: only the op's float32 math differs
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
    else:
        t[1, 270] = bad
        with pytest.raises(RuntimeError, match=f"all elements of {which} should be between 0 and 1"):
            vae_fused.vae_loss(recon_x, x, mu, logvar)
