"""Distillation into a smaller architecture: a student trained from the reference (student.py).
Distillation as a recovery after another technique is `+kd` (compress/recover.py)."""
