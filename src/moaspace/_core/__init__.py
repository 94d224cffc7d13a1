"""Small helpers shared by the model, the tools and the baselines: cosine neighbour
search, kNN and prototype scores, label encodings. Plain arrays in and out; nothing here
imports another moaspace layer but ``errors``."""
