from .amp import GLIDAMPTrainer, build_train_loop
from .defaults import GLIDPredictor
from .lars import LARS
from .lr_scheduler import build_lr_scheduler
from .optimizer import build_optimizer, layer_decay_lr_factor
from .resume import ExactResumeHook, ResumableTrainLoader, build_train_loader, training_seed

__all__ = [
    "LARS",
    "ExactResumeHook",
    "GLIDAMPTrainer",
    "GLIDPredictor",
    "ResumableTrainLoader",
    "build_lr_scheduler",
    "build_optimizer",
    "build_train_loader",
    "build_train_loop",
    "layer_decay_lr_factor",
    "training_seed",
]
