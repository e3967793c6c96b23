"""Deterministic generator of GLID's built-in synthetic dataset, written in real-dataset formats.

Every task gets data in the on-disk format of the real dataset it stands in for, so the same
loaders serve both: COCO instances / panoptic / person keypoints, ADE20K-style semantic PNGs,
NYUv2-style depth PNGs (uint16, millimetres) and an ImageNet-style ``ImageFolder`` tree.

Layout under ``<root>/glid_synth/`` (``<root>`` defaults to ``$DETECTRON2_DATASETS`` or
``datasets``)::

    manifest.json                                  generation parameters (idempotency key)
    images/{split}/NNNNNN.jpg                      scenes: stuff regions + 1-5 shapes
    sem_seg/{split}/NNNNNN.png                     uint8 ids over SYNTH_SEM_SEG_CLASSES, 255=ignore
    annotations/instances_{split}.json             COCO instances (things only, polygons)
    annotations/panoptic_{split}.json              COCO panoptic segments_info
    panoptic_{split}/NNNNNN.png                    COCO panoptic RGB ids (id = R + 256 G + 256^2 B)
    annotations/person_keypoints_{split}.json      COCO person keypoints (stick figures)
    keypoint_images/{split}/NNNNNN.jpg
    depth/{split}.txt                              "rgb depth focal" lines, relative to depth/
    depth/{split}/NNNNNN_rgb.jpg, NNNNNN_depth.png uint16 depth in mm, 0 = invalid
    classification/{split}/<class>/NNNNNN.jpg      one dominant shape per image

Each image is drawn from its own generator seeded by ``(seed, stream, split, index)``, so the
output depends only on the arguments of :func:`generate_synthetic_dataset`.

Parts:

- :mod:`~glid.data.datasets.synthetic_meta` (not here): class names, ids, colours, keypoint
  names, splits and paths, shared with dataset registration.
- :mod:`.canvas`: colours, :class:`~.canvas.Canvas` (paint + noise) and stuff backgrounds.
- :mod:`.shapes`: shape outlines, sampling, masks, mask -> COCO polygons / boxes.
- :mod:`.scenes`: segmentation scenes (stuff + shapes), instance annotations, panoptic ids.
- :mod:`.keypoints`: stick-figure people and their COCO keypoint annotations.
- :mod:`.depth`: rooms with objects and their depth maps.
- :mod:`.classification`: one-shape images for the class folders.
- :mod:`.writer`: the on-disk formats, the manifest and :func:`generate_synthetic_dataset`.

Why here and not imported by ``import glid``: the writer needs OpenCV and panopticapi, which
training, evaluation and inference on existing data never do, so ``glid`` and ``glid.data``
import only :mod:`glid.data.datasets.synthetic_meta` (standard library) and never this package
(``tests/test_import_light.py`` checks it). It still lives inside the ``glid`` package, not under
the top-level ``datasets/`` directory, so that an installed ``glid`` can generate data without a
source checkout: ``datasets/prepare_synthetic.py`` (the command line), ``tools/quickstart.py``
and the tests all import it from here.
"""

from glid.data.synthetic.classification import compose_classification_image
from glid.data.synthetic.depth import compose_depth_scene
from glid.data.synthetic.keypoints import compose_keypoint_scene
from glid.data.synthetic.scenes import Scene, compose_scene
from glid.data.synthetic.writer import generate_synthetic_dataset, read_manifest

__all__ = [
    "Scene",
    "compose_classification_image",
    "compose_depth_scene",
    "compose_keypoint_scene",
    "compose_scene",
    "generate_synthetic_dataset",
    "read_manifest",
]
