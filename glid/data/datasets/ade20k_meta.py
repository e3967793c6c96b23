"""ADE20K SceneParsing (ADEChallengeData2016) class metadata and the instance-PNG convention.

Facts of the dataset release, shared by the registration (:mod:`.register_ade20k`) and the
prepare scripts (``datasets/prepare_ade20k_{pan,ins}_seg.py``):

* ``ADE20K_150_CLASSES``: the 150 classes of ``objectInfo150`` in order; the semantic PNGs of
  ``annotations/`` hold 1..150 (0 = "other", unlabeled), so class ``c`` of the PNG is contiguous
  id ``c - 1`` (``annotations_detectron2/``: ``c - 1``, 255 for 0).
* ``ADE20K_150_COLORS``: the usual ADE20K palette, one RGB per class.
* ``INSTANCE_CODE_TO_CLASS150``: the instance annotations (``annotations_instance/``, the
  SceneParsing instance release) encode each pixel as R = instance-category code 1..100
  (0 = no instance), G = instance id within the image (0 = no instance; one id, one code);
  code ``k`` is SceneParsing class ``INSTANCE_CODE_TO_CLASS150[k - 1]`` (1-based). These 100
  classes are ADE20K's "things" (the instance / panoptic benchmarks); the other 50 are "stuff".

Category ids in the files the prepare scripts write (the files Mask2Former's scripts write too)
are the 0-based class ids 0..149, in the panoptic JSON for all classes, in the instance JSON
for the 100 things.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ADE20K_SPLITS",
    "ADE20K_150_CLASSES",
    "ADE20K_150_COLORS",
    "ADE20K_THING_IDS",
    "INSTANCE_CODE_TO_CLASS150",
    "decode_instance_png",
    "mask_bbox_xywh",
]

# Split name -> the release's folder name (images/<folder>, annotations/<folder>, ...).
ADE20K_SPLITS = {"train": "training", "val": "validation"}

ADE20K_150_CLASSES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road, route",
    "bed",
    "window",
    "grass",
    "cabinet",
    "sidewalk, pavement",
    "person",
    "earth, ground",
    "door",
    "table",
    "mountain, mount",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting, picture",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock, stone",
    "wardrobe, closet, press",
    "lamp",
    "tub",
    "rail",
    "cushion",
    "base, pedestal, stand",
    "box",
    "column, pillar",
    "signboard, sign",
    "chest of drawers, chest, bureau, dresser",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator, icebox",
    "grandstand, covered stand",
    "path",
    "stairs",
    "runway",
    "case, display case, showcase, vitrine",
    "pool table, billiard table, snooker table",
    "pillow",
    "screen door, screen",
    "stairway, staircase",
    "river",
    "bridge, span",
    "bookcase",
    "blind, screen",
    "coffee table",
    "toilet, can, commode, crapper, pot, potty, stool, throne",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm, palm tree",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel, hut, hutch, shack, shanty",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning, sunshade, sunblind",
    "street lamp",
    "booth",
    "tv",
    "plane",
    "dirt track",
    "clothes",
    "pole",
    "land, ground, soil",
    "bannister, banister, balustrade, balusters, handrail",
    "escalator, moving staircase, moving stairway",
    "ottoman, pouf, pouffe, puff, hassock",
    "bottle",
    "buffet, counter, sideboard",
    "poster, posting, placard, notice, bill, card",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt, conveyor belt, conveyer, conveyor, transporter",
    "canopy",
    "washer, automatic washer, washing machine",
    "plaything, toy",
    "pool",
    "stool",
    "barrel, cask",
    "basket, handbasket",
    "falls",
    "tent",
    "bag",
    "minibike, motorbike",
    "cradle",
    "oven",
    "ball",
    "food, solid food",
    "step, stair",
    "tank, storage tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket, cover",
    "sculpture",
    "hood, exhaust hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "trash can",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass, drinking glass",
    "clock",
    "flag",
)

ADE20K_150_COLORS = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)  # fmt: skip

# Instance-category code k (R channel of annotations_instance/*.png) -> 1-based SceneParsing
# class; code k is entry k - 1.
INSTANCE_CODE_TO_CLASS150 = (
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23, 24, 25, 28, 31, 32, 33, 34, 36, 37, 38, 39, 40, 42, 43,
    44, 45, 46, 48, 50, 51, 54, 56, 57, 58, 59, 63, 65, 66, 67, 68, 70, 71, 72, 73, 74, 75, 76, 77,
    79, 81, 82, 83, 84, 86, 87, 88, 89, 90, 91, 93, 94, 96, 98, 99, 103, 104, 105, 108, 109, 111,
    112, 113, 116, 117, 119, 120, 121, 122, 124, 125, 126, 127, 128, 130, 131, 133, 134, 135, 136,
    137, 138, 139, 140, 143, 144, 145, 147, 148, 149, 150,
)  # fmt: skip

# 0-based class ids of the 100 thing classes, increasing.
ADE20K_THING_IDS = tuple(c - 1 for c in INSTANCE_CODE_TO_CLASS150)

assert len(ADE20K_150_CLASSES) == len(ADE20K_150_COLORS) == 150
assert len(set(ADE20K_THING_IDS)) == 100


def decode_instance_png(rgb: np.ndarray, path: str = "<instance PNG>") -> tuple[np.ndarray, ...]:
    """An ``annotations_instance`` PNG (H, W, 3) uint8 -> ``(class_ids, instance_ids)``, both
    (H, W) int64: the 0-based SceneParsing class of each instance pixel (-1 where there is no
    instance) and the G-channel instance id (0 = none).

    Raises ValueError naming ``path`` for a code outside 1..100 on an instance pixel, or an
    instance id whose pixels carry several codes.
    """
    if rgb.ndim != 3 or rgb.shape[2] < 2:
        raise ValueError(f"{path}: instance PNG must be RGB (R = code, G = id), got {rgb.shape}")
    codes, ids = rgb[..., 0].astype(np.int64), rgb[..., 1].astype(np.int64)
    on = ids > 0
    bad = np.unique(codes[on & ((codes < 1) | (codes > len(INSTANCE_CODE_TO_CLASS150)))])
    if len(bad):
        raise ValueError(
            f"{path}: instance-category codes {bad.tolist()} outside 1..100 on instance pixels"
        )
    pairs = np.unique(np.stack([ids[on], codes[on]]), axis=1)
    if len(np.unique(pairs[0])) != pairs.shape[1]:
        raise ValueError(f"{path}: an instance id (G) carries several category codes (R)")
    lut = np.array([-1] + [c - 1 for c in INSTANCE_CODE_TO_CLASS150], np.int64)
    return np.where(on, lut[np.where(on, codes, 0)], -1), np.where(on, ids, 0)


def mask_bbox_xywh(mask: np.ndarray) -> list[int]:
    """Tight COCO box ``[x, y, w, h]`` (pixels, ``w = x_max - x_min + 1``) of a non-empty
    (H, W) bool mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
