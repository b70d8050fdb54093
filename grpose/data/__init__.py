"""Datasets (Human-Art, LAION-Human, synthetic) and the LightningDataModule."""
