"""Trainable adapters that steer the frozen UNet: the Graph Pose Adapter and the ControlNet baseline."""
