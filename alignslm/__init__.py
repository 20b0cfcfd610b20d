"""alignslm: Align-SLM preference optimisation for textless spoken language models."""

import logging

__version__ = "0.1.0"

logger = logging.getLogger("alignslm")
logger.addHandler(logging.NullHandler())
