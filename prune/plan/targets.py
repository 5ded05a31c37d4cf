"""The target grammar lives in `prune.targets` (light to import: recipes check it without torch)."""

from prune.targets import FORMS, check_target_form, parse_target

__all__ = ["FORMS", "check_target_form", "parse_target"]
