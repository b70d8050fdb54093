"""Evaluation of a GRPose/ControlNet checkpoint, the package behind ``eval_pose.py`` and scripts/eval_quality.py
(README "Evaluation"): ``settings`` (the resolved run), ``preflight`` (checks before any work), ``model_loading``,
``launch`` (processes with Lightning Fabric), ``generate`` (one process's shard), ``panels``, ``scoring`` (pose
metrics, metrics.json/csv), ``quality`` (FID/KID/CLIP-score of the panels), ``run`` (the whole evaluation)."""
