"""GRPose: pose-guided human image generation with a Graph Pose Adapter on a frozen Stable Diffusion 1.5."""

__version__ = "0.1.0"
