from . import dataset_mappers  # noqa: F401
