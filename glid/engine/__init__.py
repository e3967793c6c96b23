from .lr_scheduler import build_lr_scheduler
from .optimizer import build_optimizer
from .resume import ExactResumeHook, ResumableTrainLoader, build_train_loader, training_seed

__all__ = [
    "ExactResumeHook",
    "ResumableTrainLoader",
    "build_lr_scheduler",
    "build_optimizer",
    "build_train_loader",
    "training_seed",
]
