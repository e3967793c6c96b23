"""Evaluation of panoptic datasets: PQ, and the mIoU and thing mask / box AP of the same run.

detectron2's evaluators, adapted to a panoptic dataset's metadata (its "standard" form, one
contiguous id space over things and stuff, as in ``coco_2017_val_panoptic`` and Mask2Former's
ADE20K panoptic):

* :class:`PanopticEvaluator`: ``COCOPanopticEvaluator`` (panopticapi) whose PQ covers the images
  it was given, as ``COCOEvaluator``'s AP does (panopticapi itself refuses a ground-truth image
  without prediction), so a subset of the dataset can be evaluated.
* :class:`ThingInstanceEvaluator`: ``COCOEvaluator`` of the thing instances against the dataset's
  instance annotations (metadata ``json_file``), whatever the things' contiguous ids are (they
  need not be 0..T-1, e.g. ADE20K's); predictions of stuff classes are dropped.
* :class:`PanopticSemSegEvaluator`: ``SemSegEvaluator`` whose class-id mapping covers things and
  stuff (a panoptic dataset's ``stuff_dataset_id_to_contiguous_id`` may list only stuff).
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

__all__ = ["PanopticEvaluator", "PanopticSemSegEvaluator", "ThingInstanceEvaluator"]


def _with(metadata, **changes) -> Metadata:
    """A copy of ``metadata`` with ``changes`` (the catalog's entry is left as it is)."""
    return Metadata(**{**metadata.as_dict(), **changes})


class PanopticEvaluator(COCOPanopticEvaluator):
    """PQ / SQ / RQ (all, things, stuff) over the images that were processed."""

    def evaluate(self):
        ids = comm.all_gather([p["image_id"] for p in self._predictions])
        image_ids = {i for rank in ids for i in rank}
        if not comm.is_main_process():
            return super().evaluate()
        with open(PathManager.get_local_path(self._metadata.panoptic_json)) as f:
            gt = json.load(f)
        if all(a["image_id"] in image_ids for a in gt["annotations"]):
            return super().evaluate()
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in image_ids]
        gt["images"] = [im for im in gt["images"] if im["id"] in image_ids]
        metadata = self._metadata
        with tempfile.TemporaryDirectory(prefix="panoptic_gt") as tmp:
            subset_json = os.path.join(tmp, "panoptic_subset.json")
            with open(subset_json, "w") as f:
                json.dump(gt, f)
            self._metadata = _with(metadata, panoptic_json=subset_json)
            try:
                return super().evaluate()
            finally:
                self._metadata = metadata


class ThingInstanceEvaluator(COCOEvaluator):
    """Mask / box AP of the ``instances`` output on a panoptic dataset's thing classes.

    Args:
        dataset_name: a panoptic dataset whose metadata has ``json_file`` (COCO instance
            annotations of its things, categories = the keys of
            ``thing_dataset_id_to_contiguous_id``).
        output_dir: where detectron2's COCOEvaluator writes its files.
    """

    def __init__(self, dataset_name: str, output_dir: str | None = None):
        metadata = MetadataCatalog.get(dataset_name)
        if not metadata.get("json_file", None):
            raise KeyError(f"dataset {dataset_name!r} has no instance annotations (json_file)")
        super().__init__(dataset_name, output_dir=output_dir)
        mapping = metadata.thing_dataset_id_to_contiguous_id
        things = sorted(mapping.values())
        names = list(metadata.get("thing_classes", None) or metadata.stuff_classes)
        # Names indexed by contiguous id ("standard" metadata) or listing only the things.
        thing_names = names if len(names) == len(things) else [names[c] for c in things]
        self._rank = {c: r for r, c in enumerate(things)}  # contiguous id -> 0..T-1
        self._metadata = _with(
            metadata,
            thing_classes=thing_names,
            thing_dataset_id_to_contiguous_id={d: self._rank[c] for d, c in mapping.items()},
        )

    def process(self, inputs, outputs):
        converted = []
        for output in outputs:
            output = dict(output)
            if "instances" in output:
                instances = output["instances"].to("cpu")
                classes = instances.pred_classes.tolist()
                instances = instances[
                    torch.tensor([c in self._rank for c in classes], dtype=torch.bool)
                ]
                instances.pred_classes = torch.tensor(
                    [self._rank[int(c)] for c in instances.pred_classes], dtype=torch.int64
                )
                output["instances"] = instances
            converted.append(output)
        super().process(inputs, converted)


class PanopticSemSegEvaluator(SemSegEvaluator):
    """mIoU of the ``sem_seg`` output on a panoptic dataset with semantic ground truth
    (``sem_seg_file_name``; ``stuff_classes`` names every class)."""

    def __init__(self, dataset_name: str, output_dir: str | None = None):
        super().__init__(dataset_name, distributed=True, output_dir=output_dir)
        metadata = MetadataCatalog.get(dataset_name)
        contiguous_to_dataset = {
            v: k
            for mapping in (
                "thing_dataset_id_to_contiguous_id",
                "stuff_dataset_id_to_contiguous_id",
            )
            for k, v in metadata.get(mapping, {}).items()
        }
        self._contiguous_id_to_dataset_id = contiguous_to_dataset or None
