"""Work that the tests run in other processes (jobs tests/test_interruptions.py kills with SIGKILL, the DDP worker's
set-up), and the small builders many tests share.

The kill tests start these functions through a multiprocessing 'forkserver': torch is imported once, in the server,
and every job is a fresh forked process (a real process, killed for real) that starts in milliseconds.
"""
from __future__ import annotations

import json

import torch


def tiny_discriminators(widths=(8, 8), seed: int = 0, num_layer: int = 5) -> list:
    "Small Discriminators with PyTorch's default init and random BatchNorm statistics (so the folding matters), from `seed`."
    from mdf_loss.blocks import Discriminator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ds = [Discriminator(w, num_layer=num_layer) for w in widths]
        for d in ds:
            for m in d.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    with torch.no_grad():
                        m.running_mean.normal_(0, 0.1); m.running_var.uniform_(0.5, 2.0)
                        m.weight.uniform_(0.5, 1.5); m.bias.normal_(0, 0.1)
    return [d.eval() for d in ds]


def tiny_loss(widths=(8, 8), seed: int = 0, **kwargs):
    "An MDFLoss over `tiny_discriminators`: milliseconds per call on small images."
    from mdf_loss import MDFLoss
    return MDFLoss(tiny_discriminators(widths, seed), **kwargs)


# --- weight files written in a loop, killed at random -------------------------------------------------------------

def write_forever(path: str, widths, done):
    "Write version 1, 2, ... of a weight file to `path`, each with meta counter=i and tail bias i; `done.value` = last written."
    torch.set_num_threads(1)
    from mdf_loss.weights import write_weights
    ds = tiny_discriminators(widths)
    i = done.value
    while True:
        i += 1
        with torch.no_grad(): ds[0].tail.bias.fill_(float(i))
        write_weights(ds, path, {'counter': i})
        done.value = i


def full_disk_write(path: str, limit: int, result):
    "Write a weight file with the file-size limit set to `limit` bytes (RLIMIT_FSIZE): a disk that fills up, without root."
    import resource, signal
    torch.set_num_threads(1)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # the write then fails with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from mdf_loss.weights import write_weights
    try:
        write_weights(tiny_discriminators((64, 64)), path, {'counter': 2})
        result.send('no error')
    except BaseException as e:
        result.send(f'{type(e).__name__}: {e}')


# --- phase 1 (mdf_loss.adversarial) ---------------------------------------------------------------------------------

def phase1_run(out: str, cfg: dict, scales_done):
    "Run (or resume) phase 1 of `cfg` in `out`; `scales_done.value` counts the checkpoints this process finished writing."
    torch.set_num_threads(1)
    from mdf_loss import adversarial as A
    write = A.write_checkpoint
    def spy(*args, **kwargs):
        p = write(*args, **kwargs); scales_done.value += 1; return p
    A.write_checkpoint = spy   # observe only: the module's train() looks the name up at call time
    A.train(A.TrainConfig.from_dict(cfg), out, resume=True, progress=False)


# --- the restoration trainer (mdf_loss.restoration.trainer) -------------------------------------------------------------

def restoration_setup(batch: int = 4, seed: int = 0):
    "A smoke-size DnCNN, the official denoise MDF loss on 2 scales, and a patch sampler over the bundled photo."
    from mdf_loss import MDFLoss
    from mdf_loss.core import bundled_image_path
    from mdf_loss.restoration.data import PatchSampler, load_training_images
    from mdf_loss.restoration.networks import make_network
    torch.manual_seed(seed)
    model = make_network('dncnn', 'smoke')
    images = load_training_images([bundled_image_path()], scale=0.125)
    sampler = PatchSampler(images, 'denoise', patch=24, batch=batch, seed=seed)
    return model, MDFLoss.from_pretrained('official-denoise', num_scales=2), sampler


def restoration_run(checkpoint: str, steps: int, every: int, done, result: str | None = None):
    "Train (or resume) the restoration setup; `done.value` is the last checkpointed step; `result` gets the final weights."
    torch.set_num_threads(1)
    from mdf_loss.restoration import trainer as R
    save = R._save_checkpoint
    def spy(path, model, opt, step, *rest):
        save(path, model, opt, step, *rest); done.value = step
    R._save_checkpoint = spy   # observe only: train() looks the name up at call time
    model, loss_fn, sampler = restoration_setup()
    out = R.train_network(model, loss_fn, sampler, steps, lr=1e-3, checkpoint=checkpoint, every=every, resume=True, progress=False)
    if result is not None:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, result,
                  metadata={'history': json.dumps(out['history'])})
