"""torch.hub entry points: one per loss that ships with mdf_loss.

    import torch
    loss = torch.hub.load('path/to/mdf_loss', 'mdf_official_sisr', source='local')

Keyword arguments go to `MDFLoss` (for example `reduction='none'` or `validate=False`). Everything is read from the
checkout's bundled `.safetensors` files; nothing is downloaded. The entries: mdf_official_sisr, mdf_official_jpeg,
mdf_official_denoise (the same weights as mdf_official_sisr), and the losses trained with this package, mdf_denoise,
mdf_jpeg and mdf_sisr.
"""
dependencies = ['torch', 'numpy', 'PIL', 'safetensors']

from mdf_loss.loss import MDFLoss as _MDFLoss
from mdf_loss.weights import available as _available


def _entry(name: str):
    def load_loss(**kwargs) -> _MDFLoss:
        return _MDFLoss.from_pretrained(name, **kwargs)
    load_loss.__name__ = load_loss.__qualname__ = 'mdf_' + name.replace('-', '_')
    load_loss.__doc__ = f"The bundled MDF loss {name!r} (`MDFLoss.from_pretrained({name!r}, **kwargs)`)."
    return load_loss


for _name in _available():
    globals()['mdf_' + _name.replace('-', '_')] = _entry(_name)
