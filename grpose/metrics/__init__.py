"""Pose-alignment metrics (AP/AR, CAP, PCE) and image-quality metrics (FID, KID, CLIP-score)."""
