"""Task sources: benchmarks and datasets that draw ``TaskBatch`` es."""

from torchmaml.data.download import DownloadError, UnsafeArchiveError, download
from torchmaml.data.fewshot import FewShotTasks
from torchmaml.data.folder import ImageFolder, load_image_folder
from torchmaml.data.images import DatasetError
from torchmaml.data.omniglot import OMNIGLOT_MD5, OMNIGLOT_URL, Omniglot, load_omniglot
from torchmaml.data.sinusoid import SinusoidTasks

__all__ = [
    "OMNIGLOT_MD5",
    "OMNIGLOT_URL",
    "DatasetError",
    "DownloadError",
    "FewShotTasks",
    "ImageFolder",
    "Omniglot",
    "SinusoidTasks",
    "UnsafeArchiveError",
    "download",
    "load_image_folder",
    "load_omniglot",
]
