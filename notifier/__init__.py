"""smarterbot-notifier: watch SmarterBot chatbots for new leads and appointments and notify."""

from ._version import __version__
from .config import Config, load_config, parse_config
from .exceptions import (
    ApiError,
    ConfigError,
    DeliveryError,
    NotifierError,
    PermanentError,
    RetryableError,
    StateError,
)
from .types import Delivery, Lead, LeadKey, Sink

__all__ = [
    "ApiError",
    "Config",
    "ConfigError",
    "Delivery",
    "DeliveryError",
    "Lead",
    "LeadKey",
    "NotifierError",
    "PermanentError",
    "RetryableError",
    "Sink",
    "StateError",
    "__version__",
    "load_config",
    "parse_config",
]
