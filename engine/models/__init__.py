"""The three Inception networks and their registry.

Importing this package imports every model file, which registers its variants.
"""
from .registry import ModelConfig, create_model, get_config, list_models  # noqa: F401
from .layers import ConvBNReLU, BN_EPS  # noqa: F401
from . import inception_v4, inception_resnet_v1, inception_resnet_v2  # noqa: F401  (register)
