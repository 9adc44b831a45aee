"""What the report-writing benchmarks share: file fingerprints, the load average, the command line that ran, paths
written relative to the repository (never a machine's absolute path), and the JSON + Markdown pair they leave."""
from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

import torch

import mdf_loss
from mdf_loss.checkout import sha256  # noqa: F401 (the reports fingerprint their inputs with it)
from mdf_loss import __version__
from mdf_loss.runtime import machine  # noqa: F401 (the scripts call common.machine(): the one machine description)

REPO = Path(__file__).resolve().parent.parent


def load_average() -> list[float] | None:
    "The 1, 5 and 15 minute load averages, rounded (None where the platform has none)."
    try: return [round(v, 2) for v in os.getloadavg()]
    except OSError: return None


def command_line(argv=None) -> str:
    "The command that ran, as a reader would type it from the repository root."
    return 'python ' + ' '.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)])


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def display_path(path) -> str:
    "A path as a reader of the report can find it: relative to the repository, or to the package for its assets."
    p = Path(path).resolve()
    for root in (REPO, Path(mdf_loss.__file__).resolve().parent.parent):
        try: return p.relative_to(root).as_posix()
        except ValueError: pass
    return p.name


def portable(text: str, data=None) -> str:
    "A recorded command without this machine's folders: the data folder as $MDF_LOSS_DATA, repository paths relative."
    if data: text = text.replace(str(Path(data).resolve()), '$MDF_LOSS_DATA').replace(str(data), '$MDF_LOSS_DATA')
    return text.replace(str(REPO) + os.sep, '')


def versions() -> dict:
    return {'python': platform.python_version(), 'torch': torch.__version__, 'mdf_loss': __version__}


def write_pair(out, text: str, markdown: str) -> Path:
    "Write OUT.json (the printed JSON) and OUT.md beside it; return OUT without a suffix."
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.json').write_text(text + '\n')
    out.with_suffix('.md').write_text(markdown)
    return out


def quick_denoise_sampler(seed: int = 0):
    """The set-up the training-step benchmarks share: the quick preset's sizes, the denoising task and a patch sampler
    of its training images (CSun_Hays80). Exits with SKIPPED where the shared data folder is absent."""
    from mdf_loss.runtime import data_dir
    from mdf_loss.restoration.data import PatchSampler, list_images, load_training_images
    from mdf_loss.restoration.experiment import EXPERIMENT_PRESETS
    from mdf_loss.tasks import get_task
    root = data_dir()
    if root is None: sys.exit('SKIPPED: shared data not found; set MDF_LOSS_DATA')
    cfg, spec = EXPERIMENT_PRESETS['quick'], get_task('denoise')
    images = load_training_images(list_images(root/'benchmarks'/'CSun_Hays80', cfg['max_train_images']),
                                  cfg['train_scale'], cfg['patch'])
    return cfg, spec, PatchSampler(images, spec, cfg['patch'], cfg['batch'], seed)
