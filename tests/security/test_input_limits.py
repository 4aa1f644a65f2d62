"""The one size limit on the image loading path is Pillow's decompression-bomb check (``docs/security.md``).

``medxai.data.io`` sets none of its own; Pillow raises ``DecompressionBombError`` for a raster image of more
than ``2 * PIL.Image.MAX_IMAGE_PIXELS`` pixels, read from the header before decoding. The limit is lowered here
so that a 20 x 30 PNG (600 pixels) trips it.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medxai.data.io import LoadMedicalImage
from medxai.errors import InputError


def test_pillow_refuses_an_image_above_twice_max_image_pixels_as_an_input_error(tmp_path, monkeypatch):
    path = tmp_path / "large.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(path)
    assert LoadMedicalImage()(str(path)).shape == (1, 30, 20)  # under the default limit it loads
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 299)  # 600 > 2 * 299
    with pytest.raises(InputError, match=r"large\.png.*DecompressionBombError") as error:
        LoadMedicalImage()(str(path))
    assert "600 pixels" in str(error.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 600 = 2 * 300: a warning only, the image loads
    with pytest.warns(Image.DecompressionBombWarning):
        assert LoadMedicalImage()(str(path)).shape == (1, 30, 20)
