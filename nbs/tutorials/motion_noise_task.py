"""The `motion_noise` task of the tutorial "Train your own loss": horizontal camera shake plus sensor noise.

Importing this module registers the task, so that every tool of mdf_loss accepts `task='motion_noise'`: `train`, the
restoration experiments, the sensitivity functions and the widgets from Python, and on the command line
`mdf-loss --import motion_noise_task train --task motion_noise --length 5` (run where Python can import this file).
"""
import torch
import torch.nn.functional as F

from mdf_loss.distortions import Distortion, compose, gaussian_noise
from mdf_loss.tasks import Strength, TaskSpec, register_task

SENSOR_SIGMA = 10.0  # the sensor noise, on the 0-255 scale


def motion_blur(x: torch.Tensor, length: int = 5) -> torch.Tensor:
    "Horizontal box blur over `length` pixels (1 = no blur), border pixels repeated."
    if length <= 1: return x.clone()
    c = x.shape[1]
    kernel = torch.full((c, 1, 1, length), 1/length, dtype=x.dtype, device=x.device)
    left = (length - 1)//2
    return F.conv2d(F.pad(x, (left, length - 1 - left, 0, 0), mode='replicate'), kernel, groups=c)


def motion_noise(length: int = 5) -> Distortion:
    "The task's distortion: motion blur over `length` pixels, then Gaussian sensor noise of sigma 10."
    shake = Distortion('motion_blur', {'length': int(length)}, motion_blur)
    sensor = Distortion('gaussian_noise', {'sigma': SENSOR_SIGMA}, gaussian_noise)
    return compose(shake, sensor, name='motion_noise')


TASK = register_task(TaskSpec(
    'motion_noise', 'motion blur + noise', motion_noise,
    Strength('length', 5, 1, 31, 'px', integer=True),  # the one number that sets the strength, and its valid range
    phase1='residual',                                 # z_k = distortion(prev_k) - prev_k, as for JPEG
    ladder=(1, 3, 5, 9, 15),                           # strengths the sensitivity functions rank, weakest first
    widget_steps=(1, 2, 3, 4, 5, 7, 9, 11, 15, 21),    # the widgets' slider positions 1..10
    variants=(5,), variant_label='length {}',          # what the restoration experiments train and test on
    note='horizontal motion blur over LENGTH px plus sensor noise of sigma 10'), replace=True)
