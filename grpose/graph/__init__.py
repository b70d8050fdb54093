"""Dynamic kNN graphs over feature maps and ViG-style graph convolutions."""
