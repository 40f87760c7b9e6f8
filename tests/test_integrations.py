"""torch.export, a whole compiled training step, torch.func, and
DistributedDataParallel."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import vae_fused
from conftest import make_inputs, oracle_loss


class TinyVAE(nn.Module):
    def __init__(self, d=24, latent=4):
        super().__init__()
        self.enc = nn.Linear(d, 2 * latent)
        self.dec = nn.Linear(latent, d)
        self.latent = latent

    def forward(self, x):
        h = self.enc(x)
        mu, logvar = h[:, : self.latent], h[:, self.latent:]
        return torch.sigmoid(self.dec(mu)), mu, logvar


class LossModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.vae = TinyVAE()

    def forward(self, x):
        recon_x, mu, logvar = self.vae(x)
        return vae_fused.vae_loss(recon_x, x, mu, logvar, reduction="batchmean")


@pytest.mark.slow
def test_torch_export():
    torch.manual_seed(0)
    model = LossModule()
    x = torch.rand(5, 24)
    exported = torch.export.export(model, (x,))
    assert any("vae_fused" in str(n.target) for n in exported.graph.nodes)
    x2 = torch.rand(5, 24)
    torch.testing.assert_close(exported.module()(x2), model(x2))


@pytest.mark.slow
def test_compiled_training_step_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager_model = TinyVAE()
    compiled_model = TinyVAE()
    compiled_model.load_state_dict(eager_model.state_dict())
    x = torch.rand(8, 24)

    def make_step(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def step(x):
            opt.zero_grad(set_to_none=True)
            recon_x, mu, logvar = model(x)
            loss = vae_fused.vae_loss(recon_x, x, mu, logvar)
            loss.backward()
            opt.step()
            return loss.detach()

        return step

    eager_step = make_step(eager_model)
    compiled_step = torch.compile(make_step(compiled_model), fullgraph=False)
    inner = torch.compile(lambda r, x, m, l: vae_fused.vae_loss(r, x, m, l), fullgraph=True)
    inner(*[t.float() for t in make_inputs((4, 6), (4, 2))])  # the loss itself has no graph break
    for _ in range(3):
        torch.testing.assert_close(compiled_step(x), eager_step(x))
    for a, b in zip(compiled_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a, b)


def test_torch_func_transforms_raise_a_clear_error():
    # torch.library's autograd registration does not support functorch in this
    # torch; the loss says so instead of failing deep inside torch.
    recon_x, x, mu, logvar = make_inputs((4, 6), (4, 2))
    with pytest.raises(RuntimeError, match="torch.func transforms"):
        torch.func.grad(lambda m: vae_fused.vae_loss(recon_x, x, m, logvar))(mu)
    with pytest.raises(RuntimeError, match="torch.func transforms"):
        torch.vmap(lambda r: vae_fused.vae_loss(r, x, mu, logvar))(torch.stack([recon_x, recon_x]))
    # the documented alternative: per-sample losses in one call
    per_sample = vae_fused.vae_loss(recon_x, x, mu, logvar, reduction="none")
    torch.testing.assert_close(per_sample, oracle_loss(recon_x, x, mu, logvar, reduction="none"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, x, state, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = TinyVAE().double()
    model.load_state_dict(state)
    ddp = nn.parallel.DistributedDataParallel(model)
    shard = x.chunk(world)[rank]
    recon_x, mu, logvar = ddp(shard)
    # batchmean on each shard; DDP averages the shards' gradients, which is
    # the batchmean over the whole batch when the shards are equal in size.
    vae_fused.vae_loss(recon_x, shard, mu, logvar, reduction="batchmean").backward()
    if rank == 0:
        for name, p in model.named_parameters():
            out[name] = p.grad.clone()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gloo_matches_single_process():
    torch.manual_seed(0)
    model = TinyVAE().double()
    x = torch.rand(8, 24, dtype=torch.float64)
    recon_x, mu, logvar = model(x)
    vae_fused.vae_loss(recon_x, x, mu, logvar, reduction="batchmean").backward()
    expected = {n: p.grad for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(2, _free_port(), x, state, out), nprocs=2, join=True)
        got = dict(out)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-12, atol=1e-14)
