"""GLID's config keys. Every key GLID adds to detectron2's config lives here."""

from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_glid_config"]


def add_glid_config(cfg: CN) -> None:
    """Add GLID's keys (model, data, solver) to a detectron2 config, in place."""
    # ---- data ----
    # Photometric jitter (brightness/contrast/saturation/hue), Mask2Former's "color aug".
    cfg.INPUT.COLOR_AUG_SSD = False
    # Crop that keeps any single category below this fraction of the crop (1.0 = no limit).
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # The model pads every batch (after normalization, train and test alike) to a multiple of
    # this; Swin + 3 down-samplings need 32. The mappers do not pad.
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    # Dataset mapper (glid.data.DATASET_MAPPER_REGISTRY) for training and testing; "" = the
    # task's default (GLIDTask.dataset_mapper). The ignore label of label maps is the dataset's
    # metadata `ignore_label` (detectron2's convention), not a config key.
    cfg.INPUT.DATASET_MAPPER_NAME = ""
    # Deterministic share of every training set that is used (Tab. 4: 0.1, 0.2, 0.5, 1.0). The
    # subsets are nested (a smaller fraction's images are in every larger one) and fixed by
    # TRAIN_FRACTION_SEED, not by SEED, so runs with different seeds see the same images.
    cfg.DATASETS.TRAIN_FRACTION = 1.0
    cfg.DATASETS.TRAIN_FRACTION_SEED = 0
    # Training samples the mapper rejects (glid.data.image_io.BadSampleError: unreadable or
    # truncated image, label map of another size, label values outside [0, NUM_CLASSES) and
    # not the ignore label): False stops training with the error; True replaces the sample by
    # another, with a warning naming the file and the count in the metric
    # "data/bad_samples_skipped". Evaluation always stops.
    cfg.DATALOADER.SKIP_BAD_SAMPLES = False

    # ---- image-level tasks (mim, cls): ImageFolder data, RandomResizedCrop ----
    # Output side, area range and aspect-ratio range of the training RandomResizedCrop + flip;
    # at test time: resize the short side to SIZE / TEST_CROP_RATIO, centre crop SIZE.
    cfg.INPUT.RANDOM_RESIZED_CROP = CN()
    cfg.INPUT.RANDOM_RESIZED_CROP.SIZE = 224
    cfg.INPUT.RANDOM_RESIZED_CROP.SCALE = (0.08, 1.0)
    cfg.INPUT.RANDOM_RESIZED_CROP.RATIO = (3.0 / 4.0, 4.0 / 3.0)
    cfg.INPUT.RANDOM_RESIZED_CROP.TEST_CROP_RATIO = 0.875
    # timm RandAugment policy for classification fine-tuning ("" = off), e.g.
    # "rand-m9-mstd0.5-inc1" (MAE / DeiT).
    cfg.INPUT.RAND_AUGMENT = ""

    # ---- solver ----
    # "ADAMW" (every recipe of Tab. 5-9) or "SGD" (detectron2's MOMENTUM / NESTEROV).
    # "LARS" (ImageNet linear probing, MAE protocol; momentum SOLVER.MOMENTUM).
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # LARS trust coefficient: each weight's step is scaled by coef * ||w|| / ||update||.
    cfg.SOLVER.LARS_TRUST_COEFFICIENT = 0.001
    # Layer-wise lr decay (BEiT / MAE fine-tuning; Tab. 8: 0.8): encoder block i of L gets
    # lr x LAYER_DECAY^(L + 1 - i), the patch embedding LAYER_DECAY^(L + 1); everything after
    # the encoder gets the full lr. 1.0 = off (then BACKBONE_MULTIPLIER applies).
    cfg.SOLVER.LAYER_DECAY = 1.0
    # AdamW betas (Tab. 5 pre-training: (0.9, 0.95)).
    cfg.SOLVER.BETAS = (0.9, 0.999)
    # lr of the encoder = BASE_LR * BACKBONE_MULTIPLIER (Tab. 6-7: 1e-5 / 1e-4).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Weight decay of embeddings, position tables and tokens (relative-position tables, [M],
    # [CLS], mask token, level embeddings): none, like norms (SOLVER.WEIGHT_DECAY_NORM).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Power of "WarmupPolyLR" (lr x (1 - iter / MAX_ITER)^power), the schedule GLID adds to
    # detectron2's WarmupMultiStepLR and WarmupCosineLR (SOLVER.LR_SCHEDULER_NAME).
    cfg.SOLVER.POLY_LR_POWER = 0.9
    # Gradient clipping. CLIP_TYPE "full_model" (added here): one norm over all parameters,
    # clipped to CLIP_VALUE; detectron2's "value" / "norm" clip each parameter on its own.
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    # Mixed-precision training (detectron2's SOLVER.AMP.ENABLED): the autocast dtype,
    # "bfloat16" (CPU and GPU, no loss scaling) or "float16" (GPU only, with detectron2's
    # GradScaler, as Mask2Former on V100s). Locations, weights and losses stay float32.
    cfg.SOLVER.AMP.PRECISION = "bfloat16"
    # Mixed-precision inference (evaluation, GLIDPredictor, demo): the model runs under autocast
    # and its predictions are post-processed in float32. Off by default, so that reported
    # metrics are float32's; on a CPU with AVX512-BF16 "bfloat16" halves inference time.
    cfg.TEST.AMP = CN()
    cfg.TEST.AMP.ENABLED = False
    cfg.TEST.AMP.PRECISION = "bfloat16"

    # ---- encoder: Swin from timm ----
    cfg.MODEL.SWIN = CN()
    # Width of the first stage, blocks and attention heads per stage (Swin-B).
    cfg.MODEL.SWIN.EMBED_DIM = 128
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 18, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [4, 8, 16, 32]
    # Attention window (tokens per side). Token grids it does not tile are padded and the
    # padding masked (e.g. 512 px: 128 tokens -> 133 with 7; 8 tiles 512 at every stage). Kept
    # at 7: timings of 7 / 8 / 12 are tools/benchmark_window.py's (issue 14).
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    # Image size the window attention and relative-position tables are built for. A stage whose
    # grid here is smaller than the window gets a window of that grid, unshifted (timm's rule):
    # keep it 32 x WINDOW_SIZE (224 for 7, 256 for 8, 384 for 12) so stage 4 keeps the window.
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    # Pixels per patch side (stride of res2), MLP width / embedding width.
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    # Stochastic depth of the encoder (Tab. 6-9: 0.1 / 0.3).
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.1
    # Stages returned to the pixel decoder (strides 4, 8, 16, 32).
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Recompute Swin blocks in backward to save memory.
    cfg.MODEL.SWIN.USE_CHECKPOINT = False

    # ---- GLID ----
    cfg.MODEL.GLID = CN()
    # The task (glid.modeling.TASK_REGISTRY): one of mim, det, ins, sem, pan, pose, depth, cls.
    cfg.MODEL.GLID.TASK = "sem"
    # Number of classes C of the task's dataset (the one place the class count is set).
    cfg.MODEL.GLID.NUM_CLASSES = 150
    # Pixel decoder: "BiFPN" (default) or "MSDeformAttn".
    cfg.MODEL.GLID.PIXEL_DECODER = "BiFPN"
    # Width of the pixel decoder, queries and transformer decoder.
    cfg.MODEL.GLID.HIDDEN_DIM = 256
    # Size of the per-pixel embedding map and of the mask / keypoint / bin embeddings (E).
    cfg.MODEL.GLID.MASK_DIM = 256
    # Number of location queries N (100 seg, 300 det, 17 pose, 64 depth).
    cfg.MODEL.GLID.NUM_QUERIES = 100
    # Query positions on a fixed grid (buffer) or learnable (new parameters).
    cfg.MODEL.GLID.LEARNABLE_QUERY_POSITIONS = False

    cfg.MODEL.GLID.BIFPN = CN()
    # One entry per BiFPN repeat: "conv" (full 3x3) or "sep" (depthwise-separable 3x3).
    cfg.MODEL.GLID.BIFPN.CONV_TYPES = ["conv", "sep", "sep"]
    # eps of the fast normalized fusion sum_i relu(w_i) x_i / (eps + sum_j relu(w_j)).
    cfg.MODEL.GLID.BIFPN.FUSION_EPS = 1e-4
    # Norm after each conv (detectron2 get_norm name: "GN", "BN", "SyncBN", "" for none).
    cfg.MODEL.GLID.BIFPN.NORM = "GN"

    # Mask2Former-style deformable-attention pixel decoder (Tab. 2, second row).
    # Encoder layers, attention heads, sampling points per head and level, FFN width, dropout
    # and the norm of the input projections / FPN convs.
    cfg.MODEL.GLID.MSDEFORMATTN = CN()
    cfg.MODEL.GLID.MSDEFORMATTN.NUM_LAYERS = 6
    cfg.MODEL.GLID.MSDEFORMATTN.NUM_HEADS = 8
    cfg.MODEL.GLID.MSDEFORMATTN.NUM_POINTS = 4
    cfg.MODEL.GLID.MSDEFORMATTN.DIM_FEEDFORWARD = 1024
    cfg.MODEL.GLID.MSDEFORMATTN.DROPOUT = 0.0
    cfg.MODEL.GLID.MSDEFORMATTN.NORM = "GN"

    # Transformer decoder: layers L (three rounds over the three scales), attention heads,
    # FFN width, dropout.
    cfg.MODEL.GLID.DECODER = CN()
    cfg.MODEL.GLID.DECODER.NUM_LAYERS = 9
    cfg.MODEL.GLID.DECODER.NUM_HEADS = 8
    cfg.MODEL.GLID.DECODER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.GLID.DECODER.DROPOUT = 0.0
    # Stochastic depth in the decoder (Tab. 7: 0.2).
    cfg.MODEL.GLID.DECODER.DROP_PATH = 0.0
    # Mask2Former masked cross-attention, for the tasks that predict masks (mask
    # classification); other tasks ignore it.
    cfg.MODEL.GLID.DECODER.MASK_ATTENTION = True

    # What MODEL.WEIGHTS holds when it is not a checkpoint of this very model (fine-tuning):
    # "model": a GLID checkpoint (pre-training or another task): every parameter except the
    # task's linear head must load, the head must be new; "encoder": an encoder-only
    # checkpoint (converted Swin / SimMIM, encoder-only MIM): every `backbone.swin.*`
    # parameter must load, the rest starts from scratch. --resume and --eval-only always
    # require every parameter.
    cfg.MODEL.GLID.WEIGHTS_SCOPE = "model"

    # Losses on every decoder layer's predictions (auxiliary losses), for every task.
    cfg.MODEL.GLID.DEEP_SUPERVISION = True

    # ---- mask-classification family (sem / ins / pan): Mask2Former's matcher and criterion ----
    cfg.MODEL.GLID.MASK_LOSS = CN()
    # Loss weights, also the matching-cost weights (class, sigmoid CE, dice).
    cfg.MODEL.GLID.MASK_LOSS.CLASS_WEIGHT = 2.0
    cfg.MODEL.GLID.MASK_LOSS.MASK_WEIGHT = 5.0
    cfg.MODEL.GLID.MASK_LOSS.DICE_WEIGHT = 5.0
    # Cross-entropy weight of the no-object class.
    cfg.MODEL.GLID.MASK_LOSS.NO_OBJECT_WEIGHT = 0.1
    # Points per mask: random points for matching, importance-sampled points for the losses.
    cfg.MODEL.GLID.MASK_LOSS.TRAIN_NUM_POINTS = 112 * 112
    # PointRend importance sampling: candidates per point, share taken by uncertainty.
    cfg.MODEL.GLID.MASK_LOSS.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.GLID.MASK_LOSS.IMPORTANCE_SAMPLE_RATIO = 0.75

    # ---- detection (det): Deformable DETR's matcher, losses and DETR's augmentation ----
    cfg.MODEL.GLID.DETECTION = CN()
    # Loss weights, also the matching-cost weights (sigmoid focal class, L1 box, GIoU);
    # Deformable DETR / DINO: 2, 5, 2.
    cfg.MODEL.GLID.DETECTION.CLASS_WEIGHT = 2.0
    cfg.MODEL.GLID.DETECTION.BBOX_WEIGHT = 5.0
    cfg.MODEL.GLID.DETECTION.GIOU_WEIGHT = 2.0
    # Focal loss / focal matching cost: alpha and gamma.
    cfg.MODEL.GLID.DETECTION.FOCAL_ALPHA = 0.25
    cfg.MODEL.GLID.DETECTION.FOCAL_GAMMA = 2.0
    # Prior class probability pi at initialization (RetinaNet): the class logits get the constant
    # offset log(pi / (1 - pi)), so a freshly initialized head starts near p = pi, not 0.5.
    cfg.MODEL.GLID.DETECTION.CLASS_PRIOR_PROB = 0.01
    # (w, h) of every query's reference box, normalized by the image size; its centre is the
    # query's grid point. Boxes are refined from it: sigmoid(delta + inverse_sigmoid(reference)).
    cfg.MODEL.GLID.DETECTION.BOX_SIZE_PRIOR = (0.1, 0.1)
    # Detections per image at inference: top-k over all (query, class) sigmoid scores.
    cfg.MODEL.GLID.DETECTION.TEST_TOPK = 100
    # Training augmentation of the detection mapper: "DETR" (flip; multi-scale resize, or with
    # probability INPUT.CROP.PROB resize to INPUT.CROP.RESIZE_BEFORE, crop INPUT.CROP, resize;
    # INPUT.CROP.ENABLED False: resize only) or "LSJ" (flip, large-scale jitter INPUT.LSJ).
    cfg.INPUT.DETECTION_AUGMENTATION = "DETR"
    # DETR's crop branch: its probability and the shortest-edge sizes it resizes to first.
    cfg.INPUT.CROP.PROB = 0.5
    cfg.INPUT.CROP.RESIZE_BEFORE = (400, 500, 600)
    # Large-scale jitter: resize to a random scale in [MIN_SCALE, MAX_SCALE] of an IMAGE_SIZE
    # square, then crop at most IMAGE_SIZE x IMAGE_SIZE (the model pads, not the mapper).
    cfg.INPUT.LSJ = CN()
    cfg.INPUT.LSJ.IMAGE_SIZE = 1024
    cfg.INPUT.LSJ.MIN_SCALE = 0.1
    cfg.INPUT.LSJ.MAX_SCALE = 2.0

    # ---- masked image modeling (mim): pre-training ----
    cfg.MODEL.GLID.MIM = CN()
    # Side of a masking unit in pixels (its pixels are one query's answer: 3 x UNIT^2 values)
    # and the share of units masked per image (SimMIM's 0.6 at 32x32 units; the paper gives
    # no ratio).
    cfg.MODEL.GLID.MIM.UNIT_SIZE = 32
    cfg.MODEL.GLID.MIM.MASK_RATIO = 0.6
    # Regress each unit's pixels normalized by the unit's own mean and std (MAE's norm_pix).
    cfg.MODEL.GLID.MIM.NORM_PIX_LOSS = True
    # True: GLID (encoder + decoder, one query per masked unit). False: the encoder-only
    # SimMIM-style baseline of Tab. 4 (the linear head reads the stride-32 encoder features).
    cfg.MODEL.GLID.MIM.USE_DECODER = True
    # Xavier-uniform initialization of the Linear layers of the Transformer blocks (Tab. 5,
    # as in ViT / MAE), applied when the model is built for pre-training.
    cfg.MODEL.GLID.MIM.XAVIER_INIT = True
    # Reconstructions written as images by the evaluator (first images of the test set).
    cfg.MODEL.GLID.MIM.NUM_VISUALIZATIONS = 8

    # ---- image classification (cls): ImageNet, Tab. 1 ----
    cfg.MODEL.GLID.CLASSIFICATION = CN()
    # "encoder": pooled stride-32 encoder features (Tab. 1 setting 1); "cls_query": the
    # decoder's [CLS] output (setting 2).
    cfg.MODEL.GLID.CLASSIFICATION.FEATURES = "cls_query"
    # Linear probing (MAE protocol): everything but the head is frozen and a parameter-free
    # BatchNorm normalizes the head's input.
    cfg.MODEL.GLID.CLASSIFICATION.LINEAR_PROBE = False
    # Fine-tuning regularization (timm): mixup / cutmix alphas (0 = off), the probability of
    # applying either per batch, and label smoothing.
    cfg.MODEL.GLID.CLASSIFICATION.MIXUP = 0.0
    cfg.MODEL.GLID.CLASSIFICATION.CUTMIX = 0.0
    cfg.MODEL.GLID.CLASSIFICATION.MIX_PROB = 1.0
    cfg.MODEL.GLID.CLASSIFICATION.LABEL_SMOOTHING = 0.0

    # ---- instance / panoptic data ----
    # Training augmentation of the instance and panoptic mappers: "SCALE_JITTER" (ADE20K, Tab. 7:
    # shortest-edge resize to one of INPUT.MIN_SIZE_TRAIN, crop INPUT.CROP under
    # INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, colour jitter INPUT.COLOR_AUG_SSD, flip) or "LSJ"
    # (COCO: flip, large-scale jitter INPUT.LSJ, as the detection mapper's "LSJ").
    cfg.INPUT.SEGMENTATION_AUGMENTATION = "SCALE_JITTER"

    # ---- instance / panoptic inference ----
    cfg.MODEL.GLID.TEST = CN()
    # Instances per image (ins; pan with INSTANCE_ON): the k best (query, class) pairs by class
    # probability, no-object excluded (Mask2Former's test top-k).
    cfg.MODEL.GLID.TEST.INSTANCE_TOPK = 100
    # Panoptic merge (Mask2Former): queries whose most probable class is no-object or whose
    # probability is at most OBJECT_MASK_THRESHOLD are dropped; a query's segment is dropped when
    # the pixels it wins cover less than OVERLAP_THRESHOLD of its own mask (probability >= 0.5).
    cfg.MODEL.GLID.TEST.OBJECT_MASK_THRESHOLD = 0.8
    cfg.MODEL.GLID.TEST.OVERLAP_THRESHOLD = 0.8
    # Outputs of the panoptic task (Mask2Former's PANOPTIC_ON / SEMANTIC_ON / INSTANCE_ON):
    # `panoptic_seg`, `sem_seg` (per-class scores) and `instances` (thing classes only); the
    # evaluator of a panoptic dataset adds PQ, mIoU and mask / box AP for those that are on and
    # whose ground truth the dataset has.
    cfg.MODEL.GLID.TEST.PANOPTIC_ON = True
    cfg.MODEL.GLID.TEST.SEMANTIC_ON = False
    cfg.MODEL.GLID.TEST.INSTANCE_ON = False

    # ---- depth ----
    # Monocular depth (NYUv2, Tab. 9): adaptive bins over [MIN_DEPTH, MAX_DEPTH] metres (one bin
    # per query); training pixels outside (MIN_DEPTH, MAX_DEPTH) are invalid.
    cfg.MODEL.GLID.DEPTH = CN()
    cfg.MODEL.GLID.DEPTH.MIN_DEPTH = 1e-3
    cfg.MODEL.GLID.DEPTH.MAX_DEPTH = 10.0
    # SILog loss (BTS / AdaBins): SILOG_SCALE x sqrt(mean(g^2) - SILOG_LAMBDA x mean(g)^2).
    cfg.MODEL.GLID.DEPTH.SILOG_LAMBDA = 0.85
    cfg.MODEL.GLID.DEPTH.SILOG_SCALE = 10.0
    # Flip-averaged inference: the model also runs on the horizontally flipped image and the two
    # depth maps are averaged (BTS / BinsFormer's flip test).
    cfg.MODEL.GLID.DEPTH.FLIP_TEST = False

    # ---- depth data ----
    # Training augmentation of the depth mapper (Tab. 9, BTS / BinsFormer): random rotation by an
    # angle uniform in +-DEPTH_ROTATION_DEGREES (0 disables it; image bilinear, depth nearest).
    cfg.INPUT.DEPTH_ROTATION_DEGREES = 2.5
    # Probability of BTS's colour jitter (gamma 0.9-1.1, brightness 0.75-1.25, per-channel colour
    # 0.9-1.1) on a training image; 0 disables it. Crop: INPUT.CROP.ENABLED / SIZE (absolute).
    cfg.INPUT.DEPTH_COLOR_AUG_PROB = 0.5

    # ---- human pose (pose): top-down, COCO keypoints (Tab. 8; ViTPose / mmpose) ----
    cfg.MODEL.GLID.POSE = CN()
    # Keypoints per person (one query each: MODEL.GLID.NUM_QUERIES must match).
    cfg.MODEL.GLID.POSE.NUM_KEYPOINTS = 17
    # Std of the Gaussian heatmap targets in heatmap cells (stride 4; mmpose's 2 at 64x48).
    cfg.MODEL.GLID.POSE.HEATMAP_SIGMA = 2.0
    # Factor of the visibility-weighted heatmap MSE.
    cfg.MODEL.GLID.POSE.LOSS_WEIGHT = 1.0
    # Flip test: the heatmaps of the flipped crop, flipped back with left / right swapped, are
    # averaged with the crop's before decoding.
    cfg.MODEL.GLID.POSE.FLIP_TEST = True
    # Rescoring: person score = box score x mean of the keypoint scores above this threshold.
    cfg.MODEL.GLID.POSE.KEYPOINT_SCORE_THRESH = 0.2
    # OKS-NMS over the persons of an image before the keypoint evaluation (1.0 disables it).
    cfg.MODEL.GLID.POSE.OKS_NMS_THRESH = 0.9
    # Person boxes of the test set: "" = the ground-truth boxes; otherwise a detection-results
    # JSON (COCO results format: image_id, category_id, bbox xywh, score), of which the boxes
    # of PERSON_CATEGORY_ID with score >= DETECTION_SCORE_THRESH are used.
    cfg.MODEL.GLID.POSE.TEST_DETECTIONS = ""
    cfg.MODEL.GLID.POSE.DETECTION_SCORE_THRESH = 0.0
    cfg.MODEL.GLID.POSE.PERSON_CATEGORY_ID = 1

    # ---- pose data: person crops and their augmentation ----
    cfg.INPUT.POSE = CN()
    # (height, width) of a person crop; its box is padded by BOX_PADDING at this aspect ratio.
    cfg.INPUT.POSE.CROP_SIZE = (256, 192)
    cfg.INPUT.POSE.BOX_PADDING = 1.25
    # Training (mmpose / ViTPose): flip with left / right swap; half body (upper or lower body's
    # box, padded by HALF_BODY_PADDING) with HALF_BODY_PROB when more than
    # HALF_BODY_MIN_KEYPOINTS keypoints are labelled; box scale x clip(1 + SCALE_FACTOR x n,
    # 1 - SCALE_FACTOR, 1 + SCALE_FACTOR); rotation clip(ROTATION_FACTOR x n, +-2 x
    # ROTATION_FACTOR) degrees with ROTATION_PROB (n standard normal); colour jitter of
    # brightness / contrast / saturation by up to COLOR_JITTER (0 disables it).
    cfg.INPUT.POSE.FLIP_PROB = 0.5
    cfg.INPUT.POSE.HALF_BODY_PROB = 0.3
    cfg.INPUT.POSE.HALF_BODY_MIN_KEYPOINTS = 8
    cfg.INPUT.POSE.HALF_BODY_PADDING = 1.5
    cfg.INPUT.POSE.SCALE_FACTOR = 0.5
    cfg.INPUT.POSE.ROTATION_FACTOR = 40.0
    cfg.INPUT.POSE.ROTATION_PROB = 0.6
    cfg.INPUT.POSE.COLOR_JITTER = 0.2
