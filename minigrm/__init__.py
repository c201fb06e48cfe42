"""minigrm: DeepSeek-GRM and SPCT (arXiv 2504.02495) in small, readable PyTorch."""
