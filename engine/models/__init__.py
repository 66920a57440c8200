"""The three Inception networks and their registry."""
from .registry import ModelConfig, create_model, get_config, list_models  # noqa: F401
from .layers import ConvBNReLU, BN_EPS  # noqa: F401
