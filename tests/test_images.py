"""Images in every form a user may have: broken files refused with the file's name, conversions announced, EXIF
orientation applied, Pillow's decompression-bomb guard kept."""
import io, random, struct, warnings, zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as st_save_bytes

from mdf_loss.core import load_image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)


def _png(w: int, h: int, depth: int, colour: int, rows: bytes) -> bytes:
    "A PNG written by hand (Pillow cannot write 16-bit colour, zero sizes or lying headers)."
    return (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, depth, colour, 0, 0, 0))
            + _png_chunk(b'IDAT', zlib.compress(rows)) + _png_chunk(b'IEND', b''))


def _photo(h=20, w=30) -> Image.Image:
    "An RGB image with structure in both directions, so a rotation or flip shows."
    yy, xx = np.mgrid[:h, :w]
    return Image.fromarray(np.stack([xx*255//w, yy*255//h, (xx*yy) % 256], -1).astype(np.uint8))


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO(); img.save(buf, format=fmt, **kw); return buf.getvalue()


BROKEN_IMAGES = {   # name: (file bytes, words in the error)
    'corrupt PNG (signature only)': (lambda: b'\x89PNG\r\n\x1a\n' + b'\0'*40, 'could not be decoded'),
    'truncated PNG': (lambda: _bytes(_photo(64, 64), 'PNG')[:300], 'could not be decoded'),
    'PNG with a bad CRC': (lambda: (lambda b: b[:29] + b'\0\0\0\0' + b[33:])(_bytes(_photo(), 'PNG')), 'could not be decoded'),
    'corrupt JPEG (markers only)': (lambda: b'\xff\xd8\xff\xe0' + b'\0'*60, 'could not be decoded'),
    'truncated JPEG': (lambda: (lambda b: b[:len(b)//2])(_bytes(_photo(64, 64), 'JPEG')), 'truncated'),
    'JPEG without its frame header': (lambda: (lambda b: b[:b.index(b'\xff\xc0')] + b[b.index(b'\xff\xc0') + 19:])(_bytes(_photo(), 'JPEG')),
                                      'could not be decoded'),
    'zero-size file': (lambda: b'', 'is empty (0 bytes)'),
    'PNG of width 0': (lambda: _png(0, 4, 8, 2, b''), 'could not be decoded'),
    'PNG of height 0': (lambda: _png(4, 0, 8, 2, b''), 'could not be decoded'),
    'a text file': (lambda: b'hello, not an image\n', 'could not be decoded'),
    'a weight file': (lambda: st_save_bytes({'a': torch.zeros(3)}), 'could not be decoded'),
    # 10**10 pixels in 100 bytes: Pillow's limit (kept as it is) stops it before any decoding
    'decompression bomb': (lambda: _png(100_000, 100_000, 8, 2, b'\0'*10), 'too large to decode safely'),
}


@pytest.mark.parametrize('case', list(BROKEN_IMAGES))
def test_broken_images(case, tmp_path):
    make, words = BROKEN_IMAGES[case]
    p = tmp_path / 'broken.png'; p.write_bytes(make())
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError) as e: load_image(p)
    assert str(p) in str(e.value) and words in str(e.value), str(e.value)
    assert Image.MAX_IMAGE_PIXELS == limit and limit is not None, "Pillow's decompression-bomb limit must be kept"
    if case == 'decompression bomb': assert 'PIL.Image.MAX_IMAGE_PIXELS' in str(e.value)   # and how to lift it, if trusted


def test_bomb_limit_is_pillows_own(tmp_path):
    "Over twice Image.MAX_IMAGE_PIXELS is refused with our message; a user who raises the limit gets the image."
    p = tmp_path / 'big.png'; _photo(60, 60).save(p)
    with mock.patch.object(Image, 'MAX_IMAGE_PIXELS', 1000):
        with pytest.raises(ValueError, match='too large to decode safely'): load_image(p)
    assert load_image(p).shape == (1, 3, 60, 60)
    with pytest.raises(IsADirectoryError): load_image(tmp_path)
    with pytest.raises(FileNotFoundError): load_image(tmp_path / 'missing.png')


def _rgb16() -> tuple[bytes, np.ndarray]:
    arr = (np.arange(4*5*3).reshape(4, 5, 3)*1111 % 65536).astype('>u2')
    return _png(5, 4, 16, 2, b''.join(b'\0' + arr[i].tobytes() for i in range(4))), arr


CONVERTED = {   # name: (file bytes, words in the warning, expected 1 x 3 x H x W tensor or None)
    '8-bit grayscale': (lambda: _bytes(Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)*5, 'L'), 'PNG'), 'grayscale image converted',
                        lambda: torch.from_numpy(np.arange(48).reshape(6, 8)*5/255.).float().expand(1, 3, 6, 8)),
    '16-bit grayscale': (lambda: _bytes(Image.fromarray((np.arange(48).reshape(6, 8)*1300).astype(np.uint16)), 'PNG'), '16-bit grayscale',
                         lambda: torch.from_numpy(np.round(np.arange(48).reshape(6, 8)*1300/65535*255)/255).float().expand(1, 3, 6, 8)),
    '16-bit RGB': (lambda: _rgb16()[0], '16-bit-per-channel RGB image reduced to 8 bits',
                   lambda: torch.from_numpy((_rgb16()[1].astype(np.int64) >> 8)/255.).float().permute(2, 0, 1)[None]),
    'palette': (lambda: _bytes(_photo().convert('P'), 'PNG'), 'palette image converted', None),
    'palette with transparency': (lambda: _bytes(_photo().convert('P'), 'PNG', transparency=0), 'composited onto white', None),
    'RGBA': (lambda: _bytes(Image.new('RGBA', (4, 3), (255, 0, 0, 0)), 'PNG'), 'RGBA image with transparency composited onto white',
             lambda: torch.ones(1, 3, 3, 4)),
    'half-transparent RGBA': (lambda: _bytes(Image.new('RGBA', (4, 3), (0, 0, 0, 128)), 'PNG'), 'composited onto white',
                              lambda: torch.full((1, 3, 3, 4), 127/255)),
    'grayscale with alpha': (lambda: _bytes(Image.new('LA', (4, 3), (0, 255)), 'PNG'), 'LA image with transparency', lambda: torch.zeros(1, 3, 3, 4)),
    '1-bit': (lambda: _bytes(Image.new('1', (4, 3), 1), 'PNG'), '1-bit image converted', lambda: torch.ones(1, 3, 3, 4)),
    'CMYK JPEG': (lambda: _bytes(Image.new('CMYK', (8, 8), (0, 255, 0, 0)), 'JPEG', quality=100), 'CMYK image converted', None),
    'float TIFF in [0,1]': (lambda: _bytes(Image.fromarray(np.full((4, 4), 0.5, np.float32), 'F'), 'TIFF'), 'floating-point grayscale',
                            lambda: torch.full((1, 3, 4, 4), 128/255)),
}


@pytest.mark.parametrize('case', list(CONVERTED))
def test_converted_images_warn(case, tmp_path):
    make, words, expected = CONVERTED[case]
    p = tmp_path / 'image'; p.write_bytes(make())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); x = load_image(p)
    messages = [str(m.message) for m in w]
    assert any(words in m and str(p) in m for m in messages), messages
    assert x.dtype == torch.float32 and x.ndim == 4 and x.shape[1] == 3 and 0 <= x.min() and x.max() <= 1
    if expected is not None: torch.testing.assert_close(x, expected(), atol=1e-6, rtol=0)
    if case == 'CMYK JPEG': assert x[0, :, 4, 4].tolist() == pytest.approx([1, 0, 1], abs=0.02)   # magenta


def test_rgb_8bit_loads_silently(tmp_path):
    p = tmp_path / 'a.png'; _photo().save(p)
    with warnings.catch_warnings():
        warnings.simplefilter('error'); x = load_image(p)
    assert torch.equal(x, torch.from_numpy(np.asarray(_photo())/np.float32(255)).permute(2, 0, 1)[None])


@pytest.mark.parametrize('orientation,turns', [(1, 0), (3, 2), (6, -1), (8, 1)])
@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
def test_exif_orientation_is_applied(orientation, turns, fmt, tmp_path):
    "A camera's orientation tag turns the loaded tensor as a photo viewer does: 6 = 90 degrees clockwise, 8 = counter-clockwise."
    img = _photo(20, 30)
    exif = Image.Exif(); exif[0x0112] = orientation   # ExifTags.Base.Orientation
    plain, tagged = tmp_path / f'plain.{fmt}', tmp_path / f'tagged.{fmt}'
    img.save(plain, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
    img.save(tagged, format=fmt, exif=exif, **({'quality': 95} if fmt == 'JPEG' else {}))
    with Image.open(tagged) as check: assert check.getexif()[0x0112] == orientation
    want = torch.rot90(load_image(plain), turns, (2, 3))   # same pixels stored; rot90 k=1 is counter-clockwise
    got = load_image(tagged)
    assert got.shape == want.shape == ((1, 3, 30, 20) if turns % 2 else (1, 3, 20, 30))
    assert torch.equal(got, want)
    with open(tagged, 'rb') as f: assert torch.equal(load_image(f), want)   # a file object too


def test_mirrored_exif_orientations(tmp_path):
    img = _photo(20, 30); plain = load_image(io.BytesIO(_bytes(img, 'PNG')))
    for orientation, fn in [(2, lambda x: x.flip(3)), (4, lambda x: x.flip(2)), (5, lambda x: torch.rot90(x, 1, (2, 3)).flip(2)),
                            (7, lambda x: torch.rot90(x, -1, (2, 3)).flip(2))]:
        exif = Image.Exif(); exif[0x0112] = orientation
        assert torch.equal(load_image(io.BytesIO(_bytes(img, 'PNG', exif=exif))), fn(plain)), orientation


def test_corrupt_exif_keeps_the_picture():
    """A broken EXIF block costs only the orientation, with a warning, not the picture. Found by fuzzing: Pillow's
    exif_transpose raised struct.error on some corrupt tags, which escaped load_image as a crash."""
    from PIL import ImageOps
    img = _photo(16, 24)
    exif = Image.Exif(); exif[0x0112] = 6; exif[0x010f] = 'Camera'
    good = _bytes(img, 'JPEG', exif=exif, quality=95)
    start, rng = good.index(b'Exif\0\0'), random.Random(0)
    found = None
    for _ in range(20_000):   # a deterministic search for a file whose EXIF makes Pillow itself raise
        b = bytearray(good)
        for _ in range(rng.randint(1, 3)): b[rng.randrange(start, start + 120)] = rng.randrange(256)
        with warnings.catch_warnings():   # expected: Pillow warns about the corrupt tags it skips while opening
            warnings.simplefilter('ignore')
            try:
                with Image.open(io.BytesIO(bytes(b))) as im: im.load(); ImageOps.exif_transpose(im)
            except (OSError, SyntaxError, ValueError): continue   # refused as corrupt: load_image says so
            except Exception: found = bytes(b); break
    if found is None: pytest.skip('no EXIF corruption that breaks this Pillow version was found')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); x = load_image(io.BytesIO(found))
    assert x.shape == (1, 3, 16, 24) and any('EXIF data is corrupt' in str(m.message) for m in w), [str(m.message) for m in w]
