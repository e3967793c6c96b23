#!/usr/bin/env python
r"""Convert a public supervised Swin checkpoint into GLID encoder weights (detectron2 .pkl).

    python tools/convert-pretrained-swin-to-d2.py --config-file configs/ade20k_sem_glid.yaml \
        swin_base_patch4_window7_224_22k.pth swin_base_in22k.pkl
    python train_net.py --config-file configs/ade20k_sem_glid.yaml \
        MODEL.WEIGHTS swin_base_in22k.pkl MODEL.GLID.WEIGHTS_SCOPE encoder

Reads Microsoft's official files (``{"model": ...}`` with ``layers.i.downsample`` at the end of
stage i, e.g. ``swin_base_patch4_window12_384_22k.pth``) and files in timm's layout (timm / HF
``pytorch_model.bin``, ``.safetensors``, ``.pth``). The encoder is built from the config (add
``--opts MODEL.SWIN.WINDOW_SIZE 12`` etc. last), so the relative-position-bias tables are resized
to its windows (offsets both windows have keep their bias exactly; new ones take timm's values).
The classifier head, the final norm and stored buffers are dropped; the output has
``backbone.swin.*`` only (``output_norms`` and ``mask_token`` stay initialized).
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
        encoder_prefix=None,
        author="GLID tools/convert-pretrained-swin-to-d2.py",
    )


if __name__ == "__main__":
    main()
