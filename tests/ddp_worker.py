"""Run by tests/test_scale_out.py under `torchrun --nproc-per-node=2` (gloo, CPU, 127.0.0.1): MDFLoss and the restoration
trainer inside DistributedDataParallel. Rank 0 writes what it measured to OUT for the test to compare with one process.

    python -m torch.distributed.run --nproc-per-node=2 --master-addr=127.0.0.1 --master-port=PORT tests/ddp_worker.py OUT
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler

sys.path.insert(0, str(Path(__file__).parent))
from workers import restoration_setup, tiny_loss  # noqa: E402


def tiny_model(seed=0):
    "A small image-to-image network: what a user trains with MDFLoss."
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, padding=1))


def batch(n=4, size=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.rand(n, 3, size, size, generator=g)


def shard(n, rank, world):
    "This rank's sample indices: a DistributedSampler without shuffling (rank, rank + world, ...)."
    return list(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False))


def main(out: Path):
    dist.init_process_group('gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    report = {'world': world}

    # 1. a model in DDP, MDFLoss beside it, unchanged
    crit = tiny_loss()
    before = {k: v.clone() for k, v in crit.state_dict(keep_vars=False).items()}
    buffers = {k: v.clone() for k, v in crit.named_buffers()}
    model = DDP(tiny_model())
    x, y = batch()
    idx = shard(len(x), rank, world)
    loss = crit(model(x[idx]), y[idx])
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    report['loss_has_no_trainable_parameters'] = not any(p.requires_grad for p in crit.parameters())
    report['loss_grads_none'] = all(p.grad is None for p in crit.parameters())
    report['buffers_unchanged'] = all(torch.equal(v, dict(crit.named_buffers())[k]) for k, v in buffers.items())
    report['state_unchanged'] = all(torch.equal(v, crit.state_dict()[k]) for k, v in before.items())
    # the frozen loss is identical on every rank without any synchronisation
    checksum = torch.tensor([sum(float(v.double().sum()) for v in crit.state_dict().values())], dtype=torch.float64)
    sums = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(sums, checksum)
    report['loss_identical_on_ranks'] = all(torch.equal(s, sums[0]) for s in sums)

    # 2. the same, with the loss as a submodule of the module DDP wraps (DDP broadcasts its buffers; harmless)
    class WithLoss(torch.nn.Module):
        def __init__(self):
            super().__init__(); self.net, self.crit = tiny_model(), tiny_loss()
        def forward(self, x, y): return self.crit(self.net(x), y)
    wrapped = DDP(WithLoss())
    wrapped(x[idx], y[idx]).backward()
    grads2 = [p.grad.clone() for p in wrapped.module.net.parameters()]

    # 3. the restoration trainer's own DDP: it wraps the model, shares each step's batch out with a DistributedSampler,
    #    averages the logged loss, and checkpoints from rank 0. Interrupted after 4 steps on both ranks, then resumed
    #    from rank 0's checkpoint into fresh weights.
    from mdf_loss.restoration import trainer as R
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    ck = str(out/'restoration.pt')  # the same path on every rank: only rank 0 writes and reads it

    class Stop(Exception): pass
    first, loss_fn, sampler = restoration_setup()
    calls = [0]
    def stop_after_4(o, t):
        if calls[0] == 4: raise Stop
        calls[0] += 1
        return loss_fn(o, t)
    try: R.train_network(first, stop_after_4, sampler, steps, lr=1e-3, checkpoint=ck, every=3, progress=False)
    except Stop: pass
    net, _, _ = restoration_setup(seed=123)  # other starting weights: everything must come from the checkpoint
    seen = []  # images per step on this rank: the batch of 4, shared out
    def counting(o, t):
        seen.append(len(o))
        return loss_fn(o, t)
    info = R.train_network(net, counting, sampler, steps, lr=1e-3, checkpoint=ck, every=3, progress=False)
    report['resumed_steps_run'], report['processes'], report['history'] = info['steps_run'], info['processes'], info['history']
    report['local_batches'] = sorted(set(seen))
    ddp_net = net
    ddp_net.eval()
    with torch.no_grad():
        inp, target = sampler.batch(10_000)   # a held-out batch: a step the training never drew
        metrics = R.image_metrics(ddp_net(inp), target)

    if rank == 0:
        from safetensors.torch import save_file
        tensors = {f'grad{i}': g for i, g in enumerate(grads)}
        tensors.update({f'wrapped_grad{i}': g for i, g in enumerate(grads2)})
        tensors.update({f'restoration.{k}': v.contiguous() for k, v in net.state_dict().items()})
        save_file(tensors, str(out/'ddp.safetensors'))
        report['metrics'] = {k: None if v is None else float(v) for k, v in metrics.items()}
        (out/'report.json').write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main(Path(sys.argv[1]))
