"""Human pose: COCO-17 skeleton rendering, pose masks and the bottom-up pose estimators."""
