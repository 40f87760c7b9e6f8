"""The words around the figures: the machine (CPU, the op's kernel ISA,
torch.compile's vector ISA), the load warnings, and what each figure means."""
from __future__ import annotations

from benchmarks.report.fmt import fmt_bytes
from benchmarks.report.rows import BUSY, Results
from benchmarks.report.sections import busy_lines


def isa_text(env) -> str:
    """'vae_fused CPU kernels AVX512, torch.compile vector ISA avx512 (avx512 avx512_vnni)'."""
    compile_isa = env.get("inductor_isa") or "none (scalar code)"
    full = env.get("inductor_isa_full", "")
    if full and full != compile_isa:
        compile_isa += f" ({full})"
    forced = env.get("aten_cpu_capability")
    forced = f", ATEN_CPU_CAPABILITY={forced}" if forced else ""
    return f"vae_fused CPU kernels {env['cpu_kernels']}, torch.compile vector ISA {compile_isa}{forced}"


def load_text(env) -> str:
    parts = []
    if env.get("load") is not None:
        parts.append(f"load average {env['load']:.2f} at the start")
    if env.get("others_cores") is not None:
        parts.append(f"other processes used {env['others_cores']:.2f} cores during the run")
    return ", ".join(parts)


def load_warning(env, res: Results) -> str:
    """Other work on the machine skews every figure: say so next to them."""
    # The load average also counts this benchmark's own recent work; the
    # measured CPU use of other processes does not.
    if env.get("others_cores") is not None and env["others_cores"] > BUSY:
        return (f"WARNING: the machine was busy ({load_text(env)}; quiet is < {BUSY}): "
                "other processes competed for the cores, so these timings are noisy.")
    if busy_lines(res):
        return (f"WARNING: {busy_lines(res)} table line(s) were measured while other processes used "
                f"more than {BUSY} cores (column 'busy'); those figures are noisy.")
    return ""


def header(env) -> str:
    load = f", load average {env['load']:.2f}" if env.get("load") is not None else ""
    return (f"vae_fused {env['vae_fused']} benchmarks — CPU: {env['cpu']} ({env['cores']} cores, "
            f"{env['threads']} torch threads; {isa_text(env)}); "
            f"GPU: {env['gpu']}; torch {env['torch']}; {env['date']}{load}")


def environment_lines(env, command, elapsed) -> list[str]:
    """The report's first lines: the machine, the software, the command."""
    gpu = "" if env["gpu"] == "none" else f"; GPU: {env['gpu']} (CUDA {env['cuda']})"
    load = f"; {load_text(env)}" if load_text(env) else ""
    compile_isa = env.get("inductor_isa") or "none: scalar code"
    full = env.get("inductor_isa_full", "")
    full = f" (`{full}`)" if full and full != env.get("inductor_isa") else ""
    forced = env.get("aten_cpu_capability")
    return [
        f"- CPU: {env['cpu']}, {env['cores']} cores, last-level cache {fmt_bytes(env['l3_bytes'])}, "
        f"{env['threads']} torch threads (`torch.get_num_threads()`){gpu}",
        f"- vae_fused CPU kernels (`vae_fused.cpu_capability()`): `{env['cpu_kernels']}`; torch.compile's "
        f"vector ISA (`torch._inductor.cpu_vec_isa.pick_vec_isa()`): `{compile_isa}`{full}"
        + (f"; `ATEN_CPU_CAPABILITY={forced}`" if forced else ""),
        f"- torch {env['torch']}, vae_fused {env['vae_fused']}; {env['date']}{load}",
        f"- `{command}`, {elapsed:.0f} s",
    ]


METHOD = (
    "Times are medians of `torch.utils.benchmark.Timer.blocked_autorange` (IQR and every raw "
    "figure in [results.csv](results.csv)), all candidates in one process on identical inputs. "
    "*eager* is the pytorch/examples loss (`F.binary_cross_entropy(..., reduction=\"sum\")` + "
    "`-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())`; for `bce_logits`/`mse` the "
    "`F.binary_cross_entropy_with_logits`/`F.mse_loss` sum + the same KL); *compiled* is that "
    "function under `torch.compile(dynamic=False)` (compile time excluded, listed below); *fused* "
    "is `vae_fused.vae_loss`. *forward* runs under `torch.no_grad()`; *forward+backward* times "
    "`loss = fn(recon_x, x, mu, logvar); loss.backward()` and then sets every `.grad` to None, "
    "so each step allocates its gradients as a training loop does (page faults included). "
    "*floor* is a copy that streams the bytes the pass must move at least (forward: read recon_x "
    "and x; forward+backward: also write the recon_x gradient), between buffers allocated once; "
    "its stores go through the cache (each written line is read from memory first), so a pass "
    "that writes around the cache, as vae_fused does on CPU for outputs larger than the "
    "last-level cache, can run under it. "
    "*fused vs eager* = eager's time / fused's time (> 1× = fused is faster); *fused / floor* = "
    "fused's time / the floor's; GB/s = those bytes / fused's time. Memory: CPU — bytes autograd keeps from the forward to "
    "the backward besides the inputs (fused keeps the gradient it computed in the forward, which "
    "becomes `.grad` without a copy); CUDA — peak `max_memory_allocated` above what was held.")

FAMILY_METHOD = (
    "Loss-family lines: *ldm* is latent diffusion's autoencoder generator loss as CompVis "
    "`LPIPSWithDiscriminator` writes it, without the discriminator: `rec = |x − x̂| + p_loss` "
    "(p_loss given, (B,1,1,1)), `nll = rec / exp(s) + s` (s a 0-d learned log-scale), "
    "`sum(nll) / B + 1e-6 · 0.5·sum(mu² + var − 1 − logvar) / B`, against `vae_loss(..., recon=\"l1\", "
    "recon_logvar=s, recon_offset=p_loss, reduction=\"batchmean\", beta=1e-6)`; x̂, mu, logvar, s and "
    "p_loss get gradients. *vdvae* is an MSE sum plus the KL against a learned prior, "
    "`0.5·(plv − lv + (exp(lv) + (mu − pmu)²)·exp(−plv) − 1)` summed, against `vae_loss(..., "
    "recon=\"mse\", prior_mu=pmu, prior_logvar=plv)`; all but x get gradients. Their floor and GB/s "
    "count the latent tensors' bytes too.")
