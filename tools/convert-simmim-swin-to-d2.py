#!/usr/bin/env python
r"""Convert a SimMIM Swin checkpoint into GLID encoder weights (detectron2 .pkl).

    python tools/convert-simmim-swin-to-d2.py --allow-pickle --config-file \
        configs/ade20k_sem_glid.yaml simmim_pretrain__swin_base__img192_window6__800ep.pth \
        simmim_swin_base.pkl

Reads SimMIM's pre-training files (``{"model": {"encoder.*", "decoder.0.*"}}``): the encoder's
weights become ``backbone.swin.*``, its mask token (1, 1, C) becomes ``backbone.mask_token``
(1, 1, 1, C), the light pixel decoder and the final norm are dropped. SimMIM's fine-tuned files
(no ``encoder.`` prefix, with a classifier head) are read too. Relative-position-bias tables are
resized to the windows of the encoder built from the config (e.g. window 6 -> 7; offsets both
windows have keep their bias exactly). SimMIM's
training files store their yacs config, hence ``--allow-pickle`` (trusted files only). Load the
output with ``MODEL.WEIGHTS OUT.pkl MODEL.GLID.WEIGHTS_SCOPE encoder`` (Tab. 4's SimMIM baseline).
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tools.swin_checkpoint_conversion import ConversionResult, run_converter  # noqa: E402


def main(argv: list[str] | None = None) -> ConversionResult:
    """Run the converter on ``argv`` (``sys.argv[1:]`` when ``None``); returns what it wrote."""
    return run_converter(
        argv,
        description=__doc__,
        encoder_prefix="encoder.",
        author="GLID tools/convert-simmim-swin-to-d2.py",
    )


if __name__ == "__main__":
    main()
