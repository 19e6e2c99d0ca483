"""One ensemble member: a timm model, its weights, its training loop and its predictor."""
from .models import Member, create_member

__all__ = ["Member", "create_member"]
