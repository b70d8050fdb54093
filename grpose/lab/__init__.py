"""The CPU lab: GRPose in miniature (docs/lab.md). Base-model and estimator pretraining live here, apart from GRPose."""
