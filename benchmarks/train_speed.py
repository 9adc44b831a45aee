"""Phase-1 (adversarial training) wall time, per scale and in total, and a profile of one iteration on CPU.

Run mode (default): `mdf_loss.adversarial.train` on the `quick` preset on CPU (the `paper` preset when CUDA is
available), in a temporary folder; the per-scale seconds are the ones the run records in its checkpoints.

Profile mode (--profile): for each scale of the preset's pyramid (fresh, untrained networks: the cost is the same),
the time of one iteration of `train_scale` (3 critic steps with gradient penalty + 3 generator steps), the share of it
spent drawing the upsampled previous output (`Pyramid.sample_prev`, once per critic step), and the same iteration
with 1 and 2 threads and with channels-last tensors. Nothing here changes the training; it measures.

Usage: python benchmarks/train_speed.py [--preset quick] [--out benchmarks/results/train_speed_cpu.json]
       python benchmarks/train_speed.py --profile [--iters 20]
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mdf_loss.adversarial import (TrainConfig, Pyramid, scale_sizes, train, train_scale, resolve_distortion,
                                  read_checkpoint, scale_generator)
from mdf_loss.runs import RunFolder
from mdf_loss.blocks import Discriminator, Generator, width_schedule, init_weights
from mdf_loss.core import bundled_image_path, load_image, resize

sys.path.insert(0, str(Path(__file__).parent))
from loss_speed import machine, report  # noqa: E402


def run(preset: str, device: str, iters: int | None) -> dict:
    "Train the preset once; per-scale seconds from the checkpoints, total wall time from here."
    cfg = TrainConfig.from_preset(preset, device=device, **({'iters': iters} if iters else {}))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(cfg, tmp, progress=False)
        total = time.perf_counter() - t0
        scales = []
        for k in RunFolder(tmp).finished_scales():
            _, _, info, _ = read_checkpoint(RunFolder(tmp).checkpoint(k))
            scales.append(dict(scale=k, size=info['size'], width=info['width'], iters=info['iters'], seconds=info['seconds'],
                               ms_per_iter=1000*info['seconds']/info['iters']))
    return dict(preset=preset, config=cfg.to_dict(), total_s=total, scales_s=sum(s['seconds'] for s in scales), scales=scales)


def _pyramid(cfg: TrainConfig, device, channels_last: bool) -> tuple[Pyramid, list, list]:
    "A pyramid of fresh generators for the preset's sizes (cost as trained ones), and its reals."
    image = load_image(bundled_image_path())
    sizes = scale_sizes(cfg, tuple(image.shape[-2:]))
    widths = width_schedule(len(sizes), cfg.nfc, cfg.max_width)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    reals = [(resize(image, s)*2 - 1).to(device).contiguous(memory_format=fmt) for s in sizes]
    pyr = Pyramid(reals, cfg.task, resolve_distortion(cfg), cfg.value_range)
    g = torch.Generator().manual_seed(0)
    for w in widths[:-1]:
        G = Generator(w); G.apply(lambda m: init_weights(m, g))
        pyr.add(G.to(device).to(memory_format=fmt), 0.1)
    pyr.z_opt = torch.randn(reals[0].shape, generator=g).to(device)
    return pyr, sizes, widths


def profile(preset: str, device: str, iters: int, threads_list, layouts) -> list[dict]:
    "Per scale: ms per iteration of train_scale, and ms of the 3 sample_prev calls inside it, per threads x layout."
    base = TrainConfig.from_preset(preset, device=device)
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for cl in layouts:
            pyr, sizes, widths = _pyramid(base, device, cl)
            for k in range(len(sizes)):
                cfg = TrainConfig.from_preset(preset, device=device, iters=iters + 2, log_every=iters + 2)
                fmt = torch.channels_last if cl else torch.contiguous_format
                gen = torch.Generator().manual_seed(k)
                G, D = Generator(widths[k]), Discriminator(widths[k])
                G.apply(lambda m: init_weights(m, gen)); D.apply(lambda m: init_weights(m, gen))
                G, D = G.to(device).to(memory_format=fmt), D.to(device).to(memory_format=fmt)
                stamps = []
                def hook(scale, it, terms): stamps.append(time.perf_counter())
                sub = Pyramid(pyr.reals, pyr.task, pyr.distortion, pyr.value_range)
                sub.generators, sub.noise_amps, sub.z_opt = pyr.generators[:k], pyr.noise_amps[:k], pyr.z_opt
                train_scale(k, sub, G, D, cfg, cfg.lr, scale_generator(0, k, 'train', device), 0.1, hook=hook)
                per_iter = statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))  # skips the first (warm-up)
                t = []
                for _ in range(iters):
                    t0 = time.perf_counter(); sub.sample_prev(k, gen); t.append(time.perf_counter() - t0)
                prev = 3*statistics.median(t)  # train_scale draws it once per critic step
                rows.append(dict(threads=threads, channels_last=cl, scale=k, size=list(sizes[k]), width=widths[k],
                                 ms_per_iter=1000*per_iter, sample_prev_ms_per_iter=1000*prev, sample_prev_share=prev/per_iter))
                print(f"threads {threads} cl {cl!s:5s} scale {k} {sizes[k]} w{widths[k]}: {1000*per_iter:7.1f} ms/iter, "
                      f"sample_prev {100*prev/per_iter:4.1f}%", file=sys.stderr, flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--preset', default=None, help="'quick' (default on CPU) or 'paper' (default on CUDA)")
    p.add_argument('--device', default=None)
    p.add_argument('--iters', type=int, default=None, help='run mode: override iterations per scale; profile mode: iterations timed (default 20)')
    p.add_argument('--profile', action='store_true')
    p.add_argument('--threads', default=None, help="run mode: torch threads; profile mode: comma list (default '1,2')")
    p.add_argument('--out')
    a = p.parse_args(argv)
    device = a.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    preset = a.preset or ('paper' if device.startswith('cuda') else 'quick')
    res = {'command': ' '.join([Path(sys.executable).name, *sys.argv]), 'date': datetime.datetime.now().isoformat(timespec='seconds'),
           'device': device, 'load_average_start': os.getloadavg()}
    if a.profile:
        threads = [int(t) for t in (a.threads or '1,2').split(',')]
        res['profile'] = profile(preset, device, a.iters or 20, threads, (False, True))
    else:
        if a.threads: torch.set_num_threads(int(a.threads))
        res['run'] = run(preset, device, a.iters)
    res['machine'] = machine()
    report(res, a.out)


if __name__ == '__main__':
    main()
